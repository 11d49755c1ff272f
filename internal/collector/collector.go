// Package collector makes one collection: it reads the sockets from a
// source, counts them per limiter group, and puts each group's counts
// beside its limit. A failed collection never reports a count.
package collector

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"golang.org/x/sync/singleflight"

	"github.com/consul-conn-exporter/consul-conn-exporter/internal/events"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/limits"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/listeners"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/owners"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/peaks"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/refusals"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/say"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/table/socket"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/table/source"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/tally"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/whatif"
)

// Limiter is one of Consul's per-client limiters. A limiter group is a set
// of ports it limits, with its own metrics: counts are never summed across
// groups.
type Limiter struct {
	Name    string // its word in the metrics' names and check's tables: "http"
	Setting string // Consul's name of its per-client limit
	What    string // its connections, in help texts: "HTTP"
	// PerPort is a limiter each of whose ports is a group of its own:
	// its metrics carry the group's port.
	PerPort bool
	// Multiplexed connections carry many requests at once, each as small
	// as a control frame (gRPC's HTTP/2: a health check's request is 52
	// bytes over TLS, its answer 39): no read or send says whether one
	// waits, so none is told waiting or idle; silent and half-closed hold.
	Multiplexed bool
	limit       func(limits.Snapshot) int
}

// The limiters watched.
var (
	HTTP = &Limiter{Name: "http", What: "HTTP", Setting: "http_max_conns_per_client", limit: func(s limits.Snapshot) int { return s.HTTP }}    // the HTTP and HTTPS ports
	RPC  = &Limiter{Name: "rpc", What: "server RPC", Setting: "rpc_max_conns_per_client", limit: func(s limits.Snapshot) int { return s.RPC }} // a server's RPC port
	// The external gRPC ports (plaintext and TLS): whether they share one
	// limiter cannot be told from outside the agent, so each is judged
	// as its own, which never says a client is nearer the limit than it is.
	GRPC = &Limiter{Name: "grpc", What: "gRPC", Setting: "grpc_max_conns_per_client", PerPort: true, Multiplexed: true, limit: func(s limits.Snapshot) int { return s.GRPC }}
)

// Limiters are every limiter, HTTP first.
var Limiters = []*Limiter{HTTP, RPC, GRPC}

// Group is the ports of one limiter.
type Group struct {
	*Limiter
	Ports []uint16
	// WhatIf are limits not set yet, whose refusals are predicted
	// (--whatif.limit).
	WhatIf []int
}

// Title names the group in words: "HTTP", "RPC", "gRPC port 8502".
func (g Group) Title() string {
	if g.PerPort && len(g.Ports) == 1 {
		return fmt.Sprintf("%s port %d", g.What, g.Ports[0])
	}
	return strings.ToUpper(g.Name)
}

// Config is what to count and how to report it.
type Config struct {
	Groups []Group // HTTP first
	States []socket.State
	// TopClients is how many clients (and programs) get a sample each.
	TopClients int
	// Processes names the local programs holding each group's connections,
	// looking them up in the kernel's list of open files where
	// ProcessesFromKernel and its program could be loaded, else in ProcDir
	// (/proc), for at most ProcessesTimeout.
	Processes           bool
	ProcessesFromKernel bool
	ProcDir             string
	ProcessesTimeout    time.Duration
	// SampleInterval, when set, has the table read that often between
	// collections for the peaks over PeakWindow.
	SampleInterval, PeakWindow time.Duration
	// Once is a single collection (check, --once): the limits not set yet
	// judge what is held then, where a running exporter judges only what
	// opens after its first read.
	Once bool
}

// GroupPorts are the ports of l's groups, none if it is not watched.
func (c Config) GroupPorts(l *Limiter) []uint16 {
	var ports []uint16
	for _, g := range c.Groups {
		if g.Limiter == l {
			ports = append(ports, g.Ports...)
		}
	}
	return ports
}

// WhatIfLimits are each group's limits not set yet, as Groups.
func (c Config) WhatIfLimits() [][]int {
	limits := make([][]int, len(c.Groups))
	for i, g := range c.Groups {
		limits[i] = g.WhatIf
	}
	return limits
}

// Ports are every group's ports.
func (c Config) Ports() []uint16 {
	var ports []uint16
	for _, g := range c.Groups {
		ports = append(ports, g.Ports...)
	}
	return ports
}

