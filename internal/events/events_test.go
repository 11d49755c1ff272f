package events

import (
	"context"
	"io"
	"net"
	"net/netip"
	"os"
	"slices"
	"sync"
	"syscall"
	"testing"
	"testing/iotest"
	"time"

	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/consul-conn-exporter/consul-conn-exporter/internal/kernel"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/refusals"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/table/sockdiag"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/table/socket"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/tally"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/testkit/loopback"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/testkit/policy"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/testkit/portopener"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/testkit/programs"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/whatif"
)

var held = []socket.State{socket.StateEstablished, socket.StateCloseWait}

func loaded(t *testing.T, groups ...[]uint16) *Counter {
	t.Helper()
	return loadedWith(t, 1<<16, groups...)
}

// loadedWith loads the programs with maps of keys keys.
func loadedWith(t *testing.T, keys int, groups ...[]uint16) *Counter {
	t.Helper()
	programs.NotShort(t, "loads a kernel program")
	programs.NeedRoot(t, "load a kernel program")
	programs.NeedBTF(t)
	// On a host whose policy refuses map-element iterators, as some do:
	// every test of the counts runs there.
	c, err := load(btf.NewCache(), groups, held, keys, rootListens(groups...), nil, policy.MapElementIterators.Load, nil)
	programs.Loaded(t, err)
	t.Cleanup(c.Close)
	return c
}

// rootListens is the agent's user on every port of groups, as the kernel
// programs take it: root, who runs the tests and their listeners.
func rootListens(groups ...[]uint16) map[uint16]uint32 {
	users := map[uint16]uint32{}
	for _, g := range groups {
		for _, p := range g {
			users[p] = 0
		}
	}
	return users
}

// table is what the built-in reader reads of ports: the rows the events'
// counts must equal, expanded one row per socket.
func table(t *testing.T, ports ...uint16) []string {
	t.Helper()
	return loopback.Rows(t, sockdiag.New(ports, nil, held, 5*time.Second))
}

// counted is what the counter reads, one row per socket its records stand
// for, as table has them.
func counted(t *testing.T, c *Counter) []string {
	t.Helper()
	return loopback.Rows(t, expanded{c})
}

type expanded struct{ c *Counter }

func (e expanded) Read(ctx context.Context, add func(socket.Socket), reset func()) error {
	return e.c.Read(ctx, func(s socket.Socket) {
		for range s.Sockets {
			one := s
			one.Sockets = 0
			add(one)
		}
	}, reset)
}

// peerless drops the peers' ports, which the counts do not keep.
func peerless(rows []string) []string {
	out := make([]string, len(rows))
	for i, r := range rows {
		s := []byte(r)
		// "state local peer": the peer's port is after its last colon.
		for j := len(s) - 1; j >= 0; j-- {
			if s[j] == ':' {
				s = append(s[:j], ":0"...)
				break
			}
		}
		out[i] = string(s)
	}
	return out
}

func TestOpenBeforeTheStartCountedOnceAndThenFollowed(t *testing.T) {
	v4, v6, mapped := loopback.Mix(t)
	ports := []uint16{v4.Port(), v6.Port(), mapped.Port()}
	c := loaded(t, ports)
	require.Len(t, table(t, ports...), loopback.MixCounted)
	assert.Equal(t, peerless(table(t, ports...)), counted(t, c), "the seed")

	more := loopback.Open(t, v4, "127.0.0.21", 30)
	loopback.Open(t, v6, "::1", 3)
	portopener.CloseAll(more[:10])
	assert.Equal(t, peerless(table(t, ports...)), counted(t, c), "after opens and closes")
}

func TestAConnectionOpenWhileTheCensusRunsIsCountedOnce(t *testing.T) {
	// A listener per churning goroutine: a listener takes one opener.
	var ls []*portopener.Listener
	var ports []uint16
	for range 4 {
		ls = append(ls, loopback.Listen(t, "127.0.0.1"))
		ports = append(ports, ls[len(ls)-1].Port())
	}
	c := loaded(t, ports)
	loopback.Open(t, ls[0], "127.0.0.29", 50) // held throughout: each census moves them
	var wg sync.WaitGroup
	for i, l := range ls { // churn, each goroutine holding a few at a time
		wg.Go(func() {
			from := netip.AddrFrom4([4]byte{127, 0, 0, byte(30 + i)})
			for range 500 {
				pairs, err := l.Open(context.Background(), from, 3)
				if !assert.NoError(t, err) {
					return
				}
				portopener.CloseAll(pairs)
			}
		})
	}
	churned := make(chan struct{})
	go func() { wg.Wait(); close(churned) }()
	censuses := 0
	for done := false; !done; censuses++ {
		select {
		case <-churned:
			done = true
		default:
		}
		missedBefore, err := c.missed()
		require.NoError(t, err)
		found, err := c.Census()
		require.NoError(t, err)
		if found != (Census{}) { // only where the kernel skipped the program, as it may under load
			missedAfter, err := c.missed()
			require.NoError(t, err)
			require.Greater(t, missedAfter, missedBefore, "census %d under churn found %+v with no event missed", censuses, found)
		}
	}
	t.Logf("%d censuses under churn", censuses)
	require.Eventually(t, func() bool { return len(table(t, ports...)) == 50 }, 5*time.Second, 10*time.Millisecond, "the churn's server ends closed")
	assert.Equal(t, peerless(table(t, ports...)), counted(t, c))
}

