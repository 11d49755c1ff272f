package collector

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/alecthomas/kingpin/v2"

	"github.com/consul-conn-exporter/consul-conn-exporter/internal/events"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/kernel"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/table/socket"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/wholenumber"
)

// Flags are what to count.
type Flags struct {
	ports, rpcPorts  []string
	grpcPorts        []string
	states           string
	topClients       int
	processes        bool
	processesBPF     bool
	processesTimeout time.Duration
	sampleInterval   time.Duration
	peakWindow       time.Duration
	whatIf           []string
}

// AddFlags declares the collection's flags on app.
func AddFlags(app *kingpin.Application) *Flags {
	f := &Flags{}
	app.Flag("port", "Consul HTTP port whose server-side connections are counted; repeat for several (e.g. 8501 for HTTPS).").
		Default("8500").StringsVar(&f.ports)
	app.Flag("rpc.port", "Consul server RPC port (8300), a limiter group of its own; repeatable, none by default.").
		StringsVar(&f.rpcPorts)
	app.Flag("grpc.port", "Consul external gRPC port (8502; 8503 for TLS), each a limiter group of its own; repeatable.").
		StringsVar(&f.grpcPorts)
	app.Flag("states", "Comma-separated TCP states that hold one of Consul's per-client slots.").
		Default("established,close-wait").StringVar(&f.states)
	app.Flag("clients.top", "How many of the busiest clients (and local programs) get a sample of their own (0: none).").
		Default("10").SetValue(wholenumber.Of(&f.topClients))
	app.Flag("clients.processes", "Also count which local programs hold the connections (other users' programs: root, or the capabilities of docs/privileges.md).").
		BoolVar(&f.processes)
	app.Flag("clients.processes.bpf", "Name the programs from the kernel's list of every process's open files, read by a kernel program in one pass (needs root, or CAP_BPF and CAP_PERFMON, to load it at start; Linux 5.8 with BTF); without it, or where it cannot be loaded, the exporter walks /proc, a link per open file.").
		Default("true").BoolVar(&f.processesBPF)
	app.Flag("clients.processes.timeout", "Give up naming the programs after this long: the counts are written without them.").
		Default("5s").DurationVar(&f.processesTimeout)
	app.Flag("sample.interval", "Between collections, read the socket table this often for the peaks (0: no sampling); with ss or netstat each sample runs it, with --source netlink it is cheap.").
		Default("1s").DurationVar(&f.sampleInterval)
	app.Flag("whatif.limit", "A limit not set yet, GROUP=N (http=100, rpc=80, grpc=50): count the connections it would refuse, per client; repeatable.").
		PlaceHolder("G=N").StringsVar(&f.whatIf)
	app.Flag("peak.window", "The peaks cover the samples of this sliding window, so that every scraper, and a textfile written every --interval, sees a burst shorter than the interval.").
		Default("1m").DurationVar(&f.peakWindow)
	return f
}

