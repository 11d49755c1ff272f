// Package events keeps, in the kernel, the count of the connections the
// agent holds open on the watched ports as they open and close, with how
// they opened and closed (churn per client, closes by how, lifetimes): a
// source whose read costs what the clients cost, not the connections.
//
// The kernel programs are events.bpf.c (compiled by bpf2go): one follows
// every change of a TCP socket's state, the other, a census of the socket
// table, counts what was open before it (the seed) and, on every audit,
// moves each count into a new generation, so that whatever a missed event
// left behind is found, reported as drift, and dropped. They are of two
// types only, a BTF tracepoint and a TCP iterator: some security policies
// refuse the others (map-element iterators, above all).
package events

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/consul-conn-exporter/consul-conn-exporter/internal/kernel"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/table/socket"
)

// ErrUnavailable is a kernel or a host that cannot keep the counts: the
// error says what is missing and how to get it.
var ErrUnavailable = errors.New("cannot count from the kernel's events")

// Counter is the attached programs and their maps.
type Counter struct {
	objs      programObjects
	links     []link.Link
	iterator  *link.Iter // the census
	groups    int
	portGroup map[uint16]int // each watched port's group
	whatIf    [][]int        // each group's limits not set yet, as the programs have them
	// usesErr says why no connection's use is known (nil where the reads
	// and sends are followed).
	usesErr error

	// mu makes a census and a read of the counts one at a time: during a
	// census the counts are in two generations.
	mu         sync.Mutex
	generation uint32
	epoch      uint32
	limits     []uint32 // per group, as last given to the kernel
	// judgeAgain: a limit changed, and no census has judged every client
	// against it yet.
	judgeAgain bool
	last       Census // the last audit's
	audits     uint64 // censuses since the seed
	missedAt   uint64 // the events the kernel skipped, at the last census
	// unfollowedAt are the connections the kernel's clients map was too
	// full to follow, at the last read that made room.
	unfollowedAt uint64
}

// Load attaches the programs that count the connections the agent's
// listeners accept on each group's ports (groups[i] are group i's ports;
// users the agent's user on each, as Trust takes them) in states, in the
// exporter's network namespace, in maps of keys keys each, then seeds the
// counts with a census of what is open already. It needs CAP_BPF and
// CAP_PERFMON (or root), and a kernel with BTF; types are the kernel's
// types, read once for every program the exporter loads.
//
// whatIf[i] are group i's limits not set yet (at most WhatIfLimits): each
// open while its client held one of them or more is counted as one it
// would have refused.
func Load(types *btf.Cache, groups [][]uint16, states []socket.State, keys int, users map[uint16]uint32, whatIf [][]int) (*Counter, error) {
	return load(types, groups, states, keys, users, whatIf, nil, followsData(types))
}

// WhatIfLimits is how many limits not set yet a group can be judged
// against (WHATIF_LIMITS, counts.h).
const WhatIfLimits = 4