func TestAnotherNamespacesConnectionsNeverCount(t *testing.T) {
	l := loopback.Listen(t, "127.0.0.1")
	c := loaded(t, []uint16{l.Port()})
	loopback.InNewNamespace(t, func() {
		there, err := portopener.Listen(l.Addr())
		require.NoError(t, err)
		defer there.Close()
		pairs, err := there.Open(context.Background(), netip.MustParseAddr("127.0.0.1"), 20)
		require.NoError(t, err)
		portopener.CloseAll(pairs)
	})
	loopback.Open(t, l, "127.0.0.1", 2)
	assert.Len(t, counted(t, c), 2)
}

// exactUnlessMissed asserts got is want, or within the changes the kernel
// skipped c's program for.
func exactUnlessMissed(t *testing.T, c *Counter, want, got uint64, what string) {
	t.Helper()
	missed, err := c.missed()
	require.NoError(t, err)
	programs.ExactUnlessMissed(t, float64(want), float64(got), float64(missed), what)
}

func snapshotOf(t *testing.T, c *Counter, limits ...int) Snapshot {
	t.Helper()
	if limits == nil {
		limits = []int{0}
	}
	s, err := c.Snapshot(10, limits)
	require.NoError(t, err)
	return s
}

func opened(g Group, client string) int {
	for _, c := range g.TopOpened {
		if c.Client == netip.MustParseAddr(client) {
			return c.Count
		}
	}
	return 0
}

// closeAs ends a connection the way how says: the agent's FIN first, the
// client's, or a reset from the client; each returns once the server end
// has left the watched states.
func closeAs(t *testing.T, how string, p portopener.Pair) {
	t.Helper()
	switch how {
	case "agent":
		require.NoError(t, p.Server.Close()) // ESTABLISHED to FIN-WAIT-1, in the close
		require.NoError(t, p.Client.Close())
	case "client":
		require.NoError(t, p.Client.Close())
		_, err := p.Server.Read(make([]byte, 1))
		require.Error(t, err, "EOF: the server end is in CLOSE-WAIT")
		require.NoError(t, p.Server.Close()) // CLOSE-WAIT to LAST-ACK, in the close
	case "reset":
		require.NoError(t, p.Client.(*net.TCPConn).SetLinger(0))
		require.NoError(t, p.Client.Close())
		_, err := p.Server.Read(make([]byte, 1))
		require.ErrorIs(t, err, syscall.ECONNRESET, "the server end reset: CLOSED")
		require.NoError(t, p.Server.Close())
	}
}

func TestThousandsOfShortConnectionsAreCountedOneByOneWithHowTheyEndedAndTheirLifetimes(t *testing.T) {
	l := loopback.Listen(t, "127.0.0.1")
	loopback.Open(t, l, "127.0.0.41", 3) // open throughout, from before the start: neither opened nor closed
	c := loaded(t, []uint16{l.Port()})
	long := loopback.Open(t, l, "127.0.0.43", 5) // living through the short ones
	opened5 := time.Now()
	want := map[string]int{"agent": 1000 + 5, "client": 600, "reset": 400}
	for how, n := range map[string]int{"agent": 1000, "client": 600, "reset": 400} {
		for range n {
			pairs, err := l.Open(context.Background(), netip.MustParseAddr("127.0.0.42"), 1)
			require.NoError(t, err)
			closeAs(t, how, pairs[0])
		}
	}
	lived := time.Since(opened5)
	for _, p := range long {
		closeAs(t, "agent", p)
	}
	g := snapshotOf(t, c).Groups[0]
	exactUnlessMissed(t, c, 2005, g.Opened, "opened")
	exactUnlessMissed(t, c, 2000, uint64(opened(g, "127.0.0.42")), "opened by 127.0.0.42")
	assert.Zero(t, opened(g, "127.0.0.41"), "open before the start: no open seen")
	for i, how := range Closes {
		exactUnlessMissed(t, c, uint64(want[how]), g.Closed[i], "closed by "+how)
	}
	exactUnlessMissed(t, c, 2005, g.LifetimeCount, "each closed connection's lifetime")
	assert.Equal(t, g.LifetimeCount, g.Lifetimes[len(g.Lifetimes)-1], "none longer than an hour")
	for i, bound := range LifetimeBounds {
		if bound < lived.Seconds() {
			assert.LessOrEqual(t, g.Lifetimes[i], uint64(2000), "the 5 long ones lived more than %gs", bound)
		}
	}
	assert.GreaterOrEqual(t, g.LifetimeSum, 5*lived.Seconds())
	assert.Zero(t, g.Lost)
	assert.Equal(t, peerless(table(t, l.Port())), counted(t, c))
}