// Want is what the source must read for config.
func (c Config) Want() source.Want {
	want := source.Want{States: c.States, Ports: c.Ports()}
	if c.Processes {
		want.ClientPorts = c.Ports()
	}
	return want
}

// Parts are what a collection reads, besides the table: each nil where its
// feature is off.
type Parts struct {
	// Source reads the table (or gives the kernel's counts).
	Source source.Source
	// Limits gives the limits known once the table is read.
	Limits func() limits.Snapshot
	// Listeners judge whose listeners are the agent's at each collection
	// and sample: a port nothing listens on is said, and only the
	// connections the agent's listeners accepted count. Nil where they
	// cannot be known (a --command's table may be another namespace's).
	Listeners *listeners.Watch
	// Tell is told every judgement of the listeners before the table is
	// read: the kernel programs count only the agent's connections too.
	Tell func(listeners.Agent) error
	// Events reads what the kernel's events keep besides the counts (with
	// --source events): the churn, the lifetimes, and each client's peak
	// between two reads, which the peaks then hold instead of what a read
	// saw at its moment.
	Events func(top int, limits []int) (events.Snapshot, error)
	// Refusals reads the refusals counted in the kernel, told what the
	// last read of the agent said.
	Refusals func(top int, agent refusals.Agent) (refusals.Snapshot, error)
	// Owners names the programs holding the connections (with
	// Config.Processes); nil: a walk of Config.ProcDir.
	Owners owners.Lookup
}

// Collector collects from its parts. It is made once, and never changes.
type Collector struct {
	config Config
	parts  Parts
	logger *slog.Logger
	// inFlight makes callers that arrive while a collection runs share it:
	// however many scrapers and outputs, one read of the table at a time.
	inFlight singleflight.Group
	// tried is set once a collection has been made, whatever its result.
	tried atomic.Bool
	// peaks are the samples' window, nil without sampling.
	peaks *peaks.Window
	// whatIf predicts the candidate limits' refusals from every read; nil
	// without any, and with the events, which judge each open themselves
	// (but for a single collection: who holds past them now).
	whatIf *whatif.Judge
	// What is wrong, logged once per change.
	refusalsState, namingState, eventsState                       say.Tracker
	listenersState, quietState, sharedState, addrState, ownerless say.Tracker
}

// New collects config's counts from parts.
func New(config Config, parts Parts, logger *slog.Logger) *Collector {
	if parts.Owners == nil {
		parts.Owners = owners.Proc(config.ProcDir)
	}
	c := &Collector{config: config, parts: parts, logger: logger}
	if config.SampleInterval > 0 {
		c.peaks = peaks.New(len(config.Groups), config.PeakWindow, config.SampleInterval, config.TopClients)
	}
	candidates := config.WhatIfLimits()
	if (parts.Events == nil || config.Once) && slices.ContainsFunc(candidates, func(ls []int) bool { return len(ls) > 0 }) {
		c.whatIf = whatif.New(candidates, config.Once)
	}
	return c
}

// String names the collector's source.
func (c *Collector) String() string { return c.parts.Source.String() }

// Collect reads the table once and counts it, or waits for the collection
// already running and returns its result.
func (c *Collector) Collect(ctx context.Context) Result {
	res, _, _ := c.inFlight.Do("collect", func() (any, error) {
		return c.collect(ctx), nil
	})
	c.tried.Store(true)
	return res.(Result)
}

// Tried says whether a collection has been made yet, whatever its result:
// the exporter is ready then.
func (c *Collector) Tried() bool { return c.tried.Load() }

