package events

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/consul-conn-exporter/consul-conn-exporter/internal/changes"
)

// AuditEvery takes a census every interval until ctx is done: a drift
// found is logged once, when it starts or changes, and is corrected by the
// census itself; connections a full map could not count are said too.
func (c *Counter) AuditEvery(ctx context.Context, interval time.Duration, logger *slog.Logger) {
	var drift, full changes.Tracker
	lostBefore := uint64(0)
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
		case found.Drift() > 0:
			problem = fmt.Sprintf("the events' counts lacked %d open connections and held %d closed ones; corrected", found.Uncounted, found.Stale)
		}
		drift.Log(logger, slog.LevelWarn, problem, "the kernel's events drifted from the socket table", "the kernel's events agree with the socket table again")
		lost, err := c.lost()
		problem = ""
		if err == nil && lost > lostBefore {
			problem = fmt.Sprintf("%d connections since the last audit: the kernel's maps are full (--events.keys); the counts lack them", lost-lostBefore)
		}
		lostBefore = max(lostBefore, lost)
		full.Log(logger, slog.LevelError, problem, "connections could not be counted", "every connection is counted again")
	}
}

// lost is how many connections the kernel's maps were too full to count,
// in all groups, since start.
func (c *Counter) lost() (uint64, error) {
	totals, err := c.totals()
	if err != nil {
		return 0, err
	}
	var n uint64
	for _, t := range totals {
		n += t.Lost
	}
	return n, nil
}