func TestABurstHeldForMillisecondsShowsExactlyInThePeak(t *testing.T) {
	l := loopback.Listen(t, "127.0.0.1")
	c := loaded(t, []uint16{l.Port()})
	loopback.Open(t, l, "127.0.0.51", 5) // steady: no change in any epoch
	snapshotOf(t, c)                     // an epoch starts
	burst := loopback.Open(t, l, "127.0.0.52", 40)
	portopener.CloseAll(burst[:35])
	s := snapshotOf(t, c)
	peaks := s.Groups[0].Peaks.TopClients(10)
	require.Len(t, peaks, 2)
	assert.Equal(t, "127.0.0.52", peaks[0].Client.String())
	assert.Equal(t, 40, peaks[0].Count, "the burst's top, gone before the read")
	assert.Equal(t, 5, peaks[1].Count, "a steady client's count held through the epoch")

	portopener.CloseAll(burst[35:])
	loopback.Open(t, l, "127.0.0.52", 2)
	peaks = snapshotOf(t, c).Groups[0].Peaks.TopClients(10)
	assert.Equal(t, 5, peaks[0].Count, "the burst's epoch is over: 5 at most since, for either")
	assert.Equal(t, 5, peaks[1].Count)
}

func TestTheTimeAtTheLimitRunsFromTheConnectionThatReachesItToTheCloseThatLeavesIt(t *testing.T) {
	l := loopback.Listen(t, "127.0.0.1")
	c := loaded(t, []uint16{l.Port()})
	loopback.Open(t, l, "127.0.0.61", 9)
	assert.Zero(t, snapshotOf(t, c, 10).Groups[0].AtLimit, "9 of 10: below")
	beforeReach := time.Now()
	tenth := loopback.Open(t, l, "127.0.0.61", 1)
	reached := time.Now()
	loopback.Open(t, l, "127.0.0.62", 3) // another client, below the limit
	beforeLeave := time.Now()
	closeAs(t, "agent", tenth[0])
	left := time.Now()
	at := snapshotOf(t, c, 10).Groups[0].AtLimit
	assert.GreaterOrEqual(t, at, beforeLeave.Sub(reached), "at the limit from the tenth to its close")
	assert.LessOrEqual(t, at, left.Sub(beforeReach))
	loopback.Open(t, l, "127.0.0.62", 3)
	assert.Equal(t, at, snapshotOf(t, c, 10).Groups[0].AtLimit, "below since: no more time")
}

// loadWithRefusals loads the events' programs for port, and the refusals'
// with their maps shared, the limit given as the exporter reads it.
func loadWithRefusals(t *testing.T, port uint16, limit int) (*Counter, *refusals.Counter) {
	t.Helper()
	c := loaded(t, []uint16{port})
	r, err := refusals.Load(btf.NewCache(), [][]uint16{{port}}, c.Shared(), nil)
	programs.Loaded(t, err)
	t.Cleanup(r.Close)
	snapshotOf(t, c, limit)
	return c, r
}