func (c *Collector) collect(ctx context.Context) Result {
	r := c.read(ctx, true)
	res := Result{States: c.config.States, TopClients: c.config.TopClients,
		Listeners: r.agent, ListenersErr: r.listenersErr, Duration: r.took, Limits: r.limits, Events: r.events, EventsErr: r.eventsErr, Err: r.err}
	res.parts(Part{Name: "source", Err: r.err, Took: r.took})
	if c.parts.Listeners != nil {
		err := r.listenersErr
		if err == nil {
			err = r.agent.Untold()
		}
		res.parts(Part{Name: "listeners", Err: err, Took: r.judging})
	}
	if r.limits.Auto {
		res.parts(Part{Name: "limits", Err: r.limits.Err(), Took: r.limits.Took})
	}
	if c.parts.Events != nil {
		res.parts(Part{Name: "events", Err: r.eventsErr, Took: r.eventsTook})
	}
	if c.peaks != nil {
		began := time.Now()
		view := c.peaks.View(began)
		res.Peaks = &view
		var err error
		if !view.Known {
			err = errors.New("no sample of the peak window was read")
		}
		res.parts(Part{Name: "peaks", Err: err, Took: time.Since(began)})
	}
	switch {
	case c.whatIf != nil:
		res.WhatIf = c.whatIf.View(c.config.TopClients)
	case r.events != nil:
		// Judged at each open in the kernel: exact, where the samples'
		// judge is a bound.
		for _, g := range r.events.Groups {
			res.WhatIf = append(res.WhatIf, g.WhatIf)
		}
	}
	if c.config.Processes {
		res.parts(Part{Name: "processes"})
	}
	if c.parts.Refusals != nil {
		res.parts(Part{Name: "refusals"})
	}
	if r.err != nil {
		res.Failed(r.err)
		return res
	}
	for i, g := range c.config.Groups {
		res.Groups = append(res.Groups, GroupCounts{Group: g, Limit: g.limit(res.Limits), Counts: r.counts.groups[i]})
	}
	if r.counts.processes != nil {
		began := time.Now()
		var held [][]tally.ProcessCount
		held, res.ProcessesWhy = c.namePrograms(ctx, r.counts.processes)
		res.ProcessesKnown = res.ProcessesWhy == ""
		var err error
		if !res.ProcessesKnown {
			err = errors.New(res.ProcessesWhy)
		}
		for i := range held {
			res.Groups[i].Processes = held[i]
		}
		res.part("processes", err, time.Since(began))
	}
	if c.parts.Refusals != nil {
		began := time.Now()
		agent := refusals.Agent{ReadAt: res.Limits.ReadAt}
		for _, g := range res.Groups {
			agent.Limits = append(agent.Limits, g.Limit)
			if g.Limiter == HTTP {
				agent.TLSPorts = res.Limits.TLSPorts
			}
		}
		snap, err := c.parts.Refusals(c.config.TopClients, agent)
		problem := ""
		if err != nil {
			problem = err.Error()
			res.RefusalsErr = fmt.Errorf("reading the refusals: %w", err)
		} else {
			res.Refusals, res.RefusalsMissed = snap.Groups, snap.Missed
		}
		c.refusalsState.Log(c.logger, slog.LevelError, problem, "cannot read the refusals; their counters are absent", "the refusals can be read again")
		res.part("refusals", res.RefusalsErr, time.Since(began))
	}
	return res
}

// Sample reads the table once between collections and keeps what the peaks
// need; the programs are not named.
func (c *Collector) Sample(ctx context.Context) {
	c.read(ctx, false)
}

// reading is what a collection and a sample both read.
type reading struct {
	agent        *listeners.Agent
	listenersErr error
	judging      time.Duration // the listeners' read and judgement
	counts       *counts
	took         time.Duration // the table's read and count
	limits       limits.Snapshot
	events       *events.Snapshot
	eventsErr    error
	eventsTook   time.Duration
	err          error
}

// read reads the listeners, the table (with the programs holding the
// connections in a collection, where asked for), then the limits, and what
// the events keep besides; and adds it to the peaks as a sample.
func (c *Collector) read(ctx context.Context, collection bool) reading {
	start := time.Now()
	var r reading
	r.agent, r.listenersErr = c.agent(ctx, collection)
	r.judging = time.Since(start)
	if r.agent != nil && c.parts.Tell != nil {
		if err := c.parts.Tell(*r.agent); err != nil {
			r.err = err
		}
	}
	if r.err == nil {
		r.err = r.agent.Untold()
	}
	r.counts = newCounts(c.config, collection && c.config.Processes, r.agent)
	if r.err == nil {
		r.err = c.parts.Source.Read(ctx, r.counts.add, r.counts.reset)
	}
	r.took = time.Since(start)
	if r.err == nil && r.agent != nil {
		problem := ""
		if r.counts.ownerless {
			problem = "the socket table gives no connection's user (busybox's netstat; ss on a host without a cgroup2 mount, where its -e costs a mount-table read per socket; a --command without -e): a socket another user planted on the agent's address before the agent started would count; --source netlink, and net-tools' netstat, give it"
		}
		c.ownerless.Log(c.logger, slog.LevelWarn, problem, "cannot tell every connection's user", "every connection's user is known again")
	}
	// After the count: a read of the agent's limits opens a connection
	// of its own, which must not be counted.
	r.limits = c.parts.Limits()
	if r.err == nil && c.parts.Events != nil {
		began := time.Now()
		r.events, r.eventsErr = c.readEvents(r.limits)
		r.eventsTook = time.Since(began)
		problem := ""
		if r.eventsErr != nil {
			problem = r.eventsErr.Error()
		}
		c.eventsState.Log(c.logger, slog.LevelError, problem, "cannot read the kernel's events; the churn, lifetimes and time at the limit are absent, and the peaks miss this sample", "the kernel's events can be read again")
	}
	c.sampled(start, r)
	return r
}

