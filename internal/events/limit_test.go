package events

import (
	"context"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/consul-conn-exporter/consul-conn-exporter/internal/testkit/loopback"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/testkit/portopener"
)

// Connections open before the start are judged against the first limit
// known: a client holding 25 of them is at a limit of 20 from then, its
// time running between reads with no change of its count; a limit raised
// past it stops the clock, one lowered to it starts it again.
func TestConnectionsOpenBeforeTheStartAreJudgedAgainstEachLimitKnown(t *testing.T) {
	l := loopback.Listen(t, "127.0.0.1")
	loopback.Open(t, l, "127.0.0.81", 25)
	c := loaded(t, []uint16{l.Port()})
	first := snapshotOf(t, c, 20).Groups[0].AtLimit
	after := time.Now()
	before := time.Now()
	second := snapshotOf(t, c, 20).Groups[0].AtLimit
	assert.Greater(t, second, first, "at the limit, with no change of its count")
	assert.GreaterOrEqual(t, second-first, before.Sub(after), "all the time between the reads")

	raised := snapshotOf(t, c, 30).Groups[0].AtLimit
	assert.Equal(t, raised, snapshotOf(t, c, 30).Groups[0].AtLimit, "below a limit raised past it: the clock stopped")
	assert.GreaterOrEqual(t, raised, second, "and never back")
	lowered := snapshotOf(t, c, 25).Groups[0].AtLimit
	assert.Greater(t, snapshotOf(t, c, 25).Groups[0].AtLimit, lowered, "at a limit lowered to it: running again")
}

// Opens and closes racing on both CPUs, each taking a client to its limit
// and back, and reads between them: the time at the limit read never goes
// back, and once the client is below the limit for good, it stops.
func TestTheTimeAtTheLimitNeverGoesBackUnderRacingOpensAndCloses(t *testing.T) {
	// A listener takes one opener at a time: one each, in one group.
	ls := []*portopener.Listener{loopback.Listen(t, "127.0.0.1"), loopback.Listen(t, "127.0.0.1")}
	c := loaded(t, []uint16{ls[0].Port(), ls[1].Port()})
	const limit = 10
	loopback.Open(t, ls[0], "127.0.0.82", limit-1)
	began := time.Now()
	snapshotOf(t, c, limit)
	const races = 100_000 // opens and closes, over both CPUs
	var (
		wg      sync.WaitGroup
		readErr error
		reads   int
	)
	// A read every few opens: between the races, not starving them.
	read := make(chan struct{}, 1)
	back := time.Duration(0)
	wg.Go(func() {
		last := time.Duration(0)
		for range read {
			s, err := c.Snapshot(0, []int{limit})
			if err != nil {
				readErr = err
				return
			}
			reads++
			if at := s.Groups[0].AtLimit; at < last {
				back = max(back, last-at)
			} else {
				last = at
			}
		}
	})
	var opens sync.WaitGroup
	for _, l := range ls {
		opens.Go(func() {
			for i := range races / 4 { // an open and a close each
				pairs, err := l.Open(context.Background(), netip.MustParseAddr("127.0.0.82"), 1)
				if !assert.NoError(t, err) {
					return
				}
				// The agent's close first: its end waits in TIME-WAIT,
				// not the client's port.
				pairs[0].Server.Close()
				pairs[0].Client.Close()
				if i%4 == 0 {
					select {
					case read <- struct{}{}:
					default:
					}
				}
			}
		})
	}
	opens.Wait()
	close(read)
	wg.Wait()
	require.NoError(t, readErr)
	t.Logf("%d reads during %d opens and closes", reads, races)
	assert.Zero(t, back, "the time read went back")
	require.Eventually(t, func() bool { return len(table(t, ls[0].Port(), ls[1].Port())) == limit-1 }, 5*time.Second, 10*time.Millisecond, "the races' server ends closed")
	// A close the kernel skipped the program for (its recursion guard,
	// as it may under such a load) leaves the client's count, and so its
	// judgement, to the audit that follows, as the exporter takes one.
	missed, err := c.missed()
	require.NoError(t, err)
	if missed > 0 {
		t.Logf("the kernel skipped the program %d times: audited", missed)
		_, err := c.Census()
		require.NoError(t, err)
	}
	var g programGroupState
	require.NoError(t, c.objs.Groups.LookupWithFlags(uint32(0), &g, ebpf.LookupLock))
	assert.Zero(t, g.ClientsAtLimit, "no client left at the limit")
	stopped := snapshotOf(t, c, limit).Groups[0].AtLimit
	assert.Equal(t, stopped, snapshotOf(t, c, limit).Groups[0].AtLimit, "below the limit: stopped")
	assert.LessOrEqual(t, stopped, time.Since(began), "no time counted twice, nor a negative one wrapped round")
	assert.Positive(t, stopped)
}

