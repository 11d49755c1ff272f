package whatif

import (
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"

	"github.com/consul-conn-exporter/consul-conn-exporter/internal/tally"
)

// add adds a sample read now, its ports seen as the last ones were.
func add(j *Judge, counts ...*tally.Tally) {
	j.Add(time.Now(), counts, nil)
}

// counts is a sample: each client holding n connections.
func counts(held map[string]int) *tally.Tally {
	clients := map[netip.Addr]int{}
	for client, n := range held {
		clients[netip.MustParseAddr(client)] = n
	}
	return tally.OfClients(clients)
}

// The pattern: three clients open and hold 25, 15 and 40; at a
// limit of 20 the first is refused 5, the second none, the third 20, as
// the agent at 20 would refuse them.
func TestClientsThatOpenAndHoldAreRefusedWhatTheyHoldPastTheLimit(t *testing.T) {
	j := New([][]int{{20, 100}}, false)
	add(j, counts(nil))
	add(j, counts(map[string]int{"127.0.0.5": 25, "127.0.0.6": 15, "127.0.0.7": 40}))
	add(j, counts(map[string]int{"127.0.0.5": 25, "127.0.0.6": 15, "127.0.0.7": 40}))
	view := j.View(10)
	assert.Equal(t, [][]Limit{{
		{Limit: 20, Refused: 25, Clients: []tally.ClientCount{{Client: netip.MustParseAddr("127.0.0.7"), Count: 20}, {Client: netip.MustParseAddr("127.0.0.5"), Count: 5}}},
		{Limit: 100},
	}}, view, "held, not opened again: judged once")
}

// A client already past the limit that opens more between two samples is
// refused each; one that falls back under and rises again is refused what
// it rises past the limit; one gone and back starts from nothing.
func TestEachRiseAboveTheLimitIsCountedOnce(t *testing.T) {
	j := New([][]int{{10}}, false)
	for _, held := range []int{0, 12, 15, 8, 11, 0, 13} {
		add(j, counts(map[string]int{"127.0.0.5": held}))
	}
	// 12: 2 past 10; 15: 3 more; 8: none; 11: 1; gone; 13: 3.
	assert.Equal(t, uint64(9), j.View(1)[0][0].Refused)
}

// A group with no candidate limit, or not read in a sample, is not judged.
func TestAGroupNotReadIsNotJudged(t *testing.T) {
	j := New([][]int{nil, {5}}, false)
	add(j, counts(nil), counts(nil))
	add(j, counts(map[string]int{"127.0.0.5": 9}), nil)
	add(j, nil, counts(map[string]int{"127.0.0.5": 9}))
	view := j.View(10)
	assert.Empty(t, view[0])
	assert.Equal(t, uint64(4), view[1][0].Refused)
}

// What clients hold at the first sample, or at the first after the agent
// could not be seen, opened before it: a base, never judged (no judge at
// each open would have seen those opens). Opens after it are.
func TestTheFirstSampleAndTheFirstAfterAGapAreBasesOnly(t *testing.T) {
	j := New([][]int{{3}}, false)
	add(j, counts(map[string]int{"127.0.0.5": 5}))
	assert.Zero(t, j.View(1)[0][0].Refused, "held before the start")
	add(j, counts(map[string]int{"127.0.0.5": 7}))
	assert.Equal(t, uint64(2), j.View(1)[0][0].Refused, "two more opened past 3")
	j.Forget(time.Now()) // a sample that could not see the agent's connections
	add(j, counts(map[string]int{"127.0.0.5": 7}))
	assert.Equal(t, uint64(2), j.View(1)[0][0].Refused, "the same 7, seen again")
	add(j, counts(map[string]int{"127.0.0.5": 8}))
	assert.Equal(t, uint64(3), j.View(1)[0][0].Refused)
}

// A single collection (check, --once) asks who holds past each limit now:
// its one sample is judged against nothing.
func TestOnceTheOneSampleIsJudged(t *testing.T) {
	j := New([][]int{{3}}, true)
	add(j, counts(map[string]int{"127.0.0.5": 5}))
	assert.Equal(t, uint64(2), j.View(1)[0][0].Refused)
}

// A sample that sees a group's ports otherwise than the last (a listener
// gone while its connections stay, or back; the agent's user known or not)
// is a base: what it finds held was not opened since.
func TestASampleThatSeesThePortsOtherwiseIsABase(t *testing.T) {
	j := New([][]int{{20}}, false)
	at := time.Now()
	step := func(seen string, n int) uint64 {
		at = at.Add(time.Second)
		j.Add(at, []*tally.Tally{counts(map[string]int{"127.0.0.5": n})}, []string{seen})
		return j.View(1)[0][0].Refused
	}
	step("8502:true:0", 0)
	assert.Equal(t, uint64(5), step("8502:true:0", 25))
	assert.Equal(t, uint64(5), step("8502:false:0", 0), "the listener gone: its connections unseen")
	assert.Equal(t, uint64(5), step("8502:true:0", 25), "back: the same 25")
	assert.Equal(t, uint64(6), step("8502:true:0", 26))
}

// A read that comes after a later one (a slow collection beside a sample)
// is dropped: the judge sees the samples in the order they were read.
func TestAnOlderReadThatComesLateIsDropped(t *testing.T) {
	j := New([][]int{{20}}, false)
	at := time.Now()
	sample := func(at time.Time, n int) {
		j.Add(at, []*tally.Tally{counts(map[string]int{"127.0.0.5": n})}, nil)
	}
	sample(at, 0)
	sample(at.Add(2*time.Second), 25) // read last, taken first
	sample(at.Add(time.Second), 20)
	sample(at.Add(3*time.Second), 25)
	assert.Equal(t, uint64(5), j.View(1)[0][0].Refused)
	j.Forget(at.Add(time.Second)) // an older failed read: no base
	sample(at.Add(4*time.Second), 26)
	assert.Equal(t, uint64(6), j.View(1)[0][0].Refused)
}