// With the events' maps shared, each refusal is judged by the limiter's
// own rule: one made while its client held the limit besides it is a
// refusal like any; one made while it held fewer is counted apart.
func TestARefusalWhileTheClientHeldFewerThanTheLimitIsCountedApart(t *testing.T) {
	l := loopback.Listen(t, "127.0.0.1")
	_, r := loadWithRefusals(t, l.Port(), 3)
	loopback.Open(t, l, "127.0.0.91", 3)
	refuse := func(from string) {
		pairs, err := l.Open(context.Background(), netip.MustParseAddr(from), 1)
		require.NoError(t, err)
		_, err = pairs[0].Client.Write([]byte("GET /v1/agent/self HTTP/1.1\r\n\r\n"))
		require.NoError(t, err)
		require.NoError(t, pairs[0].Server.Close()) // unread: a reset
		_, err = pairs[0].Client.Read(make([]byte, 1))
		require.ErrorIs(t, err, syscall.ECONNRESET)
		pairs[0].Client.Close()
	}
	loopback.Open(t, l, "127.0.0.92", 2)
	refuse("127.0.0.91") // 3 held besides it: at the limit
	refuse("127.0.0.92") // 2 besides it, 3 with it: below
	refuse("127.0.0.92")
	snap, err := r.Snapshot(10, refusals.Agent{})
	require.NoError(t, err)
	groups := snap.Groups
	assert.Equal(t, uint64(3), groups[0].Total)
	assert.Equal(t, uint64(2), groups[0].BelowLimit)
}

// Events the program never saw (here, while it was detached: as when the
// kernel skips it) leave the counts wrong until a census: it finds each
// connection no event counted and each count of one gone, says how many,
// and the counts equal the table again.
func TestACensusFindsAndCorrectsWhatMissedEventsLeft(t *testing.T) {
	l := loopback.Listen(t, "127.0.0.1")
	c := loaded(t, []uint16{l.Port()})
	held := loopback.Open(t, l, "127.0.0.95", 10)
	for _, lk := range c.links {
		require.NoError(t, lk.Close())
	}
	c.links = nil
	loopback.Open(t, l, "127.0.0.96", 5) // opens not seen
	for _, p := range held[:3] {         // closes not seen
		closeAs(t, "agent", p)
	}
	lk, err := link.AttachTracing(link.TracingOptions{Program: c.objs.Changed})
	require.NoError(t, err)
	c.links = append(c.links, lk)
	require.NotEqual(t, peerless(table(t, l.Port())), counted(t, c), "wrong before the census")

	found, err := c.Census()
	require.NoError(t, err)
	assert.Equal(t, Census{Uncounted: 5, Stale: 3}, found)
	assert.Equal(t, uint64(8), found.Drift())
	assert.Equal(t, peerless(table(t, l.Port())), counted(t, c), "right after it")
	s := snapshotOf(t, c) // the epoch of the 10: its peak
	assert.Equal(t, found, s.Audit)
	peaks := snapshotOf(t, c).Groups[0].Peaks.TopClients(10) // one with no change: the counts held through it
	require.Len(t, peaks, 2)
	assert.Equal(t, "127.0.0.95", peaks[0].Client.String())
	assert.Equal(t, 7, peaks[0].Count, "the clients' own counts corrected too")
	assert.Equal(t, 5, peaks[1].Count, "127.0.0.96's, counted by the census")

	found, err = c.Census()
	require.NoError(t, err)
	assert.Zero(t, found, "nothing left to correct")

	// The kernel's own count of the client, for its time at the limit, is
	// 7 too: a close leaves it at 6, below a limit of 8 (the 3 gone, still
	// counted, would have made it 9).
	snapshotOf(t, c, 8)
	closeAs(t, "agent", held[3])
	assert.Zero(t, snapshotOf(t, c, 8).Groups[0].AtLimit)
}

