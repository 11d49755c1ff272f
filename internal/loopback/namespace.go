package loopback

import (
	"runtime"
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
