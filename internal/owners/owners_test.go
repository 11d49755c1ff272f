package owners

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/consul-conn-exporter/consul-conn-exporter/internal/testkit/loopback"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// process lays out dir/PID as the kernel does: comm, and fd/N links.
func process(t *testing.T, proc, pid, comm string, links map[string]string) {
	t.Helper()
	fd := filepath.Join(proc, pid, "fd")
	require.NoError(t, os.MkdirAll(fd, 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(proc, pid, "comm"), []byte(comm+"\n"), 0o644))
	for n, target := range links {
		require.NoError(t, os.Symlink(target, filepath.Join(fd, n)))
	}
}

func want(inodes ...uint64) map[uint64]string {
	w := map[uint64]string{}
	for _, i := range inodes {
		w[i] = ""
	}
	return w
}

func TestNamesTheWantedSocketsByTheirHoldersComm(t *testing.T) {
	proc := t.TempDir()
	process(t, proc, "100", "nomad", map[string]string{"0": "/dev/null", "3": "socket:[111]", "4": "socket:[112]", "5": "pipe:[9]"})
	process(t, proc, "200", "bad\xff\x1b", map[string]string{"7": "socket:[222]"})
	process(t, proc, "300", "other", map[string]string{"1": "socket:[333]"})
	require.NoError(t, os.WriteFile(filepath.Join(proc, "meminfo"), nil, 0o644))
	require.NoError(t, os.MkdirAll(filepath.Join(proc, "sys"), 0o755))

	names := want(111, 222, 999)
	res, err := Proc(proc).Names(context.Background(), names)
	require.NoError(t, err)
	assert.Equal(t, map[uint64]string{111: "nomad", 222: "bad\uFFFD\\x1b", 999: ""}, names, "999 is nobody's: closed meanwhile")
	assert.Equal(t, 2, res.Found)
	assert.Zero(t, res.Unreadable)
}

// socketInodes are the inodes of c's sockets, seen from this process.
func socketInodes(t *testing.T, conns ...syscall.Conn) []uint64 {
	t.Helper()
	var inodes []uint64
	for _, c := range conns {
		inodes = append(inodes, loopback.InodeOf(t, c))
	}
	return inodes
}

func TestARealSocketOfThisProcess(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	inode := socketInodes(t, l.(*net.TCPListener))[0]

	comm, err := os.ReadFile("/proc/self/comm")
	require.NoError(t, err)
	names := want(inode)
	_, err = Proc("/proc").Names(context.Background(), names)
	require.NoError(t, err)
	assert.Equal(t, strings.TrimSpace(string(comm)), names[inode])
}

// A socket's descriptor far past the others: reading by number stops at
// the hole and says so, and the listing finds it.
func TestADescriptorPastAHoleIsFoundByTheListing(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	f, err := l.(*net.TCPListener).File()
	require.NoError(t, err)
	defer f.Close()
	const far = 900
	require.NoError(t, unix.Dup3(int(f.Fd()), far, unix.O_CLOEXEC))
	defer unix.Close(far)
	inode := loopback.InodeOf(t, l.(*net.TCPListener))
	require.NoError(t, f.Close())
	require.NoError(t, l.Close()) // only the far one holds the socket now

	fdDir, err := unix.Open("/proc/self/fd", unix.O_RDONLY|unix.O_DIRECTORY, 0)
	require.NoError(t, err)
	defer unix.Close(fdDir)
	w := fdWalk{ctx: context.Background(), dir: "/proc/self", fdDir: fdDir, names: map[uint64]string{}, link: make([]byte, 64)}
	assert.False(t, w.byNumber(make([]byte, 64)), "descriptor %d is past the hole", far)

	names := want(inode)
	_, err = Proc("/proc").Names(context.Background(), names)
	require.NoError(t, err)
	assert.NotEmpty(t, names[inode])
}

func TestTheBudgetAndAMissingProcFailTheLookup(t *testing.T) {
	proc := t.TempDir()
	process(t, proc, "100", "nomad", map[string]string{"3": "socket:[111]"})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := Proc(proc).Names(ctx, want(111))
	assert.ErrorContains(t, err, "gave up after 0 of 1 sockets")

	_, err = Proc(filepath.Join(proc, "absent")).Names(context.Background(), want(111))
	assert.ErrorContains(t, err, "cannot read")
	res, err := Proc(filepath.Join(proc, "absent")).Names(context.Background(), nil)
	assert.NoError(t, err, "nothing wanted, nothing read")
	assert.Zero(t, res.Found)
}

func TestSocketInode(t *testing.T) {
	for link, want := range map[string]uint64{"socket:[12345]": 12345, "socket:[0]": 0} {
		n, ok := socketInode([]byte(link))
		assert.True(t, ok, link)
		assert.Equal(t, want, n)
	}
	for _, link := range []string{"pipe:[1]", "socket:[]", "socket:[12a]", "socket:[1", "/dev/null"} {
		_, ok := socketInode([]byte(link))
		assert.False(t, ok, link)
	}
}