// On the agent's TLS ports (over HTTPS Consul reads the TLS handshake
// before its 429), a connection the agent reads from before it closes it
// is a refusal by the limiter's rule alone: it opened while its client
// held the limit besides it, and the agent closed it at once. It counts
// once a read of the agent's limit made after it finds the limit it was
// judged against; a read that finds another (a `consul reload` raised it)
// counts it as untracked. The same exchange from a client below the limit
// is a request served; on a plain port the rule judges nothing, whatever
// the client held (there, a request read is the agent's own evidence).
func TestOnTLSPortsAConnectionReadFromIsARefusalWhenItOpenedPastTheLimitAndAReadConfirmsIt(t *testing.T) {
	tls, plain := loopback.Listen(t, "127.0.0.1"), loopback.Listen(t, "127.0.0.1")
	c := loaded(t, []uint16{tls.Port(), plain.Port()})
	r, err := refusals.Load(btf.NewCache(), [][]uint16{{tls.Port(), plain.Port()}}, c.Shared(), nil)
	programs.Loaded(t, err)
	t.Cleanup(r.Close)
	snapshotOf(t, c, 3)
	agent := refusals.Agent{Limits: []int{3}, TLSPorts: []uint16{tls.Port()}}
	read := func(agent refusals.Agent) refusals.Snapshot {
		t.Helper()
		snap, err := r.Snapshot(10, agent)
		require.NoError(t, err)
		return snap
	}
	read(agent) // the agent's TLS port known
	loopback.Open(t, tls, "127.0.0.97", 3)
	loopback.Open(t, tls, "127.0.0.98", 1)
	handshakeThenClose := func(l *portopener.Listener, from string) {
		pairs, err := l.Open(context.Background(), netip.MustParseAddr(from), 1)
		require.NoError(t, err)
		p := pairs[0]
		_, err = p.Client.Write([]byte("\x16\x03\x01 a ClientHello"))
		require.NoError(t, err)
		_, err = p.Server.Read(make([]byte, 5)) // the agent reads from it
		require.NoError(t, err)
		_, err = p.Server.Write([]byte("HTTP/1.1 429 Too Many Requests\r\n\r\n"))
		require.NoError(t, err)
		require.NoError(t, p.Server.Close())
		p.Client.Close()
	}
	// The client's FIN first, then the agent's close with the request
	// unread: judged once, by the limiter's rule, not again by the other.
	clientFirst := func(from string) {
		pairs, err := tls.Open(context.Background(), netip.MustParseAddr(from), 1)
		require.NoError(t, err)
		p := pairs[0]
		_, err = p.Client.Write([]byte("GET / HTTP/1.1\r\n\r\n"))
		require.NoError(t, err)
		require.NoError(t, p.Client.(*net.TCPConn).CloseWrite())
		require.Eventually(t, func() bool {
			return slices.Contains(table(t, tls.Port()), "close-wait "+p.Server.LocalAddr().String()+" "+p.Client.LocalAddr().String())
		}, 5*time.Second, time.Millisecond, "the server end in CLOSE-WAIT")
		require.NoError(t, p.Server.Close())
		p.Client.Close()
	}
	handshakeThenClose(tls, "127.0.0.97")   // 3 held besides it: refused
	handshakeThenClose(tls, "127.0.0.98")   // 1 besides it: served
	handshakeThenClose(plain, "127.0.0.97") // 3 besides it, on a plain port: a request read, served
	handshakeThenClose(tls, "127.0.0.97")
	clientFirst("127.0.0.97")
	snap := read(agent)
	assert.Equal(t, 3, snap.Pending, "no read of the agent since")
	assert.Zero(t, snap.Groups[0].Total)

	agent.ReadAt = monotonicNow(t) // a read after them, of the same limit
	snap = read(agent)
	assert.Zero(t, snap.Pending)
	groups := snap.Groups
	assert.Equal(t, uint64(3), groups[0].Total)
	require.Len(t, groups[0].Top, 1)
	assert.Equal(t, "127.0.0.97", groups[0].Top[0].Client.String())
	assert.Equal(t, 3, groups[0].Top[0].Count)
	assert.Zero(t, groups[0].BelowLimit)
	assert.Zero(t, groups[0].Untracked)

	handshakeThenClose(tls, "127.0.0.97")
	agent.Limits, agent.ReadAt = []int{5}, monotonicNow(t) // the agent's limit raised meanwhile
	groups = read(agent).Groups
	assert.Equal(t, uint64(3), groups[0].Total, "judged against a limit the agent no longer had: not counted")
	assert.Equal(t, uint64(1), groups[0].Untracked, "said: it may have been one")
}

