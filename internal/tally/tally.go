// Package tally counts the server-side sockets of the watched ports, in the
// watched states, per port, per state and per client address.
package tally

import (
	"cmp"
	"net/netip"
	"slices"
	"time"

	"github.com/consul-conn-exporter/consul-conn-exporter/internal/table/socket"
)

// Tally adds up sockets. The zero value counts nothing; use New.
type Tally struct {
	ports  []uint16
	states []socket.State
	// byState[i][j] counts ports[i] in states[j]; slices, not maps, because
	// Add runs once per row and there are only a few ports and states.
	byState   [][]int
	perClient map[netip.Addr]int
	// byUse and perClientUse count the sockets whose use the source
	// told; the rest are of unknown use. A source that tells none (ss,
	// netstat) costs nothing more.
	byUse        [socket.UseCount]int
	perClientUse map[netip.Addr]*[socket.UseCount]int
	// longest is, per use, how long the connection so the longest has
	// been so, in ms: waiting since its request, idle since its answer.
	longest [socket.UseCount]uint32
}

// ClientCount is the number of sockets one client holds over all ports.
type ClientCount struct {
	Client netip.Addr
	Count  int
}

// New counts sockets whose local port is one of ports and whose state is one
// of states.
func New(ports []uint16, states []socket.State) *Tally {
	t := &Tally{
		ports:        slices.Clone(ports),
		states:       slices.Clone(states),
		byState:      make([][]int, len(ports)),
		perClient:    map[netip.Addr]int{},
		perClientUse: map[netip.Addr]*[socket.UseCount]int{},
	}
	for i := range t.byState {
		t.byState[i] = make([]int, len(states))
	}
	return t
}

// OfClients is a tally of clients' counts alone, none per port or state:
// what a client held at its busiest, say.
func OfClients(counts map[netip.Addr]int) *Tally {
	t := New(nil, nil)
	for client, n := range counts {
		t.perClient[Client(client)] += n
	}
	return t
}

// Add counts s if it is a server-side socket of a watched port in a watched
// state. A client-side socket whose peer is the watched port is not counted:
// its server-side twin is, when the server runs on this host.
func (t *Tally) Add(s socket.Socket) {
	port := slices.Index(t.ports, s.Local.Port())
	if port < 0 {
		return
	}
	state := slices.Index(t.states, s.State)
	if state < 0 {
		return
	}
	n, client := max(s.Sockets, 1), Client(s.Peer.Addr())
	t.byState[port][state] += n
	t.perClient[client] += n
	if s.Use != socket.UseUnknown && int(s.Use) < socket.UseCount {
		t.byUse[s.Use] += n
		uses := t.perClientUse[client]
		if uses == nil {
			uses = new([socket.UseCount]int)
			t.perClientUse[client] = uses
		}
		uses[s.Use] += n
		switch s.Use {
		case socket.UseWaiting:
			t.longest[s.Use] = max(t.longest[s.Use], s.Traffic.SinceReceived)
		case socket.UseIdle:
			t.longest[s.Use] = max(t.longest[s.Use], s.Traffic.SinceSent)
		}
	}
}

// Longest is how long the connection in use u the longest has been so:
// the oldest request waiting, the longest idle; 0 for the other uses,
// whose start the kernel's counters do not tell.
func (t *Tally) Longest(u socket.Use) time.Duration {
	if u == socket.UseUnknown {
		return 0
	}
	return time.Duration(t.longest[u]) * time.Millisecond
}

// ByUse is the number of sockets counted in use u: those whose use is
// not known, for socket.UseUnknown.
func (t *Tally) ByUse(u socket.Use) int {
	if u != socket.UseUnknown {
		return t.byUse[u]
	}
	unknown := 0
	for _, port := range t.byState {
		for _, n := range port {
			unknown += n
		}
	}
	for _, n := range t.byUse {
		unknown -= n
	}
	return unknown
}

// ClientByUse is the number of sockets client holds in use u, as ByUse.
func (t *Tally) ClientByUse(client netip.Addr, u socket.Use) int {
	uses := t.perClientUse[client]
	if u != socket.UseUnknown {
		if uses == nil {
			return 0
		}
		return uses[u]
	}
	unknown := t.perClient[client]
	if uses != nil {
		for _, n := range uses {
			unknown -= n
		}
	}
	return unknown
}

// Client is how a peer address is known as a client: one host whether the
// kernel printed it as 10.0.0.5 or ::ffff:10.0.0.5 (the parser has already
// dropped any zone).
func Client(peer netip.Addr) netip.Addr {
	return peer.Unmap()
}

// EachClient calls f with each client's count.
func (t *Tally) EachClient(f func(client netip.Addr, count int)) {
	for client, n := range t.perClient {
		f(client, n)
	}
}

// Ports are the watched ports, in the order given to New.
func (t *Tally) Ports() []uint16 { return t.ports }

// States are the watched states, in the order given to New.
func (t *Tally) States() []socket.State { return t.states }

// Total is the number of sockets counted on port.
func (t *Tally) Total(port uint16) int {
	i := slices.Index(t.ports, port)
	if i < 0 {
		return 0
	}
	total := 0
	for _, n := range t.byState[i] {
		total += n
	}
	return total
}

// ByState is the number of sockets counted on port in state.
func (t *Tally) ByState(port uint16, state socket.State) int {
	i, j := slices.Index(t.ports, port), slices.Index(t.states, state)
	if i < 0 || j < 0 {
		return 0
	}
	return t.byState[i][j]
}

// MaxPerClient is the most sockets any one client holds over all watched
// ports, 0 when there are none: the number a per-client limit applies to.
func (t *Tally) MaxPerClient() int {
	most := 0
	for _, n := range t.perClient {
		most = max(most, n)
	}
	return most
}

// ClientsHolding is how many clients hold at least n sockets, over every
// client: at a per-client limit of n, each is refused its new connections.
func (t *Tally) ClientsHolding(n int) int {
	clients := 0
	for _, held := range t.perClient {
		if held >= n {
			clients++
		}
	}
	return clients
}

// TopClients is the n clients with the most sockets, in Compare's order.
func (t *Tally) TopClients(n int) []ClientCount {
	return t.TopClientsInto(make([]ClientCount, 0, min(n, len(t.perClient))), n)
}

// TopClientsInto is TopClients(n) in dst's storage: with room for n there,
// it allocates nothing.
func (t *Tally) TopClientsInto(dst []ClientCount, n int) []ClientCount {
	dst = dst[:0]
	for client, count := range t.perClient {
		dst = Keep(dst, ClientCount{Client: client, Count: count}, n)
	}
	return dst
}

// Compare orders client counts most first; ties go to the lower address,
// so that the same counts always give the same list.
func Compare(a, b ClientCount) int {
	if c := cmp.Compare(b.Count, a.Count); c != 0 {
		return c
	}
	return a.Client.Compare(b.Client)
}

// Keep adds c to top, a list in Compare's order, and keeps its n first:
// with room for n in top, it allocates nothing.
func Keep(top []ClientCount, c ClientCount, n int) []ClientCount {
	if n <= 0 || (len(top) >= n && Compare(c, top[n-1]) >= 0) {
		return top
	}
	i, _ := slices.BinarySearchFunc(top, c, Compare)
	if len(top) < n {
		top = append(top, ClientCount{})
	}
	copy(top[i+1:], top[i:len(top)-1])
	top[i] = c
	return top
}
