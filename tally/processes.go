package tally

import (
	"cmp"
	"net/netip"
	"slices"

	"github.com/consul-conn-exporter/consul-conn-exporter/socket"
)

// Processes tells which programs on this host hold the client end of the
// connections counted on its ports. A connection whose client is on this
// host is in the table twice; its client-side row, the same four-tuple
// seen from the other end, names the program. A connection from this host
// to a Consul elsewhere has no server-side row here and is not counted.
type Processes struct {
	ports  []uint16
	states []socket.State
	// served are the counted server-side sockets; clients the established
	// client-side sockets toward the ports, with what names their program.
	served  map[fourTuple]struct{}
	clients map[fourTuple]owner
}

// owner is what the table says of a client end's program: its name (ss
// -p, netstat -p), or the socket's inode to look the name up by.
type owner struct {
	name  string
	inode uint64
}

type fourTuple struct{ server, client netip.AddrPort }

// ProcessCount is the number of connections one program holds from one
// client address.
type ProcessCount struct {
	Client  netip.Addr
	Process string
	Count   int
}

// NewProcesses matches the connections counted on ports in states.
func NewProcesses(ports []uint16, states []socket.State) *Processes {
	return &Processes{
		ports:   slices.Clone(ports),
		states:  slices.Clone(states),
		served:  map[fourTuple]struct{}{},
		clients: map[fourTuple]owner{},
	}
}

// Add takes a row of a table that has both ends of local connections (a
// filter on the source and the destination port) and their programs.
func (p *Processes) Add(s socket.Socket) {
	local, peer := unmap(s.Local), unmap(s.Peer)
	switch {
	case slices.Contains(p.ports, local.Port()) && slices.Contains(p.states, s.State):
		p.served[fourTuple{server: local, client: peer}] = struct{}{}
	case slices.Contains(p.ports, peer.Port()) && s.State == socket.StateEstablished:
		// Only an established client end is still some program's: after
		// close() it lingers orphaned (FIN-WAIT-2).
		p.clients[fourTuple{server: peer, client: local}] = owner{s.Process, s.Inode}
	}
}

// Unnamed are the inodes of the local client ends of counted connections
// whose program the table did not name: the ones to look up.
func (p *Processes) Unnamed() map[uint64]struct{} {
	inodes := map[uint64]struct{}{}
	for conn := range p.served {
		if o, local := p.clients[conn]; local && o.name == "" && o.inode != 0 {
			inodes[o.inode] = struct{}{}
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
}

// Held is how many counted connections each program on this host holds,
// per client address, most first, with names looked up by inode where the
// table named none, and how many local ones are not known.
func (p *Processes) Held(names map[uint64]string) (held []ProcessCount, unknown Unknown) {
	counts := map[ProcessCount]int{}
	for conn := range p.served {
		o, local := p.clients[conn]
		program := o.name
		if program == "" {
			program = names[o.inode]
		}
		switch {
		case !local:
		case program == "" && o.inode == 0:
			unknown.Untold++
		case program == "":
			unknown.NotFound++
		default:
			counts[ProcessCount{Client: conn.client.Addr(), Process: program}]++
		}
	}
	for key, n := range counts {
		key.Count = n
		held = append(held, key)
	}
	sortCounts(held)
	return held, unknown
}

// ByProcess sums held over client addresses: the n busiest programs.
func ByProcess(held []ProcessCount, n int) []ProcessCount {
	sums := map[string]int{}
	for _, h := range held {
		sums[h.Process] += h.Count
	}
	all := make([]ProcessCount, 0, len(sums))
	for program, count := range sums {
		all = append(all, ProcessCount{Process: program, Count: count})
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

func unmap(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}