// Where the agent may have accepted a connection that opened past the limit
// while its client was below it again, the limiter's rule cannot say, and
// counts it as untracked, never as refused: the kernel counts a connection
// at its handshake, the limiter at the agent's accept, which may come
// after (Consul's HTTPS accept loop waits up to 10 ms on each client it
// refuses). So it is for one whose client let go of a slot meanwhile
// (another client's silent connections held up the accept: an answered
// request was counted as refused), and for one the agent closes a second
// or more after it opened (a refusal held up in the accept queue was
// missed, silently). One whose client closes it late was answered.
func TestOnTLSPortsAConnectionTheAgentMayHaveAcceptedBelowTheLimitIsUntracked(t *testing.T) {
	tls := loopback.Listen(t, "127.0.0.1")
	c := loaded(t, []uint16{tls.Port()})
	r, err := refusals.Load(btf.NewCache(), [][]uint16{{tls.Port()}}, c.Shared(), nil)
	programs.Loaded(t, err)
	t.Cleanup(r.Close)
	snapshotOf(t, c, 3)
	agent := refusals.Agent{Limits: []int{3}, TLSPorts: []uint16{tls.Port()}}
	read := func() refusals.Snapshot {
		t.Helper()
		agent.ReadAt = monotonicNow(t)
		snap, err := r.Snapshot(10, agent)
		require.NoError(t, err)
		return snap
	}
	read() // the agent's TLS port known
	answer := func(p portopener.Pair, closer string) {
		t.Helper()
		_, err := p.Client.Write([]byte("hello"))
		require.NoError(t, err)
		_, err = io.ReadFull(p.Server, make([]byte, 5))
		require.NoError(t, err)
		_, err = p.Server.Write([]byte("HTTP/1.1 200 OK\r\n\r\n"))
		require.NoError(t, err)
		closeAs(t, closer, p)
	}

	loopback.Open(t, tls, "127.0.0.85", 2)
	v1 := loopback.Open(t, tls, "127.0.0.85", 1)[0] // its third: below
	v2 := loopback.Open(t, tls, "127.0.0.85", 1)[0] // its fourth: past the limit
	closeAs(t, "agent", v1)                         // a slot let go before the agent took v2
	answer(v2, "agent")

	loopback.Open(t, tls, "127.0.0.86", 3)
	slow := loopback.Open(t, tls, "127.0.0.86", 2) // past the limit, both
	// What the test is of: a close after the second within which the
	// limiter refuses.
	time.Sleep(time.Second + 100*time.Millisecond)
	answer(slow[0], "agent")
	answer(slow[1], "client")

	snap := read()
	assert.Zero(t, snap.Pending, "no refusal by the rule waits")
	assert.Zero(t, snap.Groups[0].Total)
	assert.Equal(t, uint64(2), snap.Groups[0].Untracked, "the one let go of a slot before, and the one the agent closed late")
}

// monotonicNow is the kernel programs' clock now.
func monotonicNow(t *testing.T) uint64 {
	t.Helper()
	now, err := monotonic()
	require.NoError(t, err)
	return now
}

// Maps too small for the clients (--events.keys at its least): the
// connections past them are counted as lost, and their clients as not
// followed, never silently, and the counts that fit stay right; a census
// finds the lost ones uncounted, cannot count them either (nor counts them
// as lost again), and cannot move the counted ones into its new
// generation: they stay counted where they were (a full map at the audit
// zeroes no count). Once connections close, their keys go, and the
// censuses count every one.
func TestConnectionsAFullMapCannotCountAreCountedAsLostAndAFullMapZeroesNoCount(t *testing.T) {
	l := loopback.Listen(t, "127.0.0.1")
	c := loadedWith(t, minKeys, []uint16{l.Port()})
	const clients = minKeys + 20 // each from an address of its own: a key each
	var pairs []portopener.Pair
	for i := range clients {
		pairs = append(pairs, loopback.Open(t, l, netip.AddrFrom4([4]byte{127, 1, byte(i >> 8), byte(i)}).String(), 1)...)
	}
	g := snapshotOf(t, c).Groups[0]
	assert.Equal(t, uint64(20), g.Lost, "the connections past the connections map")
	assert.Zero(t, g.Unfollowed, "the client of a connection not counted is not followed either: lost says it")
	assert.Len(t, counted(t, c), minKeys, "the ones that fit, each once")

	found, err := c.Census()
	require.NoError(t, err)
	assert.Equal(t, Census{Unmoved: minKeys, Uncountable: 20}, found, "none lost counted: no room; none moved")
	for range 3 {
		assert.Len(t, counted(t, c), minKeys, "a full map at the audit zeroes no count")
		assert.Equal(t, uint64(20), snapshotOf(t, c).Groups[0].Lost, "each lost connection counted once, however many audits find it")
		found, err := c.Census()
		require.NoError(t, err)
		assert.Equal(t, uint64(20), found.Uncountable, "found uncounted by each")
	}

	for _, p := range pairs[:clients/2] {
		closeAs(t, "agent", p)
	}
	for range 4 { // each makes room the next uses
		if found, err = c.Census(); err != nil || found.Unmoved == 0 && found.Uncounted == 0 && found.Uncountable == 0 {
			break
		}
	}
	require.NoError(t, err)
	assert.Equal(t, peerless(table(t, l.Port())), counted(t, c), "every connection counted, once")
}