// readEvents reads what the events keep besides the counts; lim are the
// limits their time at the limit counts against.
func (c *Collector) readEvents(lim limits.Snapshot) (*events.Snapshot, error) {
	perGroup := make([]int, len(c.config.Groups))
	for i, g := range c.config.Groups {
		perGroup[i] = g.limit(lim)
	}
	snap, err := c.parts.Events(c.config.TopClients, perGroup)
	if err != nil {
		return nil, fmt.Errorf("reading the kernel's events: %w", err)
	}
	return &snap, nil
}

// SampleEvery samples every interval until ctx is done; without sampling
// (--sample.interval 0) it returns at once.
func (c *Collector) SampleEvery(ctx context.Context) {
	if c.peaks == nil {
		return
	}
	ticker := time.NewTicker(c.config.SampleInterval)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
			c.Sample(ctx)
		}
	}
}

// sampled adds r, a sample taken at start, to the peaks, if they are kept
// (with the events, each client's peak since the last read, else its
// count), and to the candidate limits' predictions.
func (c *Collector) sampled(start time.Time, r reading) {
	switch {
	case c.whatIf == nil:
	case r.err != nil:
		// Nothing read: the clients' counts next are no opens since this.
		// (An agent down is a sample that sees its ports otherwise.)
		c.whatIf.Forget(start)
	default:
		seen := make([]string, len(c.config.Groups))
		if r.agent != nil {
			users := r.agent.Users()
			for i, g := range c.config.Groups {
				for _, p := range g.Ports {
					uid, ok := users[p]
					seen[i] += fmt.Sprintf("%d:%t:%d ", p, ok, uid)
				}
			}
		}
		c.whatIf.Add(start, r.counts.groups, seen)
	}
	switch {
	case c.peaks == nil:
	case r.err != nil, c.parts.Events != nil && r.events == nil:
		c.peaks.Failed()
	default:
		groups := make([]peaks.Group, len(c.config.Groups))
		for i, g := range c.config.Groups {
			groups[i] = peaks.Group{Counts: r.counts.groups[i], Limit: g.limit(r.limits)}
			if r.events != nil {
				groups[i].Counts = r.events.Groups[i].Peaks
			}
		}
		c.peaks.Add(start, groups)
	}
}

// agent reads the listeners and judges whose they are; nil where they are
// not watched or cannot be read (said once per change, with why). What
// they say is logged once per change. A collection looks the agent's
// address up again; a sample takes the last one.
func (c *Collector) agent(ctx context.Context, collection bool) (*listeners.Agent, error) {
	w := c.parts.Listeners
	if w == nil {
		return nil, nil
	}
	addr := w.Address().Last()
	if collection {
		var err error
		addr, err = w.Address().Resolve(ctx)
		problem := ""
		switch {
		case err != nil && len(addr.Addrs) > 0:
			problem = fmt.Sprintf("%v; judging the listeners by the addresses it last resolved to, %v", err, addr.Addrs)
		case err != nil:
			problem = err.Error()
		}
		c.addrState.Log(c.logger, slog.LevelWarn, problem, "cannot look up the agent's address", "the agent's address resolves again")
	}
	agent, err := w.Judge(ctx, addr)
	problem := ""
	if err != nil {
		problem = err.Error()
	}
	c.listenersState.Log(c.logger, slog.LevelWarn, problem, "cannot tell who listens on the watched ports; every connection on them counts", "the listeners on the watched ports can be read again")
	if err != nil {
		return nil, err
	}
	c.quietState.Log(c.logger, slog.LevelWarn, agent.QuietReason(), "no listener of the agent's is known on a watched port: nothing there is counted for it", "the agent listens on every watched port again")
	c.sharedState.Log(c.logger, slog.LevelWarn, agent.SharedReason(), "another user listens on a watched port", "only the agent listens on the watched ports again")
	return agent, nil
}

