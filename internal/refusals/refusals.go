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
	"slices"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/consul-conn-exporter/consul-conn-exporter/internal/kernel"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/tally"
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
	// shared: the agent's users are the events' map, which they keep.
	shared bool

	// The refusals by the limiter's rule that a read of the agent's limit
	// confirmed, per group, and per client (up to maxConfirmedClients),
	// which the kernel's counts lack; and those a read did not confirm,
	// which are counted as untracked.
	mu          sync.Mutex
	confirmed   []uint64
	unconfirmed []uint64
	byClient    map[programClientKey]uint64
	tls         []uint16
}

// Load attaches the program that counts the refusals of each group's ports
// (groups[i] are group i's ports) in the exporter's network namespace, of
// the connections the agent's listeners accept (users, as Trust takes
// them, where counts are not given); with counts (nil for none), each
// refusal made while its client held fewer than the limit besides it is
// counted apart, and the limiter's rule judges the agent's TLS ports. It
// needs CAP_BPF and CAP_PERFMON (or root), and a kernel with BTF; types are
// the kernel's types, read once for every program the exporter loads.
func Load(types *btf.Cache, groups [][]uint16, counts *kernel.SharedMaps, users map[uint16]uint32) (*Counter, error) {
	netns, err := kernel.Namespace()
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	spec, err := loadProgram()
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	ports := 0
	for _, g := range groups {
		ports += len(g)
	}
	spec.Maps[programMapTotals].MaxEntries = uint32(len(groups))
	spec.Maps[programMapLimits].MaxEntries = uint32(len(groups))
	spec.Maps[programMapAgentUsers].MaxEntries = uint32(max(1, ports))
	spec.Maps[programMapTlsPorts].MaxEntries = uint32(max(1, ports))
	options := &ebpf.CollectionOptions{Cache: types}
	withCounts := uint32(0)
	if counts != nil {
		withCounts = 1
		options.MapReplacements = map[string]*ebpf.Map{programMapSockets: counts.Sockets, programMapClientsHeld: counts.Clients,
			programMapLimits: counts.Limits, programMapAgentUsers: counts.AgentUsers}
		spec.Maps[programMapClientsHeld].MaxEntries = counts.Clients.MaxEntries() // theirs, as sized
		spec.Maps[programMapAgentUsers].MaxEntries = counts.AgentUsers.MaxEntries()
	} else {
		spec.Maps[programMapClientsHeld].MaxEntries = 1 // a stand-in, never read
	}
	for name, value := range map[string]any{programVarNetnsInum: netns, programVarWithCounts: withCounts, programVarPortGroups: kernel.PortGroups(groups)} {
		if err := spec.Variables[name].Set(value); err != nil {
			return nil, fmt.Errorf("%w: %v", ErrUnavailable, err)
		}
	}
	c := &Counter{groups: len(groups), shared: counts != nil, confirmed: make([]uint64, len(groups)), unconfirmed: make([]uint64, len(groups)),
		byClient: map[programClientKey]uint64{}}
	if err := spec.LoadAndAssign(&c.objs, options); err != nil {
		return nil, explain(err)
	}
	if err := c.Trust(users); err != nil {
		c.Close()
		return nil, fmt.Errorf("%w: %v", ErrUnavailable, err)
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

// Trust has the programs judge only the connections accepted by the
// agent's listeners: users are the agent's user on each watched port (as
// events.Counter.Trust takes them). With the events' maps shared, the
// events keep them, and this does nothing.
func (c *Counter) Trust(users map[uint16]uint32) error {
	if c.shared {
		return nil
	}
	_, err := kernel.WriteUsers(c.objs.AgentUsers, users)
	return err
}

// explain says what a refusal to load means and how to grant what lacks.
func explain(err error) error {
	return kernel.Explain(err, ErrUnavailable, "--refusals", "Linux 5.12 or later")
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
		return fmt.Errorf("%w: %w", ErrUnavailable, kernel.Unprivileged(err))
	}
	return nil
}

// Group is one group's refusals since the program was attached.
type Group struct {
	// Total is exact, whatever the map of clients evicted.
	Total uint64
	// Untracked are the agent's closes that may have been refusals, or
	// not, counted for no one (docs/refusals.md): those a second or more
	// after the accept, those by a listener that could not be told the
	// agent's, those the full maps could not take, and, by the limiter's
	// rule, those whose client let go of a slot meanwhile or judged
	// against a limit the agent changed before a read confirmed it.
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
	// Pending are the refusals by the limiter's rule that wait for a read
	// of the agent's limit after them, to be counted or not.
	Pending int
}

// Agent is what the exporter last read of the agent, by which the
// refusals of the limiter's rule are judged and confirmed: each group's
// limit as read; the agent's TLS ports among the watched ones (none where
// the limit is not read from the agent: the rule then judges nothing); and
// when the read that said so began (CLOCK_MONOTONIC, ns).
type Agent struct {
	Limits   []int
	TLSPorts []uint16
	ReadAt   uint64
}

// Snapshot reads each group's refusals, with its top busiest clients
// (addresses unmapped, as the connection counts have them), counts the
// refusals by the limiter's rule that agent's read confirms (judged before
// it began, against the limit it read), and sweeps the verdicts no reset
// can come for any more.
func (c *Counter) Snapshot(top int, agent Agent) (Snapshot, error) {
	missed, err := c.missed()
	if err != nil {
		return Snapshot{}, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.judgeTLS(agent.TLSPorts); err != nil {
		return Snapshot{}, err
	}
	pending, err := c.confirm(agent)
	if err != nil {
		return Snapshot{}, err
	}
	groups, err := c.groupsRead(top)
	if err != nil {
		return Snapshot{}, err
	}
	return Snapshot{Groups: groups, Missed: missed, Pending: pending}, c.sweep()
}

// judgeTLS has the limiter's rule judge ports, where they changed.
func (c *Counter) judgeTLS(ports []uint16) error {
	if slices.Equal(ports, c.tls) {
		return nil
	}
	for _, p := range c.tls {
		if err := c.objs.TlsPorts.Delete(p); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("setting the agent's TLS ports in the kernel: %w", err)
		}
	}
	for _, p := range ports {
		if err := c.objs.TlsPorts.Put(p, uint8(1)); err != nil {
			return fmt.Errorf("setting the agent's TLS ports in the kernel: %w", err)
		}
	}
	c.tls = slices.Clone(ports)
	return nil
}

// maxConfirmedClients bounds the clients whose refusals by the limiter's
// rule are kept apart, as the kernel's map of clients is bounded: past it,
// a new client's are in the total alone.
const maxConfirmedClients = 65536

// confirm takes the suspects judged before agent's read began: counted
// where the limit they were judged against is the one read, else counted
// as untracked (the agent's limit changed: they may or may not have been
// refused). It returns how many wait for a later read.
func (c *Counter) confirm(agent Agent) (pending int, err error) {
	var (
		cookie  uint64
		s       programSuspect
		cookies []uint64
	)
	it := c.objs.Suspects.Iterate()
	for it.Next(&cookie, &s) {
		if s.JudgedNs >= agent.ReadAt {
			pending++
			continue
		}
		cookies = append(cookies, cookie)
	}
	if err := it.Err(); err != nil {
		return 0, fmt.Errorf("reading the refusals by the limiter's rule: %w", err)
	}
	for _, cookie := range cookies {
		if err := c.objs.Suspects.LookupAndDelete(cookie, &s); err != nil {
			if errors.Is(err, ebpf.ErrKeyNotExist) {
				continue
			}
			return pending, fmt.Errorf("taking the refusals by the limiter's rule: %w", err)
		}
		g := int(s.Group)
		if g >= c.groups {
			continue
		}
		if g >= len(agent.Limits) || agent.Limits[g] <= 0 || uint32(agent.Limits[g]) != s.Limit {
			c.unconfirmed[g]++
			continue
		}
		c.confirmed[g]++
		key := programClientKey{Group: s.Group, Client: s.Client}
		if _, ok := c.byClient[key]; ok || len(c.byClient) < maxConfirmedClients {
			c.byClient[key]++
		}
	}
	return pending, nil
}

// missed sums the programs' recursion misses.
func (c *Counter) missed() (uint64, error) {
	return kernel.RecursionMisses(c.objs.AgentClosed, c.objs.AgentReset)
}

// groupsRead reads each group's refusals, with its top busiest clients:
// the kernel's counts, and the refusals by the limiter's rule confirmed.
func (c *Counter) groupsRead(top int) ([]Group, error) {
	groups := make([]Group, c.groups)
	for g := range groups {
		var t programTotal
		if err := c.objs.Totals.Lookup(uint32(g), &t); err != nil {
			return nil, fmt.Errorf("reading the refusals: %w", err)
		}
		groups[g].Total, groups[g].Untracked, groups[g].BelowLimit = t.Refused+c.confirmed[g], t.Untracked+c.unconfirmed[g], t.BelowLimit
	}
	// Each key is one client of one group, so the busiest are kept as they
	// come: memory stays that of top clients, however full the map.
	var (
		key   programClientKey
		count uint64
	)
	seen := map[programClientKey]bool{}
	keep := func(key programClientKey, n uint64) {
		if int(key.Group) < len(groups) {
			client := tally.ClientCount{Client: netip.AddrFrom16(key.Client).Unmap(), Count: int(n)}
			groups[key.Group].Top = tally.Keep(groups[key.Group].Top, client, top)
		}
	}
	it := c.objs.Clients.Iterate()
	for it.Next(&key, &count) {
		if n, ok := c.byClient[key]; ok {
			count += n
			seen[key] = true
		}
		keep(key, count)
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("reading the refusals: %w", err)
	}
	for key, n := range c.byClient {
		if !seen[key] {
			keep(key, n)
		}
	}
	return groups, nil
}

// sweep deletes the verdicts, and the suspects, older than pendingFor.
// Those pending are few: a refused connection's reset follows its close
// within a round trip, and a read of the agent is asked for as soon as a
// suspect waits for one.
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
	// Refusals by the limiter's rule no read of the agent confirmed for as
	// long (the agent unreachable): may have been refusals.
	var (
		s     programSuspect
		stale []uint64
	)
	suspects := c.objs.Suspects.Iterate()
	for suspects.Next(&cookie, &s) {
		if time.Duration(now.Nano()-int64(s.JudgedNs)) > pendingFor {
			stale = append(stale, cookie)
		}
	}
	if err := suspects.Err(); err != nil {
		return fmt.Errorf("reading the refusals by the limiter's rule: %w", err)
	}
	for _, cookie := range stale {
		if err := c.objs.Suspects.LookupAndDelete(cookie, &s); err == nil && int(s.Group) < c.groups {
			c.unconfirmed[s.Group]++
		}
	}
	return nil
}
