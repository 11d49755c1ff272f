package source

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"strings"

	"github.com/consul-conn-exporter/consul-conn-exporter/internal/say"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/table/parser"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/table/runner"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/table/socket"
)

// Command is the source that runs ss or netstat (or --command) and reads
// the table it prints.
type Command struct {
	runner *runner.Runner
	parser parser.Parser
	logger *slog.Logger
	// stderr, what the command last wrote there, is logged when it
	// changes: a warning printed on every run (ss -e's "Failed to find
	// cgroup2 mount" on a host without cgroup2) would be a line a second.
	stderr say.Tracker
	// userCommand is --command's: one refused a permission is told which
	// flag gives it back.
	userCommand bool
}

// NewCommand reads the table r prints. implied is the state of rows printed
// without a State column (ss drops it when its filter names one state);
// with processes, what names the programs that hold the sockets is read too
// (an inode from -e, a name from -p).
func NewCommand(r *runner.Runner, implied socket.State, processes bool, logger *slog.Logger) *Command {
	return &Command{runner: r, parser: parser.Parser{ImpliedState: implied, Processes: processes}, logger: logger}
}

// String is the command line.
func (c *Command) String() string { return c.runner.String() }

// Read runs the command once and adds the sockets of its table. Its
// fallbacks to plainer forms only follow a form that printed nothing, so
// there is never anything to reset.
func (c *Command) Read(ctx context.Context, add func(socket.Socket), _ func()) error {
	table := newTable(c.parser, add, kernelCountsBytesSent())
	out, err := c.runner.Run(ctx, table.read)
	if err != nil {
		var exit *runner.ExitError
		if c.userCommand && errors.As(err, &exit) && deniedWords.MatchString(strings.Join(exit.Stderr, " ")) {
			return fmt.Errorf("%w: --command may need a capability the exporter dropped at start; keep it with --command.capabilities (CAP_SYS_ADMIN for ip netns exec and nsenter)", err)
		}
		return err
	}
	name := c.runner.String()
	if err := table.check(out); err != nil {
		return fmt.Errorf("%s %w", name, err)
	}
	c.stderr.Log(c.logger, slog.LevelWarn, strings.Join(out.Stderr, "; "), "command wrote to stderr (logged again when what it writes changes)",
		"command no longer writes to stderr", "command", name)
	return nil
}

// deniedWords are how a command says the kernel refused it a permission
// (strerror of EPERM and EACCES).
var deniedWords = regexp.MustCompile(`(?i)operation not permitted|permission denied`)

// table reads a command's output a line at a time and decides whether what
// it read can be counted.
type table struct {
	parser                 parser.Parser
	add                    func(socket.Socket)
	socketRows, unreadable int
	// otherLines are the lines that are neither blank nor a socket row:
	// titles, headers and ss's continuation lines.
	otherLines      int
	firstUnreadable string
	firstErr        error
	// pending is the last row, held back until the line after it says
	// whether ss -i gave its data's counts.
	pending    socket.Socket
	hasPending bool
	// uses: the rows' tcp_info lines tell their uses (false where the
	// kernel counts no bytes sent, which ss then never prints).
	uses bool
}

func newTable(p parser.Parser, add func(socket.Socket), uses bool) *table {
	return &table{parser: p, add: add, uses: uses}
}

func (t *table) read(line string) {
	s, kind, err := t.parser.ParseLine(line)
	switch {
	case err != nil:
		t.unreadable++
		if t.firstErr == nil {
			t.firstUnreadable, t.firstErr = line, err
		}
	case kind == parser.TCPInfo:
		t.otherLines++ // a continuation, not a row: a table of them alone has none
		if t.hasPending && t.uses {
			t.pending.Traffic, t.pending.Use = s.Traffic, socket.UseOf(t.pending.State, s.Traffic)
		}
		t.flush()
		return
	case kind == parser.TCPSocket:
		t.flush()
		t.socketRows++
		t.pending, t.hasPending = s, true
		return
	case kind == parser.OtherSocket:
		t.socketRows++
	case strings.TrimSpace(line) != "":
		t.otherLines++
	}
	t.flush()
}

// flush adds the row held back, if any.
func (t *table) flush() {
	if t.hasPending {
		t.add(t.pending)
		t.hasPending = false
	}
}

// check says why the command's output cannot be trusted, if it cannot,
// once the last row is added.
func (t *table) check(out runner.Output) error {
	t.flush()
	// One line misread could be a connection missed: a count that may be
	// wrong is not reported.
	if t.unreadable > 0 {
		return fmt.Errorf("printed %d lines that are not ss or netstat socket rows (of %d), first %q: %v",
			t.unreadable, out.Lines, say.Clip(t.firstUnreadable, 120), t.firstErr)
	}
	if t.socketRows == 0 && len(out.Stderr) > 0 {
		return fmt.Errorf("printed no socket rows and wrote to stderr: %s", strings.Join(out.Stderr, "; "))
	}
	if t.socketRows == 0 && t.otherLines > 0 {
		return fmt.Errorf("printed %d lines but no socket rows: is the socket table readable here (netstat needs /proc/net)?", t.otherLines)
	}
	return nil
}

// impliedState is the state of rows that a --command's ss prints without a
// State column: it drops the column when its filter names exactly one state.
func impliedState(argv []string) socket.State {
	found := socket.StateUnknown
	n := 0
	for i := 0; i+1 < len(argv); i++ {
		if argv[i] != "state" {
			continue
		}
		if s, ok := socket.ParseState(argv[i+1]); ok {
			found = s
			n++
		}
	}
	if n != 1 {
		return socket.StateUnknown
	}
	return found
}
