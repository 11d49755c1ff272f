package peaks

import (
	"fmt"
	"net/netip"
	"runtime"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/consul-conn-exporter/consul-conn-exporter/internal/table/socket"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/tally"
)

// held is a tally of n connections from each client.
func held(clients map[string]int) *tally.Tally {
	t := tally.New([]uint16{8500}, []socket.State{socket.StateEstablished})
	port := uint16(40000)
	for client, n := range clients {
		for range n {
			port++
			t.Add(socket.Socket{State: socket.StateEstablished,
				Local: netip.MustParseAddrPort("127.0.0.1:8500"), Peer: netip.AddrPortFrom(netip.MustParseAddr(client), port)})
		}
	}
	return t
}

var t0 = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)

func TestABurstBetweenCollectionsShowsForTheWindow(t *testing.T) {
	w := New(1, 10*time.Second, time.Second, 2)
	w.Add(t0, []Group{{Counts: held(map[string]int{"10.0.0.5": 3}), Limit: 40}})
	w.Add(t0.Add(1*time.Second), []Group{{Counts: held(map[string]int{"10.0.0.5": 45, "10.0.0.6": 1}), Limit: 40}})
	w.Add(t0.Add(2*time.Second), []Group{{Counts: held(map[string]int{"10.0.0.5": 44, "10.0.0.7": 2}), Limit: 40}})
	w.Add(t0.Add(3*time.Second), []Group{{Counts: held(map[string]int{"10.0.0.6": 4}), Limit: 40}})

	v := w.View(t0.Add(3 * time.Second))
	require.True(t, v.Known)
	g := v.Groups[0]
	assert.Equal(t, 45, g.MaxPerClient, "the burst, though the last sample has 4")
	assert.Equal(t, []tally.ClientCount{
		{Client: netip.MustParseAddr("10.0.0.5"), Count: 45},
		{Client: netip.MustParseAddr("10.0.0.6"), Count: 4},
	}, g.Top, "each client at its own peak, the top 2")
	assert.Equal(t, 2*time.Second, g.AtLimit, "two samples at or over 40")
	assert.Equal(t, uint64(4), v.Samples)

	// Later, with no sample of the burst left in the window: back to what
	// the samples in it saw.
	w.Add(t0.Add(13*time.Second), []Group{{Counts: held(map[string]int{"10.0.0.6": 4}), Limit: 40}})
	v = w.View(t0.Add(13 * time.Second))
	assert.Equal(t, 4, v.Groups[0].MaxPerClient)
	assert.Equal(t, 2*time.Second, v.Groups[0].AtLimit, "a counter: it never goes down")
}

func TestTwoViewersSeeTheSamePeak(t *testing.T) {
	w := New(1, time.Minute, time.Second, 10)
	w.Add(t0, []Group{{Counts: held(map[string]int{"10.0.0.5": 45})}})
	w.Add(t0.Add(time.Second), []Group{{Counts: held(map[string]int{"10.0.0.5": 1})}})
	assert.Equal(t, w.View(t0.Add(2*time.Second)), w.View(t0.Add(3*time.Second)), "not since the last look")
}

func TestFailedSamplesAreCountedAndNeverAZero(t *testing.T) {
	w := New(1, time.Minute, time.Second, 10)
	w.Failed()
	v := w.View(t0)
	assert.False(t, v.Known, "no successful sample: no peak")
	w.Add(t0, []Group{{Counts: held(map[string]int{"10.0.0.5": 7})}})
	w.Failed()
	w.Failed()
	v = w.View(t0.Add(time.Second))
	assert.Equal(t, 7, v.Groups[0].MaxPerClient)
	assert.Equal(t, uint64(4), v.Samples)
	assert.Equal(t, uint64(3), v.Failed)
}

func TestNoLimitIsNeverAtTheLimit(t *testing.T) {
	w := New(2, time.Minute, time.Second, 10)
	w.Add(t0, []Group{{Counts: held(map[string]int{"10.0.0.5": 500})}, {Counts: held(map[string]int{"10.0.0.5": 5}), Limit: 5}})
	v := w.View(t0)
	assert.Zero(t, v.Groups[0].AtLimit)
	assert.Equal(t, time.Second, v.Groups[1].AtLimit, "groups apart")
}