// counts are one collection's tallies: one per limiter group, and the
// programs holding each group's connections when asked for; where agent is
// known, of the connections it accepted.
type counts struct {
	config        Config
	ports         []uint16
	withProcesses bool
	agent         *listeners.Agent
	groups        []*tally.Tally
	processes     []*tally.Processes // per group, as groups
	// ownerless: the table did not give the user of some connection the
	// agent accepted.
	ownerless bool
}

func newCounts(config Config, processes bool, agent *listeners.Agent) *counts {
	c := &counts{config: config, ports: config.Ports(), withProcesses: processes, agent: agent}
	c.reset()
	return c
}

func (c *counts) reset() {
	c.ownerless = false
	c.groups, c.processes = nil, nil
	for _, g := range c.config.Groups {
		c.groups = append(c.groups, tally.New(g.Ports, c.config.States))
		if c.withProcesses {
			c.processes = append(c.processes, tally.NewProcesses(g.Ports, c.config.States))
		}
	}
}

func (c *counts) add(s socket.Socket) {
	if c.agent != nil {
		// A server end by its own listener and user, a client end on this
		// host by its server's listener.
		server := slices.Contains(c.ports, s.Local.Port())
		switch {
		case server && !c.agent.Accepts(s):
			return
		case !server && !c.agent.Serves(s.Peer):
			return
		case server && !s.UIDKnown:
			c.ownerless = true
		}
	}
	for i, g := range c.config.Groups {
		in := s
		if g.Multiplexed && (in.Use == socket.UseWaiting || in.Use == socket.UseIdle) {
			in.Use = socket.UseUnknown
		}
		c.groups[i].Add(in)
		if c.processes != nil {
			c.processes[i].Add(in)
		}
	}
}

// namePrograms names the programs holding the counted connections' client
// ends on this host, each group's (as the table names them, or by their
// inodes within the budget, in one lookup for every group). Whatever goes
// wrong costs only the names, never the counts; it is logged once per
// change.
func (c *Collector) namePrograms(ctx context.Context, groups []*tally.Processes) (held [][]tally.ProcessCount, why string) {
	ctx, cancel := context.WithTimeout(ctx, c.config.ProcessesTimeout)
	defer cancel()
	names := map[uint64]string{}
	for _, p := range groups {
		maps.Copy(names, p.Unnamed())
	}
	found, err := c.parts.Owners.Names(ctx, names)
	var unknown tally.Unknown
	for _, p := range groups {
		h, u := p.Held(names)
		held = append(held, h)
		unknown.Untold, unknown.NotFound, unknown.Unseen = unknown.Untold+u.Untold, unknown.NotFound+u.NotFound, unknown.Unseen+u.Unseen
	}
	switch {
	case err != nil:
		why = err.Error() + " (--clients.processes.timeout bounds the lookup)"
	case unknown.Unseen > 0:
		why = fmt.Sprintf("the table has no client end of the %d connections from this host's loopback (a --command needs them too: ss -e, with or dport = :PORT)", unknown.Unseen)
	case slices.ContainsFunc(held, func(h []tally.ProcessCount) bool {
		return slices.ContainsFunc(h, func(h tally.ProcessCount) bool { return !utf8.ValidString(h.Process) })
	}):
		why = "a program's name is not valid UTF-8" // no source lets one through: never a label
	case unknown.Untold > 0:
		why = fmt.Sprintf("the table names no program for %d client ends (a --command needs -e or -p, of ss or netstat)", unknown.Untold)
	case unknown.NotFound > 0 && found.Unreadable > 0:
		why = fmt.Sprintf("%d processes could not be read: other users' programs are seen only as root, or with CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH", found.Unreadable)
	case unknown.NotFound > 0 && found.Found == 0:
		why = fmt.Sprintf("no process in %s holds any of the %d client ends: they are not in this PID namespace (in a container, share the host's, and mount its /proc)", c.parts.Owners, unknown.NotFound)
	}
	// Some not found while others were, every process read: those
	// connections closed between the table and the walk.
	c.namingState.Log(c.logger, slog.LevelWarn, why, "cannot tell which local programs hold the connections, so no per-process counts",
		"the programs holding the connections can be named again")
	if why != "" {
		return nil, why
	}
	return held, ""
}
