package loopback

import (
	"net"
	"net/netip"
	"runtime"
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// InNewNamespace runs f on a thread of its own in a new network namespace
// (with its loopback up), as a container's or another user's would be: the
// sockets f opens live there, whichever thread reads them later. It needs
// root (CAP_SYS_ADMIN). The thread never leaves the namespace: it ends
// with f.
func InNewNamespace(t testing.TB, f func()) {
	t.Helper()
	failed := make(chan any, 1)
	go func() {
		defer func() { failed <- recover() }()
		runtime.LockOSThread() // never unlocked: the thread goes with the goroutine
		require.NoError(t, unix.Unshare(unix.CLONE_NEWNET), "a new network namespace")
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		require.NoError(t, err)
		defer unix.Close(fd)
		lo, err := unix.NewIfreq("lo")
		require.NoError(t, err)
		require.NoError(t, unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, lo))
		lo.SetUint16(lo.Uint16() | unix.IFF_UP)
		require.NoError(t, unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, lo), "bringing lo up")
		f()
	}()
	if p := <-failed; p != nil {
		panic(p)
	}
}

// AsUser runs f on a thread whose file system user is uid: the sockets it
// makes are that user's as the kernel keeps them (their sk_uid), as
// another local user's would be. It needs root. The thread never serves
// another goroutine: it ends with f.
func AsUser(t testing.TB, uid int, f func()) {
	t.Helper()
	failed := make(chan any, 1)
	go func() {
		defer func() { failed <- recover() }()
		runtime.LockOSThread() // never unlocked: the thread goes with the goroutine
		unix.Setfsuid(uid)
		f()
	}()
	if p := <-failed; p != nil {
		panic(p)
	}
}

// Forge binds n sockets to port at the IPv4 addresses from first on, each
// connected out to a listener of its own on 127.0.0.1, as any local user
// can: sockets whose local port is the agent's, that no listener of the
// agent accepted. Each listener's end has written one byte, left unread.
func Forge(t testing.TB, port uint16, first string, n int) []net.Conn {
	t.Helper()
	var conns []net.Conn
	addr := netip.MustParseAddr(first)
	for range n {
		l, err := net.Listen("tcp4", "127.0.0.1:0")
		require.NoError(t, err)
		t.Cleanup(func() { l.Close() })
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: addr.AsSlice(), Port: int(port)}, Control: func(_, _ string, raw syscall.RawConn) error {
			var err error
			if cerr := raw.Control(func(fd uintptr) { err = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1) }); cerr != nil {
				return cerr
			}
			return err
		}}
		c, err := d.Dial("tcp4", l.Addr().String())
		require.NoError(t, err)
		t.Cleanup(func() { c.Close() })
		s, err := l.Accept()
		require.NoError(t, err)
		t.Cleanup(func() { s.Close() })
		_, err = s.Write([]byte{'x'})
		require.NoError(t, err)
		conns = append(conns, c)
		addr = addr.Next()
	}
	return conns
}