// load is Load on a host whose security policy refuses what refusing does
// (the tests' stand-in for one; nil: the kernel's own policy alone), and
// whose kernel follows no read and send, for usesErr (nil: it does).
func load(types *btf.Cache, groups [][]uint16, states []socket.State, keys int, users map[uint16]uint32, whatIf [][]int, refusing func(*ebpf.CollectionSpec) error, usesErr error) (*Counter, error) {
	netns, err := kernel.Namespace()
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	spec, err := loadProgram()
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	var mask uint32
	for _, s := range states {
		mask |= 1 << s
	}
	bounds := make([]uint64, len(LifetimeBounds))
	for i, b := range LifetimeBounds {
		bounds[i] = uint64(b * 1e9)
	}
	// Epoch 0 is every peak's zero value: the first is 1.
	for name, value := range map[string]any{programVarNetnsInum: netns, programVarWatchedStates: mask,
		programVarPortGroups: kernel.PortGroups(groups), programVarLifetimeBoundsNs: bounds, programVarEpoch: uint32(1)} {
		if err := spec.Variables[name].Set(value); err != nil {
			return nil, fmt.Errorf("%w: %v", ErrUnavailable, err)
		}
	}
	spec.Maps[programMapTotals].MaxEntries = uint32(len(groups))
	spec.Maps[programMapLimits].MaxEntries = uint32(len(groups))
	spec.Maps[programMapGroups].MaxEntries = uint32(len(groups))
	spec.Maps[programMapConnections].MaxEntries = uint32(keys)
	spec.Maps[programMapClientsHeld].MaxEntries = uint32(keys)
	spec.Maps[programMapAgentUsers].MaxEntries = uint32(max(1, portCount(groups)))
	spec.Maps[programMapLongest].MaxEntries = uint32(len(groups) * useOps)
	spec.Maps[programMapWhatif].MaxEntries = uint32(len(groups))
	c := &Counter{groups: len(groups), epoch: 1, portGroup: map[uint16]int{}}
	for g, ports := range groups {
		for _, p := range ports {
			c.portGroup[p] = g
		}
	}
	c.usesErr = usesErr
	if c.usesErr == nil {
		for name, value := range map[string]any{programVarTickNs: tick(), programVarFollowData: uint8(1)} {
			if err := spec.Variables[name].Set(value); err != nil {
				return nil, fmt.Errorf("%w: %v", ErrUnavailable, err)
			}
		}
	}
	if refusing != nil {
		if err := refusing(spec); err != nil {
			return nil, explain(err)
		}
	}
	if err := c.loadPrograms(spec, types); err != nil {
		return nil, explain(err)
	}
	if _, err := kernel.WriteUsers(c.objs.AgentUsers, users); err != nil {
		c.Close()
		return nil, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	if err := c.judgeWhatIf(whatIf); err != nil {
		c.Close()
		return nil, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	if err := c.attach(); err != nil {
		c.Close()
		return nil, explain(err)
	}
	// The seed: after the events are followed, so that a connection
	// opening meanwhile is counted by one or the other, once.
	missed, err := c.missed()
	if err == nil {
		c.mu.Lock()
		_, err = c.census(missed)
		c.mu.Unlock()
	}
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	return c, nil
}

// useOps are the uses a connection's last data can say (OPS,
// counts.h): not known, silent, waiting, idle.
const useOps = 4

// followsData says why the kernel's reads and sends cannot be followed on
// this kernel; nil where they can.
func followsData(types *btf.Cache) error {
	spec, err := types.Kernel()
	if err == nil {
		_, err = spec.AnyTypeByName("btf_trace_sock_recv_length")
	}
	if err != nil {
		return errors.New("the kernel traces no socket's reads and sends (sock:sock_recv_length, Linux 6.3 and later): every connection's use is unknown with --source events")
	}
	return nil
}

// tick is the kernel's clock tick in ns, which the last data's times of a
// connection are counted in: its coarse clocks' resolution.
func tick() uint64 {
	var ts unix.Timespec
	if unix.ClockGetres(unix.CLOCK_MONOTONIC_COARSE, &ts) != nil {
		return 0
	}
	return uint64(ts.Nano())
}

// loadPrograms loads spec's programs and maps into c.objs: without the
// programs that follow the reads and sends where the kernel has none to
// follow.
func (c *Counter) loadPrograms(spec *ebpf.CollectionSpec, types *btf.Cache) error {
	opts := &ebpf.CollectionOptions{Cache: types}
	if c.usesErr == nil {
		return spec.LoadAndAssign(&c.objs, opts)
	}
	var counting struct {
		programMaps
		programVariables
		Changed *ebpf.Program `ebpf:"changed"`
		Census  *ebpf.Program `ebpf:"census"`
	}
	if err := spec.LoadAndAssign(&counting, opts); err != nil {
		return err
	}
	c.objs.programMaps, c.objs.programVariables = counting.programMaps, counting.programVariables
	c.objs.Changed, c.objs.Census = counting.Changed, counting.Census
	return nil
}

// judgeWhatIf gives the programs each group's limits not set yet.
func (c *Counter) judgeWhatIf(whatIf [][]int) error {
	c.whatIf = make([][]int, c.groups)
	for g := range min(len(whatIf), c.groups) {
		if len(whatIf[g]) > WhatIfLimits {
			return fmt.Errorf("at most %d limits not set yet a group, not %d", WhatIfLimits, len(whatIf[g]))
		}
		var w programWhatifLimits
		for k, limit := range whatIf[g] {
			w.Limits[k] = uint32(max(limit, 0))
		}
		if err := c.objs.Whatif.Put(uint32(g), w); err != nil {
			return fmt.Errorf("setting the limits not set yet: %w", err)
		}
		c.whatIf[g] = slices.Clone(whatIf[g])
	}
	return nil
}

// Uses says why no connection's use is known with these events; nil where
// each is followed.
func (c *Counter) Uses() error { return c.usesErr }

func (c *Counter) attach() error {
	for _, p := range []*ebpf.Program{c.objs.Changed, c.objs.Received, c.objs.Sent} {
		if p == nil {
			continue
		}
		l, err := link.AttachTracing(link.TracingOptions{Program: p})
		if err != nil {
			return err
		}
		c.links = append(c.links, l)
	}
	var err error
	if c.iterator, err = link.AttachIter(link.IterOptions{Program: c.objs.Census}); err != nil {
		return fmt.Errorf("attaching the census: %w", err)
	}
	return nil
}

// explain says what a refusal to load means and how to grant what lacks.
func explain(err error) error {
	return kernel.Explain(err, ErrUnavailable, "--source events", "Linux 5.15 or later")
}

// Close detaches the programs.
func (c *Counter) Close() {
	if c.iterator != nil {
		c.iterator.Close()
	}
	for _, l := range c.links {
		l.Close()
	}
	c.objs.Close()
}

// Check reads the maps and opens the census as the exporter will once it
// has dropped its capabilities: it says whether the kernel lets it.
func (c *Counter) Check() error {
	if _, err := c.totals(); err != nil {
		return fmt.Errorf("%w: %w", ErrUnavailable, kernel.Unprivileged(err))
	}
	r, err := c.iterator.Open()
	if err != nil {
		return fmt.Errorf("%w: opening the census: %w", ErrUnavailable, kernel.Unprivileged(err))
	}
	return r.Close()
}

// Shared are the maps that say what each client holds as it happens, for
// the refusals' program to judge each refusal by the limiter's rule, and
// whose connections are the agent's.
func (c *Counter) Shared() *kernel.SharedMaps {
	return &kernel.SharedMaps{Sockets: c.objs.Sockets, Clients: c.objs.ClientsHeld, Limits: c.objs.Limits, AgentUsers: c.objs.AgentUsers}
}

// Trust has the programs count only the connections accepted by the
// agent's listeners: users are the agent's user on each watched port
// (kernel.AnyUser where the listeners are not known, UntoldUser where
// the agent's cannot be told, counting nothing; a port left out has no
// listener of the agent's, and nothing there counts). Where that changes,
// a census judges every open connection again.
func (c *Counter) Trust(users map[uint16]uint32) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	changed, err := kernel.WriteUsers(c.objs.AgentUsers, users)
	if err != nil || !changed {
		return err
	}
	missed, err := c.missed()
	if err != nil {
		return err
	}
	_, err = c.audit(missed)
	return err
}

// portCount is how many ports the groups watch.
func portCount(groups [][]uint16) int {
	n := 0
	for _, g := range groups {
		n += len(g)
	}
	return n
}

// String names the source for messages.
func (c *Counter) String() string { return "the kernel's events" }

// Census is what one census of the socket table found.
type Census struct {
	// Uncounted are the connections open that no event had counted: at
	// the seed, those open before the start; after, events missed.
	Uncounted uint64
	// Stale are the counts of connections that were gone, whose close no
	// event took off.
	Stale uint64
	// Unmoved are the connections the census could not move into the new
	// generation, the map full: they stay counted where they were, and
	// the drift found before them is kept until a census moves them all.
	Unmoved uint64
	// Uncountable are the connections open and uncounted that the census
	// could not count either, the map full: the counts lack them (each is
	// counted as lost once).
	Uncountable uint64
}

// Drift is the connections one side had and the other did not: 0 when
// the events missed nothing.
func (c Census) Drift() uint64 { return c.Uncounted + c.Stale }

// Census walks the socket table once, under each socket's lock: it counts
// the connections no event counted, and moves every count into a new
// generation; the counts the old one still holds are of connections gone,
// and are dropped. The counts are exact after it, whatever events were
// missed before.
func (c *Counter) Census() (Census, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	missed, err := c.missed()
	if err != nil {
		return Census{}, err
	}
	return c.audit(missed)
}

// audit takes a census as an audit, which the snapshots report: missed is
// the changes the kernel skipped the program for until now.
func (c *Counter) audit(missed uint64) (Census, error) {
	found, err := c.census(missed)
	if err != nil {
		return Census{}, err
	}
	c.last = found
	c.audits++
	return found, nil
}

// census is Census under c.mu, the seed included.
func (c *Counter) census(missed uint64) (Census, error) {
	before, err := c.totals()
	if err != nil {
		return Census{}, err
	}
	old := c.generation
	c.generation++
	for _, v := range []*ebpf.Variable{c.objs.Unmoved, c.objs.Uncountable} {
		if err := v.Set(uint64(0)); err != nil {
			return Census{}, fmt.Errorf("starting a census: %w", err)
		}
	}
	if err := c.objs.Generation.Set(c.generation); err != nil {
		return Census{}, fmt.Errorf("starting a census: %w", err)
	}
	zeros := make([]uint64, c.groups*useOps)
	keys := make([]uint32, len(zeros))
	for i := range keys {
		keys[i] = uint32(i)
	}
	if _, err := c.objs.Longest.BatchUpdate(keys, zeros, nil); err != nil {
		return Census{}, fmt.Errorf("starting a census: %w", err)
	}
	if err := walk(c.iterator); err != nil {
		return Census{}, fmt.Errorf("taking the census of the socket table: %w", err)
	}
	after, err := c.totals()
	if err != nil {
		return Census{}, err
	}
	var found Census
	for g := range after {
		found.Uncounted += after[g].Seeded - before[g].Seeded
	}
	c.missedAt = missed
	if err := c.objs.Unmoved.Get(&found.Unmoved); err != nil {
		return Census{}, fmt.Errorf("reading the census: %w", err)
	}
	if err := c.objs.Uncountable.Get(&found.Uncountable); err != nil {
		return Census{}, fmt.Errorf("reading the census: %w", err)
	}
	if found.Unmoved > 0 {
		// The old generation still counts some open connections: kept,
		// with whatever else it holds, until a census moves them all (a
		// key falling to 0 is dropped by the programs themselves).
		return found, nil
	}
	var settled uint32
	if err := c.objs.Settled.Get(&settled); err != nil {
		return Census{}, fmt.Errorf("reading the census: %w", err)
	}
	if settled != c.generation {
		return Census{}, fmt.Errorf("the census of the socket table ended before its last call: the kernel stopped it")
	}
	// No event writes the old generation any more: each of its sockets
	// is in the new one, or closed. What it holds is of connections gone.
	if found.Stale, err = c.dropGeneration(old); err != nil {
		return Census{}, err
	}
	return found, nil
}

// walk runs an iterator's program over all it iterates.
func walk(it *link.Iter) error {
	r, err := it.Open()
	if err != nil {
		return err
	}
	defer r.Close()
	return drain(r)
}

// drain reads r to its end. The kernel stops a read of an iterator that
// wrote nothing after a million objects (a socket table that large) with
// EAGAIN, having kept its place: the next read goes on from there.
func drain(r io.Reader) error {
	buf := make([]byte, 4096)
	for {
		_, err := r.Read(buf)
		switch {
		case err == io.EOF:
			return nil
		case errors.Is(err, unix.EAGAIN):
		case err != nil:
			return err
		}
	}
}

// keyDropped is the bit a connection key's count has while the programs
// drop it (KEY_DROPPED, events.bpf.c): it counts nothing.
const keyDropped = 1 << 62

// dropGeneration deletes the counts of generation gen, once no event
// writes them (every socket moved to the next, or closed), and returns how
// many connections they were counting.
func (c *Counter) dropGeneration(gen uint32) (uint64, error) {
	var (
		key   programConnectionKey
		count int64
		keys  []programConnectionKey
		total uint64
	)
	it := c.objs.Connections.Iterate()
	for it.Next(&key, &count) {
		if uint32(key.Generation) == gen&1 {
			if count&keyDropped == 0 {
				total += uint64(max(count, -count))
			}
			keys = append(keys, key)
		}
	}
	if err := it.Err(); err != nil {
		return 0, fmt.Errorf("reading the kernel's counts: %w", err)
	}
	for _, key := range keys {
		if err := c.objs.Connections.Delete(key); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return 0, fmt.Errorf("dropping the old counts: %w", err)
		}
	}
	return total, nil
}

