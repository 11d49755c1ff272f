package collector

import (
	"errors"
	"slices"
	"time"

	"github.com/consul-conn-exporter/consul-conn-exporter/internal/events"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/limits"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/listeners"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/peaks"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/refusals"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/table/socket"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/tally"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/whatif"
)

// Result is one collection: what every view (the metrics, check's report)
// renders.
type Result struct {
	// Groups are the counts of each limiter group, HTTP first; none when
	// Err is set.
	Groups []GroupCounts
	// States are the watched states, in the order given.
	States []socket.State
	// TopClients is how many of the busiest clients (and programs) are
	// shown each.
	TopClients int
	// ProcessesKnown says every local client end's program could be read
	// (asked for where the Result Has "processes"): each group's
	// Processes are known.
	ProcessesKnown bool
	// ProcessesWhy says why they could not be named, when asked and not
	// known: the same words the log has.
	ProcessesWhy string
	Limits       limits.Snapshot
	// Peaks are what the samples saw over the window, per group as in
	// Groups; nil without sampling.
	Peaks *peaks.View
	// WhatIf are, per group as in Groups, what each candidate limit
	// (--whatif.limit) would have refused since start; none without any.
	WhatIf [][]whatif.Limit
	// Events are what the kernel's events keep besides the counts (churn,
	// lifetimes, the time at the limit), per group as in Groups; nil but
	// with --source events.
	Events *events.Snapshot
	// Refusals are each group's refusals counted in the kernel since
	// start, as in Groups; nil without --refusals.
	Refusals []refusals.Group
	// RefusalsMissed are the changes the kernel skipped the refusals'
	// programs for since start (with Refusals). RefusalsErr is why they
	// could not be read (then Refusals is nil; the counts stand).
	RefusalsMissed uint64
	RefusalsErr    error
	// EventsErr is why the events could not be read besides the counts
	// (then Events is nil; the counts stand).
	EventsErr error
	// Listeners are who listens on the watched ports, and whose
	// connections counted; nil where they are not known (a --command, or
	// their read failed: ListenersErr says why).
	Listeners    *listeners.Agent
	ListenersErr error
	Duration     time.Duration
	// Err is why the connections could not be counted: then no count,
	// processes' or refusals' is made.
	Err error
	// Parts say, for each feature enabled, whether it worked this time,
	// and how long it took: the source first.
	Parts []Part
}

// Part is one feature's share of a collection: "source" (the table's read
// and count), "listeners", "limits", "processes", "refusals", "events" or
// "peaks".
type Part struct {
	Name string
	Err  error // nil: it worked
	Took time.Duration
}

func (r *Result) parts(p Part) { r.Parts = append(r.Parts, p) }

// Has says whether the feature named is enabled: it has a part.
func (r Result) Has(name string) bool {
	return slices.ContainsFunc(r.Parts, func(p Part) bool { return p.Name == name })
}

// part sets how the part named went.
func (r *Result) part(name string, err error, took time.Duration) {
	for i := range r.Parts {
		if r.Parts[i].Name == name {
			r.Parts[i].Err, r.Parts[i].Took = err, took
		}
	}
}

// Failed makes r a failed collection, err why: no count, nor anything
// drawn from the counts, and every part whose series go with them says
// it was not made (the limits' read, made apart, says how it went; the
// peaks keep their samples' counters).
func (r *Result) Failed(err error) {
	r.Err = err
	r.Groups, r.ProcessesKnown, r.ProcessesWhy, r.Refusals, r.Events = nil, false, "", nil, nil
	skipped := errors.New("not made: the connections could not be counted")
	for i := range r.Parts {
		switch p := &r.Parts[i]; {
		case p.Name == "source":
			p.Err = err
		case p.Name != "limits" && p.Err == nil:
			p.Err = skipped
		}
	}
}

// GroupCounts is one limiter group's counts beside its limit.
type GroupCounts struct {
	Group
	// Limit is the per-client limit, 0 when not known.
	Limit  int
	Counts *tally.Tally
	// Processes is how many of the group's connections each local program
	// holds, per client address, where Result.ProcessesKnown.
	Processes []tally.ProcessCount
}
