// Package collector makes one collection: it runs the command, parses its
// table and counts the connections, and says why when it cannot. A failed
// collection never reports a count.
package collector

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"golang.org/x/sync/singleflight"

	"github.com/consul-conn-exporter/consul-conn-exporter/parser"
	"github.com/consul-conn-exporter/consul-conn-exporter/runner"
	"github.com/consul-conn-exporter/consul-conn-exporter/tally"
)

// Config is what to count and how to report it.
type Config struct {
	Ports  []uint16
	States []parser.State
	// Limit is Consul's http_max_conns_per_client, reported beside the counts.
	Limit int
	// TopClients is how many clients get a per-client sample.
	TopClients int
}

// Collector collects with one runner.
type Collector struct {
	config Config
	runner *runner.Runner
	logger *slog.Logger
	// inFlight makes callers that arrive while a collection runs share it:
	// however many scrapers and outputs, one command at a time.
	inFlight singleflight.Group
}

// New collects config's counts from the table r prints.
func New(config Config, r *runner.Runner, logger *slog.Logger) *Collector {
	return &Collector{config: config, runner: r, logger: logger}
}

// Result is one collection. It is a prometheus.Collector of its own metrics.
type Result struct {
	config   Config
	counts   *tally.Tally // nil when Err is set
	Duration time.Duration
	Err      error
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
	counts, err := c.count(ctx)
	return Result{config: c.config, counts: counts, Duration: time.Since(start), Err: err}
}

func (c *Collector) count(ctx context.Context) (*tally.Tally, error) {
	table := newTable(c.config, impliedState(c.runner.Argv()))
	out, err := c.runner.Run(ctx, table.read)
	if err != nil {
		return nil, err
	}
	name := c.runner.String()
	counts, err := table.counts(out)
	if err != nil {
		return nil, fmt.Errorf("%s %w", name, err)
	}
	if len(out.Stderr) > 0 {
		c.logger.Warn("command wrote to stderr", "command", name, "stderr", strings.Join(out.Stderr, "; "))
	}
	return counts, nil
}

// table reads a command's output a line at a time and decides whether what
// it read can be counted.
type table struct {
	parser                 parser.Parser
	tally                  *tally.Tally
	socketRows, unreadable int
	// otherLines are the lines that are neither blank nor a socket row:
	// titles, headers and ss's continuation lines.
	otherLines      int
	firstUnreadable string
	firstErr        error
}

func newTable(config Config, implied parser.State) *table {
	return &table{
		parser: parser.Parser{ImpliedState: implied},
		tally:  tally.New(config.Ports, config.States),
	}
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
		t.tally.Add(s)
	case kind == parser.OtherSocket:
		t.socketRows++
	case strings.TrimSpace(line) != "":
		t.otherLines++
	}
}

// counts is the tally, or why the command's output cannot be trusted.
func (t *table) counts(out runner.Output) (*tally.Tally, error) {
	// One line misread could be a connection missed: a count that may be
	// wrong is not reported.
	if t.unreadable > 0 {
		return nil, fmt.Errorf("printed %d lines that are not ss or netstat socket rows (of %d), first %q: %v",
			t.unreadable, out.Lines, clip(t.firstUnreadable), t.firstErr)
	}
	if t.socketRows == 0 && len(out.Stderr) > 0 {
		return nil, fmt.Errorf("printed no socket rows and wrote to stderr: %s", strings.Join(out.Stderr, "; "))
	}
	if t.socketRows == 0 && t.otherLines > 0 {
		return nil, fmt.Errorf("printed %d lines but no socket rows: is the socket table readable here (netstat needs /proc/net)?", t.otherLines)
	}
	return t.tally, nil
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
