package tally

import (
	"cmp"
	"net/netip"
	"slices"

	"github.com/consul-conn-exporter/consul-conn-exporter/internal/table/socket"
)

// Processes tells which programs on this host hold the client end of the
// connections counted on its ports. A connection whose client is on this
// host is in the table twice; its client-side row, the same four-tuple
// seen from the other end, names the program. A connection from this host
// to a Consul elsewhere has no server-side row here and is not counted.
type Processes struct {
	ports  []uint16
	states []socket.State
	// conns are the connections seen from either end: whether the server
	// end is counted, and the inode of an established client end on this
	// host, which names its program. clientNames are the few the table
	// named itself (-p in a --command). Keys and values hold no pointers:
	// at 100,000 connections the garbage collector has nothing to walk in
	// them, and one map holds what a list of the counted ones and a map of
	// the client ends held twice.
	conns       map[fourTuple]ends
	clientNames map[fourTuple]string
	// clientEnds: the table had client ends at all (a --command may
	// filter on the source port alone).
	clientEnds bool
}

// ends is what the table said of a connection's two ends.
type ends struct {
	inode  uint64     // 0: no client end here, or the table gave none
	served bool       // the server end is counted
	client bool       // a client end a program holds is on this host (heldByAProgram)
	use    socket.Use // the server end's, where the table told it
}

// fourTuple is a connection's two ends, v4-mapped addresses as IPv4 ones
// (As16 maps both alike).
type fourTuple struct{ server, client endpoint }

type endpoint struct {
	addr [16]byte
	port uint16
}

func endpointOf(ap netip.AddrPort) endpoint { return endpoint{ap.Addr().As16(), ap.Port()} }

// ProcessCount is the number of connections one program holds from one
// client address, and how many of them are in each use (indexed by
// socket.Use; unknown where the table told none).
type ProcessCount struct {
	Client  netip.Addr
	Process string
	Count   int
	ByUse   [socket.UseCount]int
}

// NewProcesses matches the connections counted on ports in states.
func NewProcesses(ports []uint16, states []socket.State) *Processes {
	return &Processes{
		ports:       slices.Clone(ports),
		states:      slices.Clone(states),
		conns:       map[fourTuple]ends{},
		clientNames: map[fourTuple]string{},
	}
}

// Add takes a row of a table that has both ends of local connections (a
// filter on the source and the destination port) and what names their
// programs.
func (p *Processes) Add(s socket.Socket) {
	switch {
	case slices.Contains(p.ports, s.Local.Port()) && slices.Contains(p.states, s.State):
		conn := fourTuple{server: endpointOf(s.Local), client: endpointOf(s.Peer)}
		e := p.conns[conn]
		e.served, e.use = true, s.Use
		p.conns[conn] = e
	case slices.Contains(p.ports, s.Peer.Port()) && heldByAProgram(s):
		conn := fourTuple{server: endpointOf(s.Peer), client: endpointOf(s.Local)}
		e := p.conns[conn]
		e.client, e.inode = true, s.Inode
		p.clientEnds = true
		p.conns[conn] = e
		if s.Process != "" {
			p.clientNames[conn] = s.Process
		}
	}
}

// heldByAProgram says whether a client end is still some program's:
// established, or shut down on its side (a half-closed connection's) while
// the program holds it; after close() it lingers orphaned, in FIN-WAIT-2
// with no inode.
func heldByAProgram(s socket.Socket) bool {
	switch s.State {
	case socket.StateEstablished:
		return true
	case socket.StateFinWait1, socket.StateFinWait2:
		return s.Inode != 0 || s.Process != ""
	}
	return false
}

// Unnamed are the inodes of the local client ends of counted connections
// whose program the table did not name, each with no name yet: the ones to
// look up.
func (p *Processes) Unnamed() map[uint64]string {
	inodes := make(map[uint64]string, len(p.conns)) // one map, never grown
	for conn, e := range p.conns {
		if e.served && e.inode != 0 && p.clientNames[conn] == "" {
			inodes[e.inode] = ""
		}
	}
	return inodes
}

// Unknown counts the local connections whose program is not known.
type Unknown struct {
	// Untold have a client end the table gives neither a name nor an
	// inode for (a --command without -p or -e).
	Untold int
	// NotFound have an inode no process was found holding: it closed
	// meanwhile, or its process could not be read.
	NotFound int
	// Unseen have a client on this host's loopback, in a table that has
	// no client end at all (a --command filtering on the source port
	// alone): their programs are not in it.
	Unseen int
}

// Held is how many counted connections each program on this host holds,
// per client address, most first, with names looked up by inode where the
// table named none, and how many local ones are not known.
func (p *Processes) Held(names map[uint64]string) (held []ProcessCount, unknown Unknown) {
	type key struct {
		client  netip.Addr
		program string
	}
	counts := map[key]*ProcessCount{}
	for conn, e := range p.conns {
		program := p.clientNames[conn]
		if program == "" {
			program = names[e.inode]
		}
		switch {
		case e.served && !p.clientEnds && netip.AddrFrom16(conn.client.addr).Unmap().IsLoopback():
			unknown.Unseen++
		case !e.served || !e.client:
		case program == "" && e.inode == 0:
			unknown.Untold++
		case program == "":
			unknown.NotFound++
		default:
			k := key{netip.AddrFrom16(conn.client.addr).Unmap(), program}
			c := counts[k]
			if c == nil {
				c = &ProcessCount{Client: k.client, Process: program}
				counts[k] = c
			}
			c.Count++
			c.ByUse[e.use]++
		}
	}
	for _, c := range counts {
		held = append(held, *c)
	}
	sortCounts(held)
	return held, unknown
}

// ByProcess sums held over client addresses: the n busiest programs.
func ByProcess(held []ProcessCount, n int) []ProcessCount {
	sums := map[string]*ProcessCount{}
	for _, h := range held {
		sum := sums[h.Process]
		if sum == nil {
			sum = &ProcessCount{Process: h.Process}
			sums[h.Process] = sum
		}
		sum.Count += h.Count
		for u, n := range h.ByUse {
			sum.ByUse[u] += n
		}
	}
	all := make([]ProcessCount, 0, len(sums))
	for _, sum := range sums {
		all = append(all, *sum)
	}
	sortCounts(all)
	return all[:min(n, len(all))]
}

// sortCounts puts the most first; ties by name, then address, so that the
// same counts always give the same list.
func sortCounts(counts []ProcessCount) {
	slices.SortFunc(counts, func(a, b ProcessCount) int {
		if c := cmp.Compare(b.Count, a.Count); c != 0 {
			return c
		}
		if c := cmp.Compare(a.Process, b.Process); c != 0 {
			return c
		}
		return a.Client.Compare(b.Client)
	})
}
