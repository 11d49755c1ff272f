package events

import (
	"context"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf/btf"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/consul-conn-exporter/consul-conn-exporter/internal/loopback"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/programs"
	"github.com/consul-conn-exporter/consul-conn-exporter/portopener"
	"github.com/consul-conn-exporter/consul-conn-exporter/sockdiag"
	"github.com/consul-conn-exporter/consul-conn-exporter/socket"
)

var held = []socket.State{socket.StateEstablished, socket.StateCloseWait}

func load(t *testing.T, groups ...[]uint16) *Counter {
	t.Helper()
	programs.NotShort(t, "loads a kernel program")
	programs.NeedRoot(t, "load a kernel program")
	programs.NeedBTF(t)
	c, err := Load(btf.NewCache(), groups, held)
	require.NoError(t, err)
	t.Cleanup(c.Close)
	return c
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
	c := load(t, ports)
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
	c := load(t, ports)
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
		found, err := c.Census()
		require.NoError(t, err)
		require.Zero(t, found, "census %d under churn found something uncounted or stale", censuses)
	}
	t.Logf("%d censuses under churn", censuses)
	require.Eventually(t, func() bool { return len(table(t, ports...)) == 50 }, 5*time.Second, 10*time.Millisecond, "the churn's server ends closed")
	assert.Equal(t, peerless(table(t, ports...)), counted(t, c))
}

func TestAnotherNamespacesConnectionsNeverCount(t *testing.T) {
	l := loopback.Listen(t, "127.0.0.1")
	c := load(t, []uint16{l.Port()})
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


