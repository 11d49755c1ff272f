package events

import (
	"errors"
	"time"

	"github.com/alecthomas/kingpin/v2"
)

// Flags say how often the counts kept by the events are audited.
type Flags struct {
	AuditInterval time.Duration
}

// AddFlags declares the events' flags on app.
func AddFlags(app *kingpin.Application) *Flags {
	f := &Flags{}
	app.Flag("events.audit-interval", "With --source events: how often a census of the kernel's socket table checks the counts the events keep, and corrects any drift (a census is also taken whenever the kernel says it skipped an event).").
		Default("5m").DurationVar(&f.AuditInterval)
	return f
}

// Validate checks the flags.
func (f *Flags) Validate() error {
	if f.AuditInterval < time.Second {
		return errors.New("--events.audit-interval must be 1s or more: each audit walks the whole socket table")
	}
	return nil
}
