package events

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/consul-conn-exporter/consul-conn-exporter/internal/kernel"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/tally"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/whatif"
)

// Closes are how a connection can end, in the order of Group.Closed.
var Closes = []string{"agent", "client", "reset"}

// LifetimeBounds are the lifetimes' buckets, by their upper bounds in
// seconds, as events.bpf.c has them: a request, a blocking query, a leak.
var LifetimeBounds = []float64{0.001, 0.005, 0.025, 0.1, 0.5, 2.5, 10, 60, 330, 900, 1800, 3600}

// Snapshot is what the events say, per group as Load was given them.
type Snapshot struct {
	Groups []Group
	// Audit is what the last audit's census found (none before the
	// first); Audits counts them.
	Audit  Census
	Audits uint64
	// Missed are the changes the kernel skipped the program for since
	// start; the next census corrects what they left.
	Missed uint64
}

// Group is one group's events since the program was attached.
type Group struct {
	// Opened are the connections that entered the watched states.
	Opened uint64
	// Closed are the counted connections that left them, by how, in
	// Closes' order.
	Closed [3]uint64
	// Lifetimes count the closed connections' lifetimes per bucket of
	// LifetimeBounds, cumulative, as a Prometheus histogram has them
	// (those open before the start are not in them); LifetimeCount and
	// LifetimeSum are all of them, and their sum in seconds.
	Lifetimes     []uint64
	LifetimeCount uint64
	LifetimeSum   float64
	// Lost are connections a full map could not count: until a census
	// finds room for them, the counts lack them.
	Lost uint64
	// Unfollowed are connections whose client a full map could not
	// follow: the counts have them, the client's churn, peak and time at
	// the limit do not.
	Unfollowed uint64
	// TopOpened are the clients that opened the most, most first.
	TopOpened []tally.ClientCount
	// Peaks are each client's most held since the last snapshot.
	Peaks *tally.Tally
	// AtLimit is the time some client held at least the group's limit, as
	// the limits given to Snapshot had it.
	AtLimit time.Duration
	// WhatIf are the opens each of the group's limits not set yet would
	// have refused, judged at each open, with the top clients each.
	WhatIf []whatif.Limit
}

// Snapshot reads the events since start, and each client's peak since the
// last snapshot, with top clients each; limits (per group, 0 for none
// known) are what the time at the limit counts against from now on: where
// one changed, a census judges every client against it again.
func (c *Counter) Snapshot(top int, limits []int) (Snapshot, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	missed, err := c.missed()
	if err != nil {
		return Snapshot{}, err
	}
	changed, err := c.setLimits(limits)
	if err != nil {
		return Snapshot{}, err
	}
	// Until a census has judged every client against a changed limit,
	// each read tries again: one that failed must not leave the clients
	// judged against the old limit until the next audit.
	c.judgeAgain = c.judgeAgain || changed
	if c.judgeAgain {
		if _, err := c.audit(missed); err != nil {
			return Snapshot{}, err
		}
		c.judgeAgain = false
	}
	snap := Snapshot{Groups: make([]Group, c.groups), Audit: c.last, Audits: c.audits, Missed: missed}
	totals, err := c.totals()
	if err != nil {
		return Snapshot{}, err
	}
	// The clock first, then the time at the limit: told of the read, the
	// programs take no time before it from then on, so that the time read
	// never goes back.
	now, err := monotonic()
	if err != nil {
		return Snapshot{}, err
	}
	if err := c.objs.ReadNs.Set(now); err != nil {
		return Snapshot{}, fmt.Errorf("telling the kernel's events of the read: %w", err)
	}
	for g := range snap.Groups {
		t, group := totals[g], &snap.Groups[g]
		group.Opened, group.Closed, group.Lost, group.Unfollowed = t.Opened, t.Closed, t.Lost, t.Unfollowed
		group.Lifetimes = make([]uint64, len(LifetimeBounds))
		var sum uint64
		for i, n := range t.Lifetimes {
			sum += n
			if i < len(group.Lifetimes) {
				group.Lifetimes[i] = sum
			}
		}
		group.LifetimeCount, group.LifetimeSum = sum, time.Duration(t.LifetimeNs).Seconds()
		var s programGroupState
		if err := c.objs.Groups.LookupWithFlags(uint32(g), &s, ebpf.LookupLock); err != nil {
			return Snapshot{}, fmt.Errorf("reading the kernel's time at the limit: %w", err)
		}
		group.AtLimit = time.Duration(s.AtLimitNs)
		if g < len(c.whatIf) {
			for k, limit := range c.whatIf[g] {
				group.WhatIf = append(group.WhatIf, whatif.Limit{Limit: limit, Refused: t.Whatif[k]})
			}
		}
		if s.ClientsAtLimit > 0 && now > s.SinceNs {
			group.AtLimit += time.Duration(now - s.SinceNs)
		}
	}
	if err := c.clients(snap.Groups, top); err != nil {
		return Snapshot{}, err
	}
	return snap, c.makeRoom(totals)
}