// A client that holds nothing is dropped from the kernel's clients at an
// audit that finds its count unchanged since the audit before, and since
// the last read of the peaks (its churn is in the totals): clients gone
// cost nothing, and leave room. A new client the full map cannot take is
// said (unfollowed, once a connection), its connections counted; the read
// that finds the map full makes room at once (rather than at the next two
// audits) and the client is followed; one dropped that comes back is
// counted from its first.
func TestClientsThatHoldNothingAreDroppedAtTheAudit(t *testing.T) {
	l := loopback.Listen(t, "127.0.0.1")
	c := loadedWith(t, minKeys, []uint16{l.Port()})
	clients := func() map[string]int {
		var (
			key   programClientKey
			state programClientState
		)
		held := map[string]int{}
		it := c.objs.ClientsHeld.Iterate()
		for it.Next(&key, &state) {
			held[netip.AddrFrom16(key.Client).Unmap().String()] = kernel.HeldCount(state.Held)
		}
		require.NoError(t, it.Err())
		return held
	}
	census := func() {
		t.Helper()
		found, err := c.Census()
		require.NoError(t, err)
		require.Zero(t, found.Drift())
	}
	for i := range minKeys {
		for _, p := range loopback.Open(t, l, netip.AddrFrom4([4]byte{127, 2, byte(i >> 8), byte(i)}).String(), 1) {
			closeAs(t, "agent", p)
		}
	}
	census()
	require.Len(t, clients(), minKeys, "changed in this epoch of the peaks: kept for its read")
	census()
	require.Len(t, clients(), minKeys, "holding nothing since this audit: kept until the next")

	stays := loopback.Open(t, l, "127.0.0.3", 2)
	assert.Equal(t, peerless(table(t, l.Port())), counted(t, c), "counted all the same")
	g := snapshotOf(t, c).Groups[0]
	assert.Equal(t, uint64(2), g.Unfollowed, "the clients map full")
	assert.Equal(t, uint64(minKeys+2), g.Opened, "the churn, in the totals")
	assert.Equal(t, map[string]int{"127.0.0.3": 2}, clients(),
		"the read that found the map full made room: the clients that hold nothing, unchanged since it, dropped; the new one followed")
	found, err := c.Census()
	require.NoError(t, err)
	assert.Zero(t, found.Drift())
	assert.Equal(t, uint64(2), snapshotOf(t, c).Groups[0].Unfollowed, "each connection not followed counted once")
	uses, _ := usesRead(t, c)
	assert.Equal(t, 2, uses[socket.UseSilent], "the connections its client was not followed for: in its uses from the census on")
	sendAndRead(t, stays[1].Client, stays[1].Server, request)
	uses, _ = usesRead(t, c)
	assert.Equal(t, map[socket.Use]int{socket.UseSilent: 1, socket.UseWaiting: 1}, uses, "and moved from them")
	back := loopback.Open(t, l, "127.2.0.7", 3)
	closeAs(t, "client", back[0])
	peaks := snapshotOf(t, c).Groups[0].Peaks.TopClients(10)
	require.Len(t, peaks, 2)
	assert.Equal(t, "127.2.0.7", peaks[0].Client.String())
	assert.Equal(t, 3, peaks[0].Count, "counted from its first again")
	assert.Equal(t, 2, peaks[1].Count)
	assert.Equal(t, peerless(table(t, l.Port())), counted(t, c))
	closeAs(t, "agent", stays[0])
	assert.Equal(t, map[string]int{"127.0.0.3": 1, "127.2.0.7": 2}, clients())
}

// Where the host's policy refuses a program the events need, the error
// says so: the program, the errno, the policy, never a lack of the
// capabilities the exporter holds.
func TestAProgramThePolicyRefusesIsSaidAsThePolicysRefusal(t *testing.T) {
	programs.NotShort(t, "loads a kernel program")
	programs.NeedRoot(t, "load a kernel program")
	programs.NeedBTF(t)
	_, err := load(btf.NewCache(), [][]uint16{{loopback.Port()}}, held, minKeys, nil, nil, policy.Refusing{policy.TCPIterator}.Load, nil)
	require.ErrorIs(t, err, ErrUnavailable)
	require.ErrorIs(t, err, kernel.ErrPolicy)
	assert.Contains(t, err.Error(), "program census")
	assert.Contains(t, err.Error(), "operation not permitted")
	assert.Contains(t, err.Error(), "a security policy (LSM) or kernel configuration refused it")
	assert.NotContains(t, err.Error(), "needs CAP_BPF")
}

// The programs load where a policy refuses map-element iterators (which
// some kernels' security modules do): they use none.
func TestTheProgramsLoadWhereMapElementIteratorsAreRefused(t *testing.T) {
	spec, err := loadProgram()
	require.NoError(t, err)
	assert.NoError(t, policy.MapElementIterators.Load(spec))
}

