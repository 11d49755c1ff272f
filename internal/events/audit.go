package events

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/consul-conn-exporter/consul-conn-exporter/internal/say"
)

// AuditEvery takes a census every interval until ctx is done: a drift
// found is logged once, when it starts or changes, and is corrected by the
// census itself; connections a full map could not count, clients it could
// not follow, and counts a census could not move are said too.
func (c *Counter) AuditEvery(ctx context.Context, interval time.Duration, logger *slog.Logger) {
	var drift, full, unfollowed say.Tracker
	var before lossCounts
	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
		found, err := c.Census()
		problem := ""
		switch {
		case err != nil:
			problem = "the audit failed: " + err.Error()
		case found.Unmoved > 0 || found.Uncountable > 0:
			// The same words however the censuses alternate between
			// moving the counts and not: one line while the map is full.
			problem = fmt.Sprintf("the kernel's connections map is full (--events.keys): %d open connections are not counted, and an audit cannot always move the counted ones into its new generation (they stay counted); corrected once there is room", found.Uncountable)
		case found.Drift() > 0:
			problem = fmt.Sprintf("the events' counts lacked %d open connections and held %d closed ones; corrected", found.Uncounted, found.Stale)
		}
		drift.Log(logger, slog.LevelWarn, problem, "the kernel's events drifted from the socket table", "the kernel's events agree with the socket table again")
		now, err := c.losses()
		if err != nil {
			continue // said by the census's failure, which reads the same
		}
		problem = ""
		if now.lost > before.lost {
			problem = fmt.Sprintf("%d connections since the last audit: the kernel's connections map is full (--events.keys); the counts lack them", now.lost-before.lost)
		}
		if now.misplaced > before.misplaced {
			if problem != "" {
				problem += "; "
			}
			problem += fmt.Sprintf("%d connections since the last audit could not be moved to the state they entered (the map full, or their count changed by other CPUs past the retries): counted still, in the state they left, until the next audit", now.misplaced-before.misplaced)
		}
		full.Log(logger, slog.LevelError, problem, "connections could not be counted", "every connection is counted again")
		problem = ""
		if now.unfollowed > before.unfollowed {
			problem = fmt.Sprintf("%d connections since the last audit: the kernel's clients map is full (--events.keys); their clients' churn, peaks, time at the limit and uses lack them (until the next audit, for the uses), their counts do not", now.unfollowed-before.unfollowed)
		}
		unfollowed.Log(logger, slog.LevelWarn, problem, "clients could not be followed", "every client is followed again")
		before = now
	}
}

// lossCounts are the connections, in all groups since start, the kernel's
// maps were too full to count (lost), to follow the client of, or to move
// to the state they entered.
type lossCounts struct{ lost, unfollowed, misplaced uint64 }

func (c *Counter) losses() (lossCounts, error) {
	totals, err := c.totals()
	if err != nil {
		return lossCounts{}, err
	}
	var n lossCounts
	for _, t := range totals {
		n.lost += t.Lost
		n.unfollowed += t.Unfollowed
		n.misplaced += t.Misplaced
	}
	return n, nil
}