// makeRoom drops, where the clients' map was too full to follow a client
// since the last read, the clients that hold nothing and have not changed
// since it (read now, their churn in the totals): two censuses, the first
// marking them, the second dropping them, rather than the next two
// audits; and a third follows the clients that found no room, with the
// connections they hold. So a flood of addresses opening and closing
// blinds the churn, peaks and time at the limit of new clients for one
// read, not for two audits' intervals.
func (c *Counter) makeRoom(totals []programGroupTotals) error {
	var unfollowed uint64
	for _, t := range totals {
		unfollowed += t.Unfollowed
	}
	if unfollowed == c.unfollowedAt {
		return nil
	}
	for range 3 {
		missed, err := c.missed()
		if err != nil {
			return err
		}
		if _, err := c.audit(missed); err != nil {
			return err // the next read tries again
		}
	}
	c.unfollowedAt = unfollowed
	return nil
}

// setLimits gives the kernel each group's limit where it changed, and
// says whether one did.
func (c *Counter) setLimits(limits []int) (changed bool, err error) {
	if c.limits == nil {
		c.limits = make([]uint32, c.groups)
	}
	for g, limit := range limits[:min(len(limits), c.groups)] {
		limit := uint32(max(limit, 0))
		if limit == c.limits[g] {
			continue // the map's zero value too: nothing known
		}
		if err := c.objs.Limits.Put(uint32(g), limit); err != nil {
			return changed, fmt.Errorf("setting the limits in the kernel: %w", err)
		}
		c.limits[g] = limit
		changed = true
	}
	return changed, nil
}

// clients reads each client's opens and its peak over the epoch that
// ends now.
func (c *Counter) clients(groups []Group, top int) error {
	ended := c.epoch
	c.epoch++
	if err := c.objs.Epoch.Set(c.epoch); err != nil {
		return fmt.Errorf("starting an epoch of the peaks: %w", err)
	}
	refused := make([][][]tally.ClientCount, len(groups)) // per group and limit not set yet, the top
	for g := range groups {
		refused[g] = make([][]tally.ClientCount, len(groups[g].WhatIf))
	}
	peaks := make([]map[netip.Addr]int, len(groups))
	for g := range peaks {
		peaks[g] = map[netip.Addr]int{}
	}
	// Read entry by entry, never in batches: a batched read takes each
	// bucket's lock, which the programs' own updates of the map then wait
	// on under churn (a soak found counts corrected with no event
	// missed while the peaks were read so).
	var (
		key   programClientKey
		state programClientState
	)
	it := c.objs.ClientsHeld.Iterate()
	for it.Next(&key, &state) {
		if int(key.Group) >= len(groups) {
			continue
		}
		client := netip.AddrFrom16(key.Client).Unmap()
		group := &groups[key.Group]
		group.TopOpened = tally.Keep(group.TopOpened, tally.ClientCount{Client: client, Count: int(state.Opened)}, top)
		for k := range refused[key.Group] {
			if n := state.Whatif[k]; n > 0 {
				refused[key.Group][k] = tally.Keep(refused[key.Group][k], tally.ClientCount{Client: client, Count: int(n)}, top)
			}
		}
		peak, err := c.peak(key, state, ended)
		if err != nil {
			return err
		}
		if peak > 0 {
			peaks[key.Group][client] = peak
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("reading the kernel's clients: %w", err)
	}
	for g := range groups {
		groups[g].Peaks = tally.OfClients(peaks[g])
		for k, clients := range refused[g] {
			groups[g].WhatIf[k].Clients = clients
		}
	}
	return nil
}

// peak is the most a client held over epoch ended: the peak the events
// of the epoch left; with none, the count that held through it, which is
// the count before the next epoch's first change, or, with none yet, the
// count now.
func (c *Counter) peak(key programClientKey, state programClientState, ended uint32) (int, error) {
	if epochOf(state.Peak[ended&1]) == ended {
		return countOf(state.Peak[ended&1]), nil
	}
	// The count first, then whether a change came since: if none, the
	// count read held through the epoch.
	now := kernel.HeldCount(state.Held)
	if err := c.objs.ClientsHeld.Lookup(key, &state); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return 0, fmt.Errorf("reading the kernel's clients: %w", err)
	}
	if next := state.Begin[(ended+1)&1]; epochOf(next) == ended+1 {
		return countOf(next), nil
	}
	return now, nil
}

func epochOf(slot uint64) uint32 { return uint32(slot >> 32) }
func countOf(slot uint64) int    { return int(int32(uint32(slot))) }

// monotonic is the clock the kernel's bpf_ktime_get_ns reads.
func monotonic() (uint64, error) {
	var now unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &now); err != nil {
		return 0, fmt.Errorf("reading the clock: %w", err)
	}
	return uint64(now.Nano()), nil
}
