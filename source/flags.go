package source

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/alecthomas/kingpin/v2"

	"github.com/consul-conn-exporter/consul-conn-exporter/runner"
	"github.com/consul-conn-exporter/consul-conn-exporter/sockdiag"
)

// Flags say where the table comes from.
type Flags struct {
	source         string
	sourceSet      bool
	command        string
	commandTimeout time.Duration
}

// AddFlags declares the source's flags on app.
func AddFlags(app *kingpin.Application) *Flags {
	f := &Flags{}
	source := app.Flag("source", "Where the sockets come from: ss (netstat where ss is missing, the built-in netlink reader where neither is), netstat, netlink (the kernel's socket table, read directly), or command (--command).").
		Default("ss")
	source.IsSetByUser(&f.sourceSet)
	source.EnumVar(&f.source, "ss", "netstat", "netlink", "command")
	app.Flag("command", "Command that prints the socket table, instead of ss (or netstat); split like a shell would, run without one.").
		StringVar(&f.command)
	app.Flag("command.timeout", "Kill the command, and fail the collection, after this long.").
		Default("10s").DurationVar(&f.commandTimeout)
	return f
}

// ErrNoTool is no program to print the socket table with.
var ErrNoTool = errors.New("no socket table tool")

// New is the source the flags name, for want. Where no tool can print the
// table, the error is ErrNoTool and the source is one whose every read
// fails with it: a collection that cannot count.
func (f *Flags) New(want Want, logger *slog.Logger) (Source, error) {
	if f.commandTimeout <= 0 {
		return nil, errors.New("--command.timeout must be positive")
	}
	netlink := func() (Source, error) {
		return sockdiag.New(want.Ports, want.ClientPorts, want.States, f.commandTimeout), nil
	}
	switch {
	case f.command != "" && f.sourceSet && f.source != "command":
		return nil, fmt.Errorf("--command goes with --source command, not --source %s", f.source)
	case f.command != "":
		r, err := runner.Parse(f.command, f.commandTimeout)
		if err != nil {
			return nil, fmt.Errorf("--command: %w", err)
		}
		return NewCommand(r, impliedState(r.Argv()), want.processes(), logger), nil
	case f.source == "command":
		return nil, errors.New("--source command needs --command")
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