// missed is how many times the kernel skipped the program, as it does when
// the program is already running on that CPU (a socket's change in an
// interrupt of another's): each a change not counted.
func (c *Counter) missed() (uint64, error) {
	return kernel.RecursionMisses(c.objs.Changed)
}

// Read calls add with one record per local address, port, state, client
// and use, standing for the connections counted under them: the same
// records every source yields, each for many sockets. Where the kernel
// skipped the program since the last census, a census is taken first: the
// counts are right again before they are read.
func (c *Counter) Read(_ context.Context, add func(socket.Socket), _ func()) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	missed, err := c.missed()
	if err != nil {
		return err
	}
	if missed > c.missedAt {
		if _, err := c.audit(missed); err != nil {
			return err
		}
	}
	uses, err := c.uses()
	if err != nil {
		return err
	}
	longest := make([]uint64, c.groups*useOps)
	for i := range longest {
		if err := c.objs.Longest.Lookup(uint32(i), &longest[i]); err != nil {
			return fmt.Errorf("reading the uses from the kernel: %w", err)
		}
	}
	var (
		key     programConnectionKey
		count   int64
		records []socket.Socket
	)
	it := c.objs.Connections.Iterate()
	for it.Next(&key, &count) {
		if count <= 0 || count&keyDropped != 0 {
			continue // all closed, the key being dropped
		}
		records = append(records, socket.Socket{
			State:    socket.State(key.State),
			Local:    netip.AddrPortFrom(address(key.Local, key.Ipv6), key.Port),
			Peer:     netip.AddrPortFrom(address(key.Client, key.Ipv6), 0),
			UID:      key.Uid,
			UIDKnown: true,
			Sockets:  int(count),
		})
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("reading the counts from the kernel: %w", err)
	}
	split := useSplit{uses: uses, longest: longest, given: make([]bool, c.groups*useOps)}
	for _, r := range records {
		split.add(r, c.portGroup[r.Local.Port()], add)
	}
	return nil
}