// Config checks the flags and says what to count.
func (f *Flags) Config() (Config, error) {
	config := Config{TopClients: f.topClients, Processes: f.processes, ProcessesFromKernel: f.processesBPF, ProcDir: "/proc", ProcessesTimeout: f.processesTimeout,
		SampleInterval: f.sampleInterval, PeakWindow: f.peakWindow}
	switch {
	case f.sampleInterval != 0 && f.sampleInterval < 100*time.Millisecond:
		return config, errors.New("--sample.interval must be 0 (no sampling) or 100ms or more")
	case f.sampleInterval > 0 && f.peakWindow < f.sampleInterval:
		return config, errors.New("--peak.window must be at least --sample.interval")
	case f.sampleInterval > 0 && f.peakWindow/f.sampleInterval > 100_000:
		return config, errors.New("--peak.window must hold at most 100,000 samples of --sample.interval")
	}
	if f.processesTimeout <= 0 {
		return config, errors.New("--clients.processes.timeout must be positive")
	}
	httpPorts, err := parsePorts("--port", f.ports)
	if err != nil {
		return config, err
	}
	rpcPorts, err := parsePorts("--rpc.port", f.rpcPorts)
	if err != nil {
		return config, err
	}
	grpcPorts, err := parsePorts("--grpc.port", f.grpcPorts)
	if err != nil {
		return config, err
	}
	given := map[uint16]string{}
	for _, flag := range []struct {
		name  string
		ports []uint16
	}{{"--port", httpPorts}, {"--rpc.port", rpcPorts}, {"--grpc.port", grpcPorts}} {
		for _, p := range flag.ports {
			if other, ok := given[p]; ok {
				return config, fmt.Errorf("port %d is in both %s and %s: no two of Consul's limiters share a port", p, other, flag.name)
			}
			given[p] = flag.name
		}
	}
	config.Groups = []Group{{Limiter: HTTP, Ports: httpPorts}}
	if len(rpcPorts) > 0 {
		config.Groups = append(config.Groups, Group{Limiter: RPC, Ports: rpcPorts})
	}
	for _, p := range grpcPorts {
		config.Groups = append(config.Groups, Group{Limiter: GRPC, Ports: []uint16{p}})
	}
	if len(config.Groups) > kernel.MaxGroups {
		return config, fmt.Errorf("--grpc.port: at most %d limiter groups in all, one per gRPC port besides HTTP's and RPC's (%d given)", kernel.MaxGroups, len(config.Groups))
	}
	for _, word := range strings.Split(f.states, ",") {
		s, ok := socket.ParseState(strings.TrimSpace(word))
		if !ok {
			return config, fmt.Errorf("--states: unknown TCP state %q (use ss names, e.g. established,close-wait)", word)
		}
		// A listening socket is no connection, and Consul has let go of a
		// TIME-WAIT one: neither holds a per-client slot.
		if s == socket.StateListen || s == socket.StateTimeWait || s == socket.StateClose {
			return config, fmt.Errorf("--states: %s sockets never count toward Consul's limit", s)
		}
		if !slices.Contains(config.States, s) {
			config.States = append(config.States, s)
		}
	}
	if f.topClients < 0 {
		return config, errors.New("--clients.top must be 0 or more")
	}
	for _, word := range f.whatIf {
		if err := config.addWhatIf(word); err != nil {
			return config, err
		}
	}
	return config, nil
}

// maxWhatIf is how many limits not set yet a group can be judged against:
// the kernel's events judge as many at each open.
const maxWhatIf = events.WhatIfLimits

// addWhatIf adds a candidate limit, GROUP=N, to its groups: every gRPC
// port's for grpc.
func (c *Config) addWhatIf(word string) error {
	name, number, _ := strings.Cut(word, "=")
	n, err := strconv.Atoi(number)
	if err != nil || n < 1 {
		return fmt.Errorf("--whatif.limit %s: want GROUP=N, N a limit of 1 or more (http=100)", word)
	}
	found := false
	for i, g := range c.Groups {
		if g.Limiter.Name != name {
			continue
		}
		found = true
		if slices.Contains(g.WhatIf, n) {
			continue
		}
		if len(g.WhatIf) == maxWhatIf {
			return fmt.Errorf("--whatif.limit %s: at most %d limits a group", word, maxWhatIf)
		}
		c.Groups[i].WhatIf = append(c.Groups[i].WhatIf, n)
	}
	switch {
	case found:
		return nil
	case name == RPC.Name:
		return fmt.Errorf("--whatif.limit %s: no RPC group: give its ports with --rpc.port", word)
	case name == GRPC.Name:
		return fmt.Errorf("--whatif.limit %s: no gRPC group: give its ports with --grpc.port", word)
	}
	return fmt.Errorf("--whatif.limit %s: no group %q (http, rpc, grpc)", word, name)
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
