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
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/consul-conn-exporter/consul-conn-exporter/internal/table/socket"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/testkit/portopener"
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

// MixCounted is how many sockets of Mix's listeners count: ESTABLISHED and
// CLOSE-WAIT server sides.
const MixCounted = 20 + 7 + 5 + 2

// Mix opens a known mix of connections and returns the listeners to watch:
// 20 from 127.0.0.11 and 2 in CLOSE-WAIT from 127.0.0.15 on v4, 7 on the
// IPv6 loopback, 5 from 127.0.0.13 on a v4-mapped listener; and 4 on a
// listener that is not returned, to leave unwatched.
func Mix(t testing.TB) (v4, v6, mapped *portopener.Listener) {
	t.Helper()
	v4, v6, mapped, other := Listen(t, "127.0.0.1"), Listen(t, "::1"), Listen(t, "::ffff:127.0.0.2"), Listen(t, "127.0.0.1")
	Open(t, v4, "127.0.0.11", 20)
	Open(t, v6, "::1", 7)
	Open(t, mapped, "127.0.0.13", 5)
	Open(t, other, "127.0.0.14", 4)
	for _, pair := range Open(t, v4, "127.0.0.15", 2) {
		require.NoError(t, pair.Client.Close())
		_, err := pair.Server.Read(make([]byte, 1))
		require.Error(t, err, "EOF: the server's socket is in CLOSE-WAIT")
	}
	return v4, v6, mapped
}

// InodeOf is the inode of conn's socket, as /proc/self/fd names it: what
// ss -e, netstat -e and the kernel's socket table name its program by.
func InodeOf(t testing.TB, conn syscall.Conn) uint64 {
	t.Helper()
	raw, err := conn.SyscallConn()
	require.NoError(t, err)
	var link string
	require.NoError(t, raw.Control(func(fd uintptr) {
		link, err = os.Readlink(fmt.Sprintf("/proc/self/fd/%d", fd))
	}))
	require.NoError(t, err)
	var inode uint64
	_, err = fmt.Sscanf(link, "socket:[%d]", &inode)
	require.NoError(t, err, link)
	return inode
}
