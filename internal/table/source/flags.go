package source

import (
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/alecthomas/kingpin/v2"
	"kernel.org/pub/linux/libs/security/libcap/cap"

	"github.com/consul-conn-exporter/consul-conn-exporter/internal/capabilities"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/table/runner"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/table/sockdiag"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/table/socket"
)

// Flags say where the table comes from.
type Flags struct {
	source         string
	sourceSet      bool
	command        string
	commandTimeout time.Duration
	commandCaps    []string
}

// AddFlags declares the source's flags on app.
func AddFlags(app *kingpin.Application) *Flags {
	f := &Flags{}
	source := app.Flag("source", "Where the sockets come from: ss (else netstat, else netlink), netstat, netlink (the kernel's table, read directly), command (--command), or events (the kernel's counts, with churn: eBPF, CAP_BPF and CAP_PERFMON at start, Linux 5.15 with BTF).").
		Default("ss")
	source.IsSetByUser(&f.sourceSet)
	source.EnumVar(&f.source, "ss", "netstat", "netlink", "command", "events")
	app.Flag("command", "Command that prints the socket table, instead of ss (or netstat); split like a shell would, run without one.").
		StringVar(&f.command)
	app.Flag("command.timeout", "Kill the command, and fail the collection, after this long.").
		Default("10s").DurationVar(&f.commandTimeout)
	app.Flag("command.capabilities", "A capability --command needs (e.g. CAP_SYS_ADMIN for ip netns exec and nsenter); repeatable. The exporter keeps it, and gives it to the command; every other capability is dropped at start.").
		PlaceHolder("CAP_SYS_ADMIN").StringsVar(&f.commandCaps)
	return f
}

// OwnNamespace is whether the table is the exporter's own network
// namespace's: not where a --command prints it (it may enter another).
func (f *Flags) OwnNamespace() bool { return f.command == "" }

// Events is whether the counts come from the kernel's events: loaded at
// start (events.Load), where New gives none.
func (f *Flags) Events() bool { return f.source == "events" }

// Timeout bounds each read of the table.
func (f *Flags) Timeout() time.Duration { return f.commandTimeout }

// Capabilities are the ones --command.capabilities names, for the
// exporter to keep for its command.
func (f *Flags) Capabilities() ([]cap.Value, error) {
	if len(f.commandCaps) > 0 && f.command == "" {
		return nil, errors.New("--command.capabilities goes with --command: ss and netstat need none")
	}
	keep, err := capabilities.Parse(f.commandCaps)
	if err != nil {
		return nil, fmt.Errorf("--command.capabilities: %w", err)
	}
	return keep, nil
}

// ErrNoTool is no program to print the socket table with.
var ErrNoTool = errors.New("no socket table tool")

// Validate says what is wrong with the flags, for want.
func (f *Flags) Validate(want Want) error {
	_, err := f.commandRunner(want)
	return err
}

// commandRunner is the --command's runner, nil without one, or what is wrong
// with the flags.
func (f *Flags) commandRunner(want Want) (*runner.Runner, error) {
	switch {
	case f.commandTimeout <= 0:
		return nil, errors.New("--command.timeout must be positive")
	case f.command != "" && f.sourceSet && f.source != "command":
		return nil, fmt.Errorf("--command goes with --source command, not --source %s", f.source)
	case f.command == "" && f.source == "command":
		return nil, errors.New("--source command needs --command")
	case f.source == "events" && want.processes():
		return nil, errors.New("--clients.processes names programs from each socket's row: not with --source events, which keeps counts")
	case f.command == "":
		return nil, nil
	}
	r, err := runner.Parse(f.command, f.commandTimeout)
	if err != nil {
		return nil, fmt.Errorf("--command: %w", err)
	}
	return r, nil
}

// New is the source the flags name, for want; none with --source events
// (the kernel's events are loaded at start). Where no tool can print the
// table, the error is ErrNoTool and the source is one whose every read
// fails with it: a collection that cannot count.
func (f *Flags) New(want Want, logger *slog.Logger) (Source, error) {
	r, err := f.commandRunner(want)
	if err != nil {
		return nil, err
	}
	netlink := func() (Source, error) {
		states := want.States
		if want.processes() {
			// The client ends of half-closed connections too: the tallies
			// count only the states asked for.
			states = append(slices.Clone(states), socket.ClientEndStates...)
		}
		return sockdiag.New(want.Ports, want.ClientPorts, states, f.commandTimeout).WithUses(), nil
	}
	switch {
	case r != nil:
		c := NewCommand(r, impliedState(r.Argv()), want.processes(), logger)
		c.userCommand = true
		return c, nil
	case f.source == "events":
		return nil, errors.New("--source events: the kernel's events are loaded at start, not made here")
	case f.source == "netlink":
		return netlink()
	case f.source == "netstat":
		c, err := netstat(want, f.commandTimeout, logger)
		if err != nil {
			return noTool(err)
		}
		return c, nil
	}
	if c, err := ss(want, f.commandTimeout, logger); err == nil {
		return c, nil
	}
	if c, err := netstat(want, f.commandTimeout, logger); err == nil {
		return c, nil
	}
	logger.Info("neither ss nor netstat is in PATH: reading the kernel's socket table directly (--source netlink)")
	return netlink()
}