// clientUses are a client's ESTABLISHED connections by what each last did,
// indexed as OPS (counts.h): not known (not kept), silent, waiting, idle.
type clientUses [useOps]int64

// usesKey is a client of a group, as the kernel keys it.
type usesKey struct {
	group  int
	client [16]byte
}

// uses reads each client's uses as the programs keep them.
func (c *Counter) uses() (map[usesKey]*clientUses, error) {
	got := map[usesKey]*clientUses{}
	if c.usesErr != nil {
		return got, nil
	}
	var (
		key   programClientKey
		state programClientState
	)
	it := c.objs.ClientsHeld.Iterate()
	for it.Next(&key, &state) {
		u := &clientUses{}
		for i, n := range state.Uses {
			u[i] = int64(max(n, 0))
		}
		got[usesKey{int(key.Group), key.Client}] = u
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("reading the uses from the kernel: %w", err)
	}
	return got, nil
}

// useSplit splits the counts' records by use: a client's uses are kept per
// client, not per key, and are given out over its ESTABLISHED records
// (waiting first, then idle, then silent; what they do not cover is not
// known); its CLOSE-WAIT ones are half-closed. Per group, the first
// waiting and the first idle record carry how long the longest of its use
// has been so, as the last census found it, as their traffic's age: what
// the table's sources give per socket.
type useSplit struct {
	uses    map[usesKey]*clientUses
	longest []uint64 // ns, per group * useOps + op
	given   []bool   // the longest given, per group * useOps + op
}

