package events

import (
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/alecthomas/kingpin/v2"

	"github.com/consul-conn-exporter/consul-conn-exporter/internal/table/socket"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/wholenumber"
)

// Flags say how often the counts kept by the events are audited, and how
// many keys their maps hold.
type Flags struct {
	AuditInterval time.Duration
	Keys          int
}

// The bounds of --events.keys.
const (
	minKeys = 1 << 10
	maxKeys = 1 << 24
)

// AddFlags declares the events' flags on app.
func AddFlags(app *kingpin.Application) *Flags {
	f := &Flags{}
	app.Flag("events.audit-interval", "With --source events: how often a census of the kernel's socket table checks the counts the events keep, and corrects any drift (a census is also taken whenever the kernel says it skipped an event).").
		Default("5m").DurationVar(&f.AuditInterval)
	app.Flag("events.keys", "With --source events: how many keys each of the kernel's two hash maps holds (the open connections per local address, port, state and client; the clients per group). A million covers a million connections each from a client of its own; their buckets take 16 bytes a key of kernel memory at start, charged to the exporter's memory cgroup (32 MiB for both at the default). A full map is said, and its connections counted as lost.").
		Default("1048576").SetValue(wholenumber.Of(&f.Keys))
	return f
}

// Validate checks the flags, and the states (--states) the events would
// count.
func (f *Flags) Validate(states []socket.State) error {
	if slices.Contains(states, socket.StateSynRecv) {
		return errors.New("--source events cannot count --states syn-recv: a half-open connection is a request socket, whose changes the kernel does not trace; use --source netlink")
	}
	if f.AuditInterval < time.Second {
		return errors.New("--events.audit-interval must be 1s or more: each audit walks the whole socket table")
	}
	if f.Keys < minKeys || f.Keys > maxKeys {
		return fmt.Errorf("--events.keys must be between %d and %d", minKeys, maxKeys)
	}
	return nil
}
