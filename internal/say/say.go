// Package say is how the exporter says what goes wrong: in one line, and,
// for what is checked over and over, once when it starts, changes or
// clears, not every time it is seen again.
package say

import (
	"context"
	"log/slog"
	"sync"
)

// Tracker holds the last state seen; its zero value is "all is well".
type Tracker struct {
	mu   sync.Mutex
	last string
}

// Changed records state ("" for all is well, else what is wrong) and says
// whether it differs from the one recorded before.
func (t *Tracker) Changed(state string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	changed := state != t.last
	t.last = state
	return changed
}

// Log records problem ("" for all is well) as Changed does, and logs the
// change: failed at level, with the problem as "err", when one starts or
// changes; recovered at info when it clears. args go with both.
func (t *Tracker) Log(logger *slog.Logger, level slog.Level, problem, failed, recovered string, args ...any) {
	switch {
	case !t.Changed(problem):
	case problem != "":
		logger.Log(context.Background(), level, failed, append(args, "err", problem)...)
	default:
		logger.Info(recovered, args...)
	}
}