// The ops of counts.h's OPS, in the order a client's uses are given out.
const (
	opNone = 1
	opRead = 2
	opSent = 3
)

var opUses = [useOps]socket.Use{socket.UseUnknown, socket.UseSilent, socket.UseWaiting, socket.UseIdle}

func (s *useSplit) add(r socket.Socket, group int, add func(socket.Socket)) {
	switch r.State {
	case socket.StateCloseWait:
		r.Use = socket.UseHalfClosed
		add(r)
		return
	case socket.StateEstablished:
	default:
		add(r)
		return
	}
	u := s.uses[usesKey{group, r.Peer.Addr().As16()}] // v4-mapped, as the kernel keys it
	left := r.Sockets
	for _, op := range []int{opRead, opSent, opNone} {
		if u == nil || left == 0 {
			break
		}
		n := int(min(u[op], int64(left)))
		if n == 0 {
			continue
		}
		u[op] -= int64(n)
		left -= n
		part := r
		part.Sockets, part.Use = n, opUses[op]
		if i := group*useOps + op; (op == opRead || op == opSent) && !s.given[i] {
			s.given[i] = true
			age := uint32(min(s.longest[i]/1e6, 1<<32-1))
			if op == opRead {
				part.Traffic.SinceReceived = age
			} else {
				part.Traffic.SinceSent = age
			}
		}
		add(part)
	}
	if left > 0 {
		r.Sockets = left
		add(r)
	}
}