// The ring's slots are reused: a sample allocates nothing that stays, and
// nothing at all once each slot has held a sample.
func TestASampleAllocatesNothing(t *testing.T) {
	w := New(1, 10*time.Second, time.Second, 10)
	clients := map[string]int{}
	for i := range 30 {
		clients[fmt.Sprintf("10.0.0.%d", i)] = i + 1
	}
	groups := []Group{{Counts: held(clients), Limit: 200}}
	for i := range 20 {
		w.Add(t0.Add(time.Duration(i)*time.Second), groups)
	}
	now := t0.Add(20 * time.Second)
	assert.Zero(t, testing.AllocsPerRun(100, func() {
		now = now.Add(time.Second)
		w.Add(now, groups)
	}))
}

// Scrapes are samples too, and may come far more often than the interval:
// they neither push a burst out of the window nor count more time at the
// limit than passed.
func TestFrequentScrapesKeepTheBurstAndTheTime(t *testing.T) {
	w := New(1, 4*time.Second, time.Second, 10)
	w.Add(t0, []Group{{Counts: held(map[string]int{"10.0.0.5": 45}), Limit: 40}})
	for i := 1; i <= 100; i++ { // a scrape every 20 ms for 2 s
		w.Add(t0.Add(time.Duration(i)*20*time.Millisecond), []Group{{Counts: held(map[string]int{"10.0.0.6": 41}), Limit: 40}})
	}
	v := w.View(t0.Add(2 * time.Second))
	assert.Equal(t, 45, v.Groups[0].MaxPerClient)
	assert.Equal(t, []tally.ClientCount{
		{Client: netip.MustParseAddr("10.0.0.5"), Count: 45},
		{Client: netip.MustParseAddr("10.0.0.6"), Count: 41},
	}, v.Groups[0].Top)
	assert.Equal(t, 3*time.Second, v.Groups[0].AtLimit, "the first sample's interval, then the 2 s that passed")
}

// However long the window and however many top clients, the ring holds at
// most MaxClients: a day-long window of 1,000 clients each second, every
// slot full, stays a few MiB.
func TestMemoryIsBoundedWhateverTheWindow(t *testing.T) {
	for _, tc := range []struct {
		window time.Duration
		top    int
	}{{time.Minute, 10}, {24 * time.Hour, 10}, {27 * time.Hour, 1000}} {
		w := New(2, tc.window, time.Second, tc.top)
		assert.LessOrEqual(t, len(w.ring)*2*tc.top, MaxClients+3*2*tc.top, "%s, top %d", tc.window, tc.top)
	}
	clients := map[string]int{}
	for i := range 1000 {
		clients[fmt.Sprintf("10.0.%d.%d", i/256, i%256)] = 1 + i%7
	}
	counts := held(clients)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	w := New(2, 24*time.Hour, time.Second, 1000)
	for i := range len(w.ring) { // one sample in every slot
		w.Add(t0.Add(time.Duration(i)*w.slot), []Group{{Counts: counts, Limit: 200}, {Counts: counts, Limit: 100}})
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	grown := int64(after.HeapAlloc) - int64(before.HeapAlloc)
	t.Logf("a full day-long window of 1,000 top clients in 2 groups: %d slots of %s, %.1f MiB", len(w.ring), w.slot, float64(grown)/(1<<20))
	assert.Less(t, grown, int64(16<<20))
	runtime.KeepAlive(w)
}

// With slots coarser than the sample interval, a burst still shows for the
// window, and is gone a slot after it.
func TestABurstShowsForALongWindowOfCoarseSlots(t *testing.T) {
	w := New(1, 24*time.Hour, time.Second, 1000)
	require.Greater(t, w.slot, time.Second, "coarse slots")
	w.Add(t0, []Group{{Counts: held(map[string]int{"10.0.0.5": 50}), Limit: 200}})
	for i := 1; i <= 100; i++ {
		w.Add(t0.Add(time.Duration(i)*time.Minute), []Group{{Counts: held(map[string]int{"10.0.0.5": 1}), Limit: 200}})
	}
	assert.Equal(t, 50, w.View(t0.Add(12 * time.Hour)).Groups[0].MaxPerClient)
	assert.Equal(t, 1, w.View(t0.Add(24*time.Hour + 2*w.slot)).Groups[0].MaxPerClient)
}
