// Package whatif predicts, from the counts each sample reads, which clients
// a per-client limit not set yet would refuse: a connection is refused
// when it opens while its client already holds the limit or more. Between
// two samples a client's count went from a to b: at least b - max(a, N) of
// its connections opened while it held N or more, and would have been
// refused at limit N. That is what is counted, from the first sample on
// (what it finds held opened before it): never more than the opens a
// judge at each one (the kernel's events) would count, and exactly that
// for clients that open and hold; more than the agent would refuse for
// clients that close and reopen between samples (a refused connection
// never held a slot), fewer for clients that retry after a refusal.
package whatif

import (
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/consul-conn-exporter/consul-conn-exporter/internal/tally"
)

// MaxClients is how many clients each group's predictions name at most:
// past it, a new client's predicted refusals are in the totals alone.
const MaxClients = 10_000

// Judge keeps, per limiter group and candidate limit, the connections that
// limit would have refused since start.
type Judge struct {
	mu     sync.Mutex
	groups []group
	// last is when the last sample taken was read: one read before it
	// that comes after (a slow collection beside a sample) is dropped.
	last time.Time
}

type group struct {
	limits []int
	last   map[netip.Addr]int // each client's count at the last sample
	// based: last is a sample's. The first sample after the start, after
	// one that could not see the agent's connections, or that sees its
	// ports otherwise than the last (a listener gone, or back; the agent's
	// user known, or not), is a base only: what its clients hold opened
	// before it, and no judge at each open (the kernel's events) would
	// count it.
	based   bool
	sampled bool         // a sample was taken
	seen    string       // how the last sample saw the group's ports
	counts  []prediction // per limit, as limits
}

type prediction struct {
	total     uint64
	perClient map[netip.Addr]uint64
}

// New judges limits[i], the candidate limits of group i (none: the group is
// not judged). Once, for a single collection (check, --once), judges the
// first sample against nothing: who holds past each limit now.
func New(limits [][]int, once bool) *Judge {
	j := &Judge{groups: make([]group, len(limits))}
	for i, ls := range limits {
		g := &j.groups[i]
		g.based = once
		g.limits = slices.Clone(ls)
		g.last = map[netip.Addr]int{}
		for range ls {
			g.counts = append(g.counts, prediction{perClient: map[netip.Addr]uint64{}})
		}
	}
	return j
}

// Add takes one sample, read at at: its counts, per group as New's (nil:
// the group was not read, and is judged from its next sample as from this
// one's), and how it saw each group's ports (the listeners the agent's,
// the agent's user). The first is a base, unless New was told once; so is
// one that sees a group's ports otherwise than the last.
func (j *Judge) Add(at time.Time, counts []*tally.Tally, seen []string) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if !j.inOrder(at) {
		return
	}
	for i := range j.groups {
		g := &j.groups[i]
		if i >= len(counts) || counts[i] == nil || len(g.limits) == 0 {
			continue
		}
		if i < len(seen) {
			if g.sampled && seen[i] != g.seen {
				g.based = false
			}
			g.seen = seen[i]
		}
		g.add(counts[i])
	}
}

// Forget has the next sample be a base again: the read at at failed, and
// what its clients hold next was not opened since.
func (j *Judge) Forget(at time.Time) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if !j.inOrder(at) {
		return
	}
	for i := range j.groups {
		j.groups[i].based = false
	}
}

// inOrder says whether a read at at comes after the last one taken, and
// takes it as the last.
func (j *Judge) inOrder(at time.Time) bool {
	if at.Before(j.last) {
		return false
	}
	j.last = at
	return true
}

func (g *group) add(t *tally.Tally) {
	now := make(map[netip.Addr]int, len(g.last))
	judge := g.based
	g.based, g.sampled = true, true
	t.EachClient(func(client netip.Addr, count int) {
		now[client] = count
		if !judge {
			return
		}
		before := g.last[client] // 0: not seen at the last sample
		for k, limit := range g.limits {
			if over := count - max(before, limit); over > 0 {
				p := &g.counts[k]
				p.total += uint64(over)
				if _, ok := p.perClient[client]; ok || len(p.perClient) < MaxClients {
					p.perClient[client] += uint64(over)
				}
			}
		}
	})
	g.last = now
}

// Limit is what one candidate limit would have refused since start.
type Limit struct {
	Limit   int
	Refused uint64
	// Clients are the clients it would have refused and how often, most
	// first (ties by address), at most the top asked for.
	Clients []tally.ClientCount
}

// View is each group's candidate limits' predictions, with each one's top
// clients.
func (j *Judge) View(top int) [][]Limit {
	j.mu.Lock()
	defer j.mu.Unlock()
	view := make([][]Limit, len(j.groups))
	for i, g := range j.groups {
		for k, limit := range g.limits {
			p := g.counts[k]
			l := Limit{Limit: limit, Refused: p.total}
			for client, n := range p.perClient {
				l.Clients = tally.Keep(l.Clients, tally.ClientCount{Client: client, Count: int(n)}, top)
			}
			view[i] = append(view[i], l)
		}
	}
	return view
}
