// Package refusals counts, in the kernel, the connections the agent refuses
// past its per-client limits, per client, as they happen. Consul keeps no
// count of its own.
//
// The kernel program is refusals.bpf.c (compiled by bpf2go; the rule is
// there and in docs/refusals.md): a refusal is a connection of a watched
// port in the exporter's network namespace that the agent closed having
// read nothing of it, and that was then reset, counted once by its socket
// cookie.
package refusals

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/consul-conn-exporter/consul-conn-exporter/internal/loaderr"
	"github.com/consul-conn-exporter/consul-conn-exporter/tally"
)

// pendingFor is how long after the agent's close a refused connection can
// still be reset: its socket lingers in FIN-WAIT (tcp_fin_timeout, 60 s by
// default, with retransmissions of the FIN) and then in TIME-WAIT (60 s). A
// verdict older than that is of a connection that ended without a reset
// (a refused client that never sent a byte): swept.
const pendingFor = 5 * time.Minute

// ErrUnavailable is a kernel or a host that cannot count refusals: the
// error says what is missing and how to get it.
var ErrUnavailable = errors.New("cannot count refusals")

// Counter is the attached program and its maps.
type Counter struct {
	objs   programObjects
	links  []link.Link
	groups int
}

// Counts are the maps of the events' programs (--source events) that say
// what each client holds as it happens: shared, each refusal is judged by
// the limiter's own rule too.
type Counts struct {
	// Sockets is their socket storage; Clients their per-client state;
	// Limits each group's limit as the exporter last read it.
	Sockets, Clients, Limits *ebpf.Map
}

// Load attaches the program that counts the refusals of each group's ports
// (groups[i] are group i's ports) in the exporter's network namespace;
// with counts (nil for none), each refusal made while its client held fewer
// than the limit besides it is counted apart. It needs CAP_BPF and
// CAP_PERFMON (or root), and a kernel with BTF; kernel is the kernel's
// types, read once for every program the exporter loads.
func Load(kernel *btf.Cache, groups [][]uint16, counts *Counts) (*Counter, error) {
	netns, err := Namespace()
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	spec, err := loadProgram()
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	spec.Maps[programMapTotals].MaxEntries = uint32(len(groups))
	spec.Maps[programMapLimits].MaxEntries = uint32(len(groups))
	options := &ebpf.CollectionOptions{Cache: kernel}
	withCounts := uint32(0)
	if counts != nil {
		withCounts = 1
		options.MapReplacements = map[string]*ebpf.Map{programMapSockets: counts.Sockets, programMapClientsHeld: counts.Clients, programMapLimits: counts.Limits}
		spec.Maps[programMapClientsHeld].MaxEntries = counts.Clients.MaxEntries() // theirs, as sized
	} else {
		spec.Maps[programMapClientsHeld].MaxEntries = 1 // a stand-in, never read
	}
	for name, value := range map[string]any{programVarNetnsInum: netns, programVarWithCounts: withCounts, programVarPortGroups: PortGroups(groups)} {
		if err := spec.Variables[name].Set(value); err != nil {
			return nil, fmt.Errorf("%w: %v", ErrUnavailable, err)
		}
	}
	c := &Counter{groups: len(groups)}
	if err := spec.LoadAndAssign(&c.objs, options); err != nil {
		return nil, explain(err)
	}
	if err := c.attach(); err != nil {
		c.Close()
		return nil, explain(err)
	}
	return c, nil
}

// attach attaches the programs: the one that decides at the agent's close
// first, so that no reset comes before its verdict could have.
func (c *Counter) attach() error {
	for _, prog := range []*ebpf.Program{c.objs.AgentClosed, c.objs.AgentReset} {
		l, err := link.AttachTracing(link.TracingOptions{Program: prog})
		if err != nil {
			return err
		}
		c.links = append(c.links, l)
	}
	return nil
}

// PortGroups is port_groups of bpf/counts.h, which both programs read:
// each port, by its number, to 1 + its group (groups[i] are group i's
// ports), 0 for a port not watched. A limiter group is one of a few.
func PortGroups(groups [][]uint16) *[65536]uint8 {
	var of [65536]uint8
	for group, ports := range groups[:min(len(groups), 255)] {
		for _, p := range ports {
			of[p] = uint8(group) + 1
		}
	}
	return &of
}

// Namespace is the exporter's network namespace, as the kernel numbers it
// (the inode of /proc/self/ns/net): the one whose sockets count.
func Namespace() (uint32, error) {
	var st unix.Stat_t
	if err := unix.Stat("/proc/thread-self/ns/net", &st); err != nil {
		return 0, fmt.Errorf("reading the exporter's network namespace: %w", err)
	}
	return uint32(st.Ino), nil
}

