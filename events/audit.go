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
// census itself.
func (c *Counter) AuditEvery(ctx context.Context, interval time.Duration, logger *slog.Logger) {
	var drift changes.Tracker
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
	}
}