// A client at the limit only by the count of connections gone, whose
// closes the program never saw (here, detached meanwhile: as when the
// kernel skips it), is judged again by the census that drops them: below
// the limit, its time stops.
func TestACensusThatDropsAClientsStaleCountJudgesItAgain(t *testing.T) {
	l := loopback.Listen(t, "127.0.0.1")
	c := loaded(t, []uint16{l.Port()})
	held := loopback.Open(t, l, "127.0.0.83", 10)
	snapshotOf(t, c, 10)
	for _, lk := range c.links {
		require.NoError(t, lk.Close())
	}
	c.links = nil
	for _, p := range held[:3] { // closes not seen: 10 still, to the program
		closeAs(t, "agent", p)
	}
	running := snapshotOf(t, c, 10).Groups[0].AtLimit
	assert.Less(t, running, snapshotOf(t, c, 10).Groups[0].AtLimit, "at the limit, by the count of connections gone")
	found, err := c.Census()
	require.NoError(t, err)
	assert.Equal(t, Census{Stale: 3}, found)
	stopped := snapshotOf(t, c, 10).Groups[0].AtLimit
	assert.Equal(t, stopped, snapshotOf(t, c, 10).Groups[0].AtLimit, "7 of 10: stopped")
}

// With maps too full for a census to move the counts (it keeps the old
// generation), a limit's change is judged all the same: a client at a
// limit lowered to it is at it from then, and stops at one raised past it.
func TestALimitChangeIsJudgedWhenTheMapIsTooFullToMove(t *testing.T) {
	l := loopback.Listen(t, "127.0.0.1")
	c := loadedWith(t, minKeys, []uint16{l.Port()})
	loopback.Open(t, l, "127.0.0.84", 5)
	for i := range minKeys {
		loopback.Open(t, l, netip.AddrFrom4([4]byte{127, 8, byte(i >> 8), byte(i)}).String(), 1)
	}
	found, err := c.Census()
	require.NoError(t, err)
	require.Positive(t, found.Unmoved, "the map too full to move the counts")

	snapshotOf(t, c, 5) // lowered to the client's 5
	after := time.Now()
	before := time.Now()
	running := snapshotOf(t, c, 5).Groups[0].AtLimit
	assert.Greater(t, snapshotOf(t, c, 5).Groups[0].AtLimit, running, "at the limit from the change")
	assert.GreaterOrEqual(t, running, before.Sub(after))
	stopped := snapshotOf(t, c, 50).Groups[0].AtLimit
	assert.Equal(t, stopped, snapshotOf(t, c, 50).Groups[0].AtLimit, "raised past it: stopped")
}

// A census that a changed limit asks for, and that fails, is taken at the
// next read: the clients are never left judged against the old limit
// until the next audit.
func TestALimitChangeWhoseCensusFailedIsJudgedAtTheNextRead(t *testing.T) {
	l := loopback.Listen(t, "127.0.0.1")
	c := loaded(t, []uint16{l.Port()})
	snapshotOf(t, c, 5)
	before := c.audits

	good := c.iterator
	broken, err := link.AttachIter(link.IterOptions{Program: c.objs.Census})
	require.NoError(t, err)
	require.NoError(t, broken.Close())
	c.iterator = broken
	_, err = c.Snapshot(10, []int{20})
	require.Error(t, err, "the census cannot be taken")
	c.iterator = good

	snapshotOf(t, c, 20) // the limit read again, unchanged since the failed read
	assert.Equal(t, before+1, c.audits, "the census the change asked for")
}
