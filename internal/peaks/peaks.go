// Package peaks keeps what the samples between collections saw: per limiter
// group, the busiest clients at their busiest over a sliding window, and the
// sampled time some client spent at the group's limit. A snapshot sees one
// instant; the bursts that make Consul refuse clients are shorter than a
// scrape interval.
package peaks

import (
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/consul-conn-exporter/consul-conn-exporter/internal/tally"
)

// Group is one limiter group's counts in a sample.
type Group struct {
	Counts *tally.Tally
	// Limit is the group's per-client limit, 0 when there is none or it is
	// not known: then no time is at the limit.
	Limit int
}

// slot holds the successful samples of one sample interval (a collection
// is a sample too, and scrapes may come far more often than the interval):
// per group, its busiest clients at their busiest (the window's busiest
// clients at their peaks are among the union of these: a client left out
// had top others at least as busy) and the most any client held.
type slot struct {
	interval int64 // which interval since the epoch; 0: never used
	at       time.Time
	groups   []groupSample
}

type groupSample struct {
	top          []tally.ClientCount // at most top, reused
	maxPerClient int
}

// Window keeps the samples of the last window, in a ring of slots, reused:
// memory grows neither with the number of samples nor with how often a
// scrape comes, nor with the window's length. A slot is a sample interval,
// or longer where the window holds more of them than the ring does (a
// long window, or many top clients): a peak then stays for up to one slot
// past the window.
type Window struct {
	window, interval, slot time.Duration
	top                    int

	mu            sync.Mutex
	ring          []slot          // a slot per sample interval
	last          time.Time       // of the last successful sample
	atLimit       []time.Duration // per group, since start
	scratch       []tally.ClientCount
	total, failed uint64
}

// MaxClients bounds the clients the ring holds over all its slots and
// groups: 32 bytes each, about 6 MiB in all, whatever the window.
const MaxClients = 200_000

// New keeps groups groups over window, sampled every interval, with the top
// busiest clients of each.
func New(groups int, window, interval time.Duration, top int) *Window {
	w := &Window{window: window, interval: interval, top: max(top, 1), atLimit: make([]time.Duration, groups)}
	w.scratch = make([]tally.ClientCount, 0, w.top)
	slots := min(int(window/interval)+2, max(MaxClients/(max(groups, 1)*w.top), 3))
	w.slot = max(interval, window/time.Duration(slots-2))
	w.ring = make([]slot, slots)
	for i := range w.ring {
		w.ring[i].groups = make([]groupSample, groups)
	}
	return w
}

// Add records a successful sample taken at now. Each group whose busiest
// client holds at least its limit adds the time since the last sample (at
// most one interval) to its time at the limit.
func (w *Window) Add(now time.Time, groups []Group) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.total++
	elapsed := w.interval
	if !w.last.IsZero() {
		elapsed = min(max(now.Sub(w.last), 0), w.interval)
	}
	w.last = now
	interval := now.UnixNano()/int64(w.slot) + 1
	s := &w.ring[interval%int64(len(w.ring))]
	fresh := s.interval != interval
	s.interval, s.at = interval, now
	for i, g := range groups {
		most := g.Counts.MaxPerClient()
		gs := &s.groups[i]
		if fresh {
			gs.maxPerClient, gs.top = 0, gs.top[:0]
		}
		if gs.top == nil { // made when first used: a window not yet full costs what it holds
			gs.top = make([]tally.ClientCount, 0, w.top)
		}
		gs.maxPerClient = max(gs.maxPerClient, most)
		gs.top = mergeTop(gs.top, g.Counts, w.top, w.scratch)
		if g.Limit > 0 && most >= g.Limit {
			w.atLimit[i] += elapsed
		}
	}
}

// mergeTop keeps in top, at most n long, the clients busiest at their
// busiest over top and counts, in tally.Compare's order. scratch has room
// for n: nothing is allocated.
func mergeTop(top []tally.ClientCount, counts *tally.Tally, n int, scratch []tally.ClientCount) []tally.ClientCount {
	for _, c := range counts.TopClientsInto(scratch, n) {
		i := slices.IndexFunc(top, func(t tally.ClientCount) bool { return t.Client == c.Client })
		if i < 0 {
			top = tally.Keep(top, c, n)
			continue
		}
		top[i].Count = max(top[i].Count, c.Count)
		slices.SortFunc(top, tally.Compare)
	}
	return top
}

// Failed records a sample that could not be taken: it is counted, and
// nothing else, since a failure is not a zero.
func (w *Window) Failed() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.total++
	w.failed++
}

// View is what the window holds at one moment.
type View struct {
	// Groups are, per group, its peaks in the window; Known is false when
	// the window has no successful sample (then there is no peak).
	Groups []GroupView
	Known  bool
	// Samples and Failed count the samples since start.
	Samples, Failed uint64
}

// GroupView is one group's peaks.
type GroupView struct {
	// Top are the clients with the highest peaks, at their peaks, most first.
	Top []tally.ClientCount
	// MaxPerClient is the most any client held at any sample.
	MaxPerClient int
	// AtLimit is the sampled time some client held at least the limit.
	AtLimit time.Duration
}

// View is the peaks of the samples taken in the window before now.
func (w *Window) View(now time.Time) View {
	w.mu.Lock()
	defer w.mu.Unlock()
	v := View{Samples: w.total, Failed: w.failed, Groups: make([]GroupView, len(w.atLimit))}
	for g := range v.Groups {
		v.Groups[g].AtLimit = w.atLimit[g]
		peaks := map[netip.Addr]int{}
		for i := range w.ring {
			s := &w.ring[i]
			if s.interval == 0 || now.Sub(s.at) > w.window {
				continue
			}
			v.Known = true
			v.Groups[g].MaxPerClient = max(v.Groups[g].MaxPerClient, s.groups[g].maxPerClient)
			for _, c := range s.groups[g].top {
				peaks[c.Client] = max(peaks[c.Client], c.Count)
			}
		}
		for client, n := range peaks {
			v.Groups[g].Top = append(v.Groups[g].Top, tally.ClientCount{Client: client, Count: n})
		}
		slices.SortFunc(v.Groups[g].Top, tally.Compare)
		v.Groups[g].Top = v.Groups[g].Top[:min(w.top, len(v.Groups[g].Top))]
	}
	return v
}