// explain says what a refusal to load means and how to grant what lacks.
func explain(err error) error {
	return loaderr.Explain(err, ErrUnavailable, "--refusals", "Linux 5.12 or later")
}

// Close detaches the programs.
func (c *Counter) Close() {
	for _, l := range c.links {
		l.Close()
	}
	c.objs.Close()
}

// Check reads the maps as the exporter will once it has dropped its
// capabilities: it says whether the kernel lets it.
func (c *Counter) Check() error {
	var t programTotal
	if err := c.objs.Totals.Lookup(uint32(0), &t); err != nil {
		return fmt.Errorf("%w: %w", ErrUnavailable, loaderr.Unprivileged(err))
	}
	return nil
}

// Group is one group's refusals since the program was attached.
type Group struct {
	// Total is exact, whatever the map of clients evicted.
	Total uint64
	// Untracked are the agent's closes of connections it had read nothing
	// of that the kernel's map of pending verdicts was too full to take:
	// each may have been a refusal, not counted. 0 unless more than 65,536
	// such closes were pending at once.
	Untracked uint64
	// BelowLimit are the refusals made while the client held fewer than
	// the limit besides the refused connection, as the events counted it
	// (with Load's counts; else 0).
	BelowLimit uint64
	// Top are the clients with the most refusals, in tally.Compare's
	// order, at most top.
	Top []tally.ClientCount
}

// Snapshot is the refusals counted since the programs were attached.
type Snapshot struct {
	// Groups are each group's, as Load was given them.
	Groups []Group
	// Missed are the changes of a socket, and the resets, the kernel
	// skipped the programs for (their recursion guard: one in an interrupt
	// of another's on the same CPU): each may have been a refusal not
	// counted.
	Missed uint64
}

// Snapshot reads each group's refusals, with its top busiest clients
// (addresses unmapped, as the connection counts have them), and sweeps the
// verdicts no reset can come for any more.
func (c *Counter) Snapshot(top int) (Snapshot, error) {
	missed, err := c.missed()
	if err != nil {
		return Snapshot{}, err
	}
	groups, err := c.groupsRead(top)
	if err != nil {
		return Snapshot{}, err
	}
	return Snapshot{Groups: groups, Missed: missed}, c.sweep()
}

// missed sums the programs' recursion misses.
func (c *Counter) missed() (uint64, error) {
	var n uint64
	for _, p := range []*ebpf.Program{c.objs.AgentClosed, c.objs.AgentReset} {
		stats, err := p.Stats()
		if err != nil {
			return 0, fmt.Errorf("reading the refusals' programs' statistics: %w", err)
		}
		n += stats.RecursionMisses
	}
	return n, nil
}

// groupsRead reads each group's refusals, with its top busiest clients.
func (c *Counter) groupsRead(top int) ([]Group, error) {
	groups := make([]Group, c.groups)
	for g := range groups {
		var t programTotal
		if err := c.objs.Totals.Lookup(uint32(g), &t); err != nil {
			return nil, fmt.Errorf("reading the refusals: %w", err)
		}
		groups[g].Total, groups[g].Untracked, groups[g].BelowLimit = t.Refused, t.Untracked, t.BelowLimit
	}
	// Each key is one client of one group, so the busiest are kept as they
	// come: memory stays that of top clients, however full the map.
	var (
		key   programClientKey
		count uint64
	)
	it := c.objs.Clients.Iterate()
	for it.Next(&key, &count) {
		if int(key.Group) >= len(groups) {
			continue
		}
		client := tally.ClientCount{Client: netip.AddrFrom16(key.Client).Unmap(), Count: int(count)}
		groups[key.Group].Top = tally.Keep(groups[key.Group].Top, client, top)
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("reading the refusals: %w", err)
	}
	return groups, nil
}

// sweep deletes the verdicts older than pendingFor. Those pending are few:
// a refused connection's reset follows its close within a round trip.
func (c *Counter) sweep() error {
	var now unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &now); err != nil {
		return fmt.Errorf("reading the clock: %w", err)
	}
	var (
		cookie uint64
		v      programVerdict
		old    []uint64
	)
	it := c.objs.Verdicts.Iterate()
	for it.Next(&cookie, &v) {
		if time.Duration(now.Nano()-int64(v.ClosedNs)) > pendingFor {
			old = append(old, cookie)
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("reading the refusals' pending verdicts: %w", err)
	}
	for _, cookie := range old {
		// Gone already if its reset came meanwhile.
		if err := c.objs.Verdicts.Delete(cookie); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("sweeping the refusals' pending verdicts: %w", err)
		}
	}
	return nil
}
