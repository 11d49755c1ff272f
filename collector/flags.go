package collector

import (
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/alecthomas/kingpin/v2"

	"github.com/consul-conn-exporter/consul-conn-exporter/parser"
	"github.com/consul-conn-exporter/consul-conn-exporter/runner"
	"github.com/consul-conn-exporter/consul-conn-exporter/sockdiag"
)

// Flags are what to count and where the table comes from.
type Flags struct {
	ports, rpcPorts []string
	states          string
	topClients      int
	processes       bool
	source          string
	sourceSet       bool
	command         string
	commandTimeout  time.Duration
}

// AddFlags declares the collection's flags on app.
func AddFlags(app *kingpin.Application) *Flags {
	f := &Flags{}
	app.Flag("port", "Consul HTTP port whose server-side connections are counted; repeat for several (e.g. 8501 for HTTPS).").
		Default("8500").StringsVar(&f.ports)
	app.Flag("rpc.port", "Consul server RPC port (8300 on servers), counted as a group of its own against rpc_max_conns_per_client; repeatable, none by default.").
		StringsVar(&f.rpcPorts)
	app.Flag("states", "Comma-separated TCP states that hold one of Consul's per-client slots.").
		Default("established,close-wait").StringVar(&f.states)
	app.Flag("clients.top", "How many of the busiest clients (and local programs) get a sample of their own (0: none).").
		Default("10").IntVar(&f.topClients)
	app.Flag("clients.processes", "Also count which local programs hold the HTTP connections (needs root or CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH to see other users' programs).").
		BoolVar(&f.processes)
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

// Config checks the flags and says what to count.
func (f *Flags) Config() (Config, error) {
	config := Config{TopClients: f.topClients, Processes: f.processes}
	httpPorts, err := parsePorts("--port", f.ports)
	if err != nil {
		return config, err
	}
	rpcPorts, err := parsePorts("--rpc.port", f.rpcPorts)
	if err != nil {
		return config, err
	}
	for _, p := range rpcPorts {
		if slices.Contains(httpPorts, p) {
			return config, fmt.Errorf("port %d is in both --port and --rpc.port: Consul's HTTP and RPC limiters never share a port", p)
		}
	}
	config.Groups = []Group{{Name: HTTP, Ports: httpPorts}}
	if len(rpcPorts) > 0 {
		config.Groups = append(config.Groups, Group{Name: RPC, Ports: rpcPorts})
	}
	for _, word := range strings.Split(f.states, ",") {
		s, ok := parser.ParseState(strings.TrimSpace(word))
		if !ok {
			return config, fmt.Errorf("--states: unknown TCP state %q (use ss names, e.g. established,close-wait)", word)
		}
		// A listening socket is no connection, and Consul has let go of a
		// TIME-WAIT one: neither holds a per-client slot.
		if s == parser.StateListen || s == parser.StateTimeWait || s == parser.StateClose {
			return config, fmt.Errorf("--states: %s sockets never count toward Consul's limit", s)
		}
		if !slices.Contains(config.States, s) {
			config.States = append(config.States, s)
		}
	}
	if f.topClients < 0 {
		return config, errors.New("--clients.top must be 0 or more")
	}
	if f.commandTimeout <= 0 {
		return config, errors.New("--command.timeout must be positive")
	}
	return config, nil
}

func parsePorts(flag string, words []string) ([]uint16, error) {
	var ports []uint16
	for _, word := range words {
		n, err := strconv.ParseUint(word, 10, 16)
		if err != nil || n == 0 {
			return nil, fmt.Errorf("%s %s: not a TCP port (1-65535)", flag, word)
		}
		if p := uint16(n); !slices.Contains(ports, p) {
			ports = append(ports, p)
		}
	}
	return ports, nil
}

// ErrNoTool is no program to print the socket table with.
var ErrNoTool = errors.New("no socket table tool")

// Source is where config's sockets come from, as the flags say.
func (f *Flags) Source(config Config, logger *slog.Logger) (Source, error) {
	command := func(r *runner.Runner) Source { return NewCommand(r, config.Processes, logger) }
	netlink := func() (Source, error) {
		if config.Processes {
			return nil, errors.New("--clients.processes needs ss or netstat: the netlink reader cannot tell which program holds a socket (that takes /proc)")
		}
		return sockdiag.New(config.Ports(), config.States, f.commandTimeout), nil
	}
	switch {
	case f.command != "" && f.sourceSet && f.source != "command":
		return nil, fmt.Errorf("--command goes with --source command, not --source %s", f.source)
	case f.command != "":
		r, err := runner.Parse(f.command, f.commandTimeout)
		if err != nil {
			return nil, fmt.Errorf("--command: %w", err)
		}
		return command(r), nil
	case f.source == "command":
		return nil, errors.New("--source command needs --command")
	case f.source == "netlink":
		return netlink()
	case f.source == "netstat":
		r, err := runner.Netstat(config.Processes, f.commandTimeout)
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrNoTool, err)
		}
		return command(r), nil
	}
	var clientPorts []uint16
	if config.Processes {
		clientPorts = config.GroupPorts(HTTP)
	}
	stateNames := make([]string, len(config.States))
	for i, s := range config.States {
		stateNames[i] = s.String()
	}
	if r, err := runner.SS(config.Ports(), clientPorts, stateNames, f.commandTimeout); err == nil {
		return command(r), nil
	}
	if r, err := runner.Netstat(config.Processes, f.commandTimeout); err == nil {
		return command(r), nil
	}
	if config.Processes {
		return nil, fmt.Errorf("%w: neither ss nor netstat is in PATH, and --clients.processes needs one: install iproute2 (ss) or net-tools (netstat)", ErrNoTool)
	}
	logger.Info("neither ss nor netstat is in PATH: reading the kernel's socket table directly (--source netlink)")
	return netlink()
}