// The exporter's own connections to the agent (its reads of the limits)
// are never counted: a connection from a socket the exporter told of
// before the connect, as the limits' reads do, is in no count, no churn and
// no client's entry, whatever it does next; nor does a census count it.
// So whatever source address the kernel picks: towards an agent on
// 127.0.0.2, the kernel connects from 127.0.0.1.
func TestTheExportersOwnConnectionsAreNeverCounted(t *testing.T) {
	for _, at := range []string{"127.0.0.1", "127.0.0.2", "::1"} {
		t.Run(at, func(t *testing.T) {
			l := loopback.Listen(t, at)
			c := loaded(t, []uint16{l.Port()})
			d := net.Dialer{Control: func(_, _ string, raw syscall.RawConn) error {
				var err error
				if cerr := raw.Control(func(fd uintptr) { err = c.Own(int(fd)) }); cerr != nil {
					return cerr
				}
				return err
			}}
			from := "127.0.0.1"
			if netip.MustParseAddr(at).Is6() {
				from = "::1"
			}
			theirs := loopback.Open(t, l, from, 1)
			own, err := d.Dial("tcp", l.Addr().String()) // left unaccepted: its server end is open all the same
			require.NoError(t, err)
			require.Len(t, table(t, l.Port()), 2, "both open")

			rows := counted(t, c)
			require.Len(t, rows, 1, "the agent's client's alone")
			assert.NotContains(t, rows[0], own.LocalAddr().String())
			assert.Equal(t, uint64(1), snapshotOf(t, c).Groups[0].Opened)

			require.NoError(t, own.Close()) // its server end to CLOSE-WAIT
			found, err := c.Census()
			require.NoError(t, err)
			assert.Zero(t, found.Drift(), "the census does not count it either")
			assert.Len(t, counted(t, c), 1)
			closeAs(t, "agent", theirs[0])
			g := snapshotOf(t, c).Groups[0]
			assert.Equal(t, uint64(1), g.Opened)
			assert.Equal(t, [3]uint64{1, 0, 0}, g.Closed, "the agent's client's close alone")
			assert.Empty(t, counted(t, c))
		})
	}
}

// pausing is an iterator's read as the kernel makes it past a million
// objects that wrote nothing: EAGAIN, then on from where it stopped.
type pausing struct{ pauses, reads int }

func (p *pausing) Read([]byte) (int, error) {
	p.reads++
	if p.reads <= p.pauses {
		return 0, &os.PathError{Op: "read", Path: "iter", Err: unix.EAGAIN}
	}
	return 0, io.EOF
}

// A census of a table past a million sockets reads on through the kernel's
// pauses to the end; another error ends it.
func TestACensusReadsOnThroughTheKernelsPauses(t *testing.T) {
	p := &pausing{pauses: 3}
	require.NoError(t, drain(p))
	assert.Equal(t, 4, p.reads)
	assert.ErrorIs(t, drain(iotest.ErrReader(unix.EBADF)), unix.EBADF)
}

// The limits not set yet are judged at each open, in the kernel: a client
// opening its third and fourth while it holds 2 and 3 would have been
// refused both at 2; one that closes and opens again under 2 is not; a
// limit nobody reaches refuses none.
func TestEachOpenIsJudgedAgainstTheLimitsNotSetYet(t *testing.T) {
	programs.NotShort(t, "loads a kernel program")
	programs.NeedRoot(t, "load a kernel program")
	programs.NeedBTF(t)
	l := loopback.Listen(t, "127.0.0.1")
	c, err := load(btf.NewCache(), [][]uint16{{l.Port()}}, held, 1<<16, rootListens([]uint16{l.Port()}), [][]int{{2, 100}}, nil, nil)
	programs.Loaded(t, err)
	t.Cleanup(c.Close)

	loopback.Open(t, l, "127.0.0.31", 4)
	coming := loopback.Open(t, l, "127.0.0.32", 2)
	closeAs(t, "agent", coming[0])
	loopback.Open(t, l, "127.0.0.32", 1)
	got := snapshotOf(t, c).Groups[0].WhatIf
	assert.Equal(t, []whatif.Limit{
		{Limit: 2, Refused: 2, Clients: []tally.ClientCount{{Client: netip.MustParseAddr("127.0.0.31"), Count: 2}}},
		{Limit: 100},
	}, got)

	_, err = load(btf.NewCache(), [][]uint16{{l.Port()}}, held, 1<<16, nil, [][]int{{1, 2, 3, 4, 5}}, nil, nil)
	assert.ErrorContains(t, err, "at most 4 limits not set yet a group")
}