// address is an address as the kernel's table has it: IPv4 for an IPv4
// socket, v4-mapped for an IPv6 one; the programs write IPv4 v4-mapped.
func address(a [16]byte, ipv6 uint8) netip.Addr {
	if ipv6 != 0 {
		return netip.AddrFrom16(a)
	}
	return netip.AddrFrom16(a).Unmap()
}

// totals sums each group's totals over the CPUs.
func (c *Counter) totals() ([]programGroupTotals, error) {
	sums := make([]programGroupTotals, c.groups)
	for g := range sums {
		var perCPU []programGroupTotals
		if err := c.objs.Totals.Lookup(uint32(g), &perCPU); err != nil {
			return nil, fmt.Errorf("reading the kernel's totals: %w", err)
		}
		s := &sums[g]
		for _, t := range perCPU {
			s.Opened += t.Opened
			for i := range s.Closed {
				s.Closed[i] += t.Closed[i]
			}
			for i := range s.Lifetimes {
				s.Lifetimes[i] += t.Lifetimes[i]
			}
			s.LifetimeNs += t.LifetimeNs
			s.Seeded += t.Seeded
			s.Lost += t.Lost
			s.Unfollowed += t.Unfollowed
			s.Misplaced += t.Misplaced
			for i := range s.Whatif {
				s.Whatif[i] += t.Whatif[i]
			}
		}
	}
	return sums, nil
}

// Own tells the programs that the socket fd, about to connect to the
// agent, is the exporter's own (a read of the limits): the server end it
// reaches is never counted, whatever source address the kernel picks for
// it. Tell it before connecting; the mark dies with the socket.
func (c *Counter) Own(fd int) error {
	if err := c.objs.Sockets.Update(int32(fd), programSocketState{Own: ownDial}, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("telling the kernel's events of the exporter's own connection: %w", err)
	}
	return nil
}

// ownDial is OWN_DIAL (internal/kernel/counts.h): a client end of the exporter's own.
const ownDial = 2
