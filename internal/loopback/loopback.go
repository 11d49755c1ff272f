// Package loopback holds real connections open on loopback for tests:
// listeners on free ports, and clients from chosen 127.0.0.x or ::1
// addresses, closed when the test ends.
package loopback

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"slices"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/consul-conn-exporter/consul-conn-exporter/portopener"
	"github.com/consul-conn-exporter/consul-conn-exporter/socket"
)

var (
	mu   sync.Mutex
	used = map[uint16]bool{}
)

// Port is a random port below Linux's ephemeral range (32768 and up) that
// no earlier call in this process gave out. A listener on an ephemeral port
// would be ambiguous: a client socket from another 127.0.0.x address may
// be given the same port as its own local port, and then look like a
// server-side socket of the listener. And two listeners on the same port of
// two addresses would each see the other's connections in a port filter.
func Port() uint16 {
	mu.Lock()
	defer mu.Unlock()
	for {
		if p := uint16(10000 + rand.IntN(20000)); !used[p] {
			used[p] = true
			return p
		}
	}
}

// Listen opens a listener on a free port of addr. Where the machine has no
// IPv6 loopback, an IPv6 listener skips the test, but under CI=true.
func Listen(t testing.TB, addr string) *portopener.Listener {
	t.Helper()
	ip := netip.MustParseAddr(addr)
	var (
		l   *portopener.Listener
		err error
	)
	for range 100 {
		if l, err = portopener.Listen(netip.AddrPortFrom(ip, Port())); err == nil {
			break
		}
	}
	if err != nil && ip.Is6() && !ip.Is4In6() && os.Getenv("CI") != "true" {
		t.Skipf("no IPv6 loopback here: %v", err)
	}
	require.NoError(t, err)
	t.Cleanup(func() { l.Close() })
	return l
}

// Open opens n connections to l from the address from.
func Open(t testing.TB, l *portopener.Listener, from string, n int) []portopener.Pair {
	t.Helper()
	pairs, err := l.Open(context.Background(), netip.MustParseAddr(from), n)
	require.NoError(t, err)
	t.Cleanup(func() { portopener.CloseAll(pairs) })
	return pairs
}

// Reader is what reads a socket table: a source, or the built-in reader.
type Reader interface {
	Read(ctx context.Context, add func(socket.Socket), reset func()) error
}

// Rows are the sockets r reads, as "state local peer", sorted: one reader's
// rows compare with another's.
func Rows(t testing.TB, r Reader) []string {
	t.Helper()
	var rows []string
	require.NoError(t, r.Read(context.Background(), func(s socket.Socket) {
		rows = append(rows, fmt.Sprintf("%s %s %s", s.State, s.Local, s.Peer))
	}, func() { rows = nil }))
	slices.Sort(rows)
	return rows
}
