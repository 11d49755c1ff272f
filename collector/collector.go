// Package collector makes one collection: it runs the command, parses its
// table and counts the connections, and says why when it cannot. A failed
// collection never reports a count.
package collector

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/sync/singleflight"

	"github.com/consul-conn-exporter/consul-conn-exporter/limits"
	"github.com/consul-conn-exporter/consul-conn-exporter/parser"
	"github.com/consul-conn-exporter/consul-conn-exporter/runner"
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

// Ports are every group's ports.
func (c Config) Ports() []uint16 {
	var ports []uint16
	for _, g := range c.Groups {
		ports = append(ports, g.Ports...)
	}
	return ports
}

// Collector collects with one runner.
type Collector struct {
	config Config
	runner *runner.Runner
	limits *limits.Source
	logger *slog.Logger
	// ReadLimitsAfterCount reads an auto limit after the count if it has
	// not been read yet: for a single collection, which must report it.
	ReadLimitsAfterCount bool
	// inFlight makes callers that arrive while a collection runs share it:
	// however many scrapers and outputs, one command at a time.
	inFlight singleflight.Group
	// processWarning is the last warning about unreadable programs, so
	// that it is logged once per change.
	processWarning atomic.Pointer[string]
}

// New collects config's counts from the table r prints, with the limits
// of lim.
func New(config Config, r *runner.Runner, lim *limits.Source, logger *slog.Logger) *Collector {
	return &Collector{config: config, runner: r, limits: lim, logger: logger}
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
	table, err := c.count(ctx)
	res.Duration, res.Err = time.Since(start), err
	if err == nil {
		res.counts = table.groups
		if table.processes != nil {
			var unknown int
			res.processes, unknown = table.processes.Held()
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

func (c *Collector) count(ctx context.Context) (*table, error) {
	table := newTable(c.config, impliedState(c.runner.Argv()))
	out, err := c.runner.Run(ctx, table.read)
	if err != nil {
		return nil, err
	}
	name := c.runner.String()
	if err := table.check(out); err != nil {
		return nil, fmt.Errorf("%s %w", name, err)
	}
	if len(out.Stderr) > 0 {
		c.logger.Warn("command wrote to stderr", "command", name, "stderr", strings.Join(out.Stderr, "; "))
	}
	return table, nil
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
	previous := ""
	if old := c.processWarning.Swap(&msg); old != nil {
		previous = *old
	}
	if msg == previous {
		return
	}
	if msg != "" {
		c.logger.Warn(msg, "connections", unknown)
	} else {
		c.logger.Info("the programs holding the HTTP connections can be read again")
	}
}

// table reads a command's output a line at a time and decides whether what
// it read can be counted.
type table struct {
	parser                 parser.Parser
	groups                 []*tally.Tally
	processes              *tally.Processes // nil unless asked for
	socketRows, unreadable int
	// otherLines are the lines that are neither blank nor a socket row:
	// titles, headers and ss's continuation lines.
	otherLines      int
	firstUnreadable string
	firstErr        error
}

func newTable(config Config, implied parser.State) *table {
	t := &table{parser: parser.Parser{ImpliedState: implied, Processes: config.Processes}}
	for _, g := range config.Groups {
		t.groups = append(t.groups, tally.New(g.Ports, config.States))
	}
	if config.Processes {
		t.processes = tally.NewProcesses(config.Groups[0].Ports, config.States)
	}
	return t
}

func (t *table) read(line string) {
	s, kind, err := t.parser.ParseLine(line)
	switch {
	case err != nil:
		t.unreadable++
		if t.firstErr == nil {
			t.firstUnreadable, t.firstErr = line, err
		}
	case kind == parser.TCPSocket:
		t.socketRows++
		for _, g := range t.groups {
			g.Add(s)
		}
		if t.processes != nil {
			t.processes.Add(s)
		}
	case kind == parser.OtherSocket:
		t.socketRows++
	case strings.TrimSpace(line) != "":
		t.otherLines++
	}
}

// check says why the command's output cannot be trusted, if it cannot.
func (t *table) check(out runner.Output) error {
	// One line misread could be a connection missed: a count that may be
	// wrong is not reported.
	if t.unreadable > 0 {
		return fmt.Errorf("printed %d lines that are not ss or netstat socket rows (of %d), first %q: %v",
			t.unreadable, out.Lines, clip(t.firstUnreadable), t.firstErr)
	}
	if t.socketRows == 0 && len(out.Stderr) > 0 {
		return fmt.Errorf("printed no socket rows and wrote to stderr: %s", strings.Join(out.Stderr, "; "))
	}
	if t.socketRows == 0 && t.otherLines > 0 {
		return fmt.Errorf("printed %d lines but no socket rows: is the socket table readable here (netstat needs /proc/net)?", t.otherLines)
	}
	return nil
}

// impliedState is the state of rows that ss prints without a State column:
// it drops the column when its filter names exactly one state.
func impliedState(argv []string) parser.State {
	found := parser.StateUnknown
	n := 0
	for i := 0; i+1 < len(argv); i++ {
		if argv[i] != "state" {
			continue
		}
		if s, ok := parser.ParseState(argv[i+1]); ok {
			found = s
			n++
		}
	}
	if n != 1 {
		return parser.StateUnknown
	}
	return found
}

func clip(line string) string {
	const most = 120
	if len(line) > most {
		return line[:most] + "..."
	}
	return line
}
