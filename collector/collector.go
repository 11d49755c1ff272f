// Package collector makes one collection: it runs the command, parses its
// table and counts the connections, and says why when it cannot. A failed
// collection never reports a count.
package collector

import (
	"context"
	"log/slog"
	"time"

	"golang.org/x/sync/singleflight"

	"github.com/consul-conn-exporter/consul-conn-exporter/internal/changes"
	"github.com/consul-conn-exporter/consul-conn-exporter/limits"
	"github.com/consul-conn-exporter/consul-conn-exporter/parser"
	"github.com/consul-conn-exporter/consul-conn-exporter/tally"
)

// The limiter groups: each is a set of ports with one per-client limit in
// Consul, and its own metric names. Counts are never summed across groups.
const (
	HTTP = "http" // http_max_conns_per_client: the HTTP and HTTPS ports
	RPC  = "rpc"  // rpc_max_conns_per_client: a server's RPC port
)

// Group is the ports of one limiter.
type Group struct {
	Name  string // HTTP or RPC
	Ports []uint16
}

// Config is what to count and how to report it.
type Config struct {
	Groups []Group // HTTP first
	States []parser.State
	// TopClients is how many clients (and programs) get a sample each.
	TopClients int
	// Processes names the local programs holding the HTTP connections.
	Processes bool
}

// GroupPorts are the ports of the group named name, none if it is not
// watched.
func (c Config) GroupPorts(name string) []uint16 {
	for _, g := range c.Groups {
		if g.Name == name {
			return g.Ports
		}
	}
	return nil
}

// Ports are every group's ports.
func (c Config) Ports() []uint16 {
	var ports []uint16
	for _, g := range c.Groups {
		ports = append(ports, g.Ports...)
	}
	return ports
}

// Source is where the sockets come from: ss or netstat through the runner
// and the parser (Command), or the kernel's socket table read directly
// (sockdiag). Each yields the same socket records into the same counts.
type Source interface {
	// Read calls add with each socket of the table. A source that has to
	// start over calls reset first. An error means the table cannot be
	// trusted, and nothing added counts.
	Read(ctx context.Context, add func(parser.Socket), reset func()) error
	// String names the source for messages.
	String() string
}

// Collector collects from one source.
type Collector struct {
	config Config
	source Source
	limits *limits.Source
	logger *slog.Logger
	// ReadLimitsAfterCount reads an auto limit after the count if it has
	// not been read yet: for a single collection, which must report it.
	ReadLimitsAfterCount bool
	// inFlight makes callers that arrive while a collection runs share it:
	// however many scrapers and outputs, one command at a time.
	inFlight singleflight.Group
	// unreadablePrograms is logged once per change.
	unreadablePrograms changes.Tracker
}

// New collects config's counts from source, with the limits of lim.
func New(config Config, source Source, lim *limits.Source, logger *slog.Logger) *Collector {
	return &Collector{config: config, source: source, limits: lim, logger: logger}
}

// Result is one collection. It is a prometheus.Collector of its own
// metrics, and what every other view of the collection reads.
type Result struct {
	config Config
	counts []*tally.Tally // per group; nil when Err is set
	// processes: held per client and program; known when every local
	// client end's program could be read.
	processes      []tally.ProcessCount
	processesKnown bool
	Limits         limits.Snapshot
	Duration       time.Duration
	Err            error
}

// Collect runs the command once and counts its table, or waits for the
// collection already running and returns its result.
func (c *Collector) Collect(ctx context.Context) Result {
	res, _, _ := c.inFlight.Do("collect", func() (any, error) {
		return c.collect(ctx), nil
	})
	return res.(Result)
}

func (c *Collector) collect(ctx context.Context) Result {
	start := time.Now()
	res := Result{config: c.config}
	counts := newCounts(c.config)
	err := c.source.Read(ctx, counts.add, counts.reset)
	res.Duration, res.Err = time.Since(start), err
	if err == nil {
		res.counts = counts.groups
		if counts.processes != nil {
			var unknown int
			res.processes, unknown = counts.processes.Held()
			res.processesKnown = unknown == 0
			c.warnProcesses(unknown)
		}
	}
	if c.ReadLimitsAfterCount {
		c.limits.FirstRead()
	}
	res.Limits = c.limits.Snapshot()
	return res
}

// counts are one collection's tallies: one per limiter group, and the
// programs holding the HTTP connections when asked for.
type counts struct {
	config    Config
	groups    []*tally.Tally
	processes *tally.Processes
}

func newCounts(config Config) *counts {
	c := &counts{config: config}
	c.reset()
	return c
}

func (c *counts) reset() {
	c.groups = nil
	for _, g := range c.config.Groups {
		c.groups = append(c.groups, tally.New(g.Ports, c.config.States))
	}
	if c.config.Processes {
		c.processes = tally.NewProcesses(c.config.Groups[0].Ports, c.config.States)
	}
}

func (c *counts) add(s parser.Socket) {
	for _, g := range c.groups {
		g.Add(s)
	}
	if c.processes != nil {
		c.processes.Add(s)
	}
}

// warnProcesses says, once per change, that the programs holding some
// local connections could not be read, and so are not reported.
func (c *Collector) warnProcesses(unknown int) {
	msg := ""
	if unknown > 0 {
		msg = "cannot tell which local programs hold the HTTP connections, so no per-process counts: " +
			"the table names no program for some client ends (ss -p sees other users' programs only as root, " +
			"or with CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH, and needs /proc; a --command needs -p)"
	}
	switch {
	case !c.unreadablePrograms.Changed(msg):
	case msg != "":
		c.logger.Warn(msg, "connections", unknown)
	default:
		c.logger.Info("the programs holding the HTTP connections can be read again")
	}
}
