package owners

import (
	"context"
	"encoding/binary"
	"net"
	"testing"

	"github.com/cilium/ebpf/btf"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/consul-conn-exporter/consul-conn-exporter/internal/testkit/programs"
)

func record(inode uint64, comm string) []byte {
	r := make([]byte, recordSize)
	binary.NativeEndian.PutUint64(r, inode)
	copy(r[8:], comm)
	return r
}

func TestTheKernelsRecordsNameTheWantedSocketsOnce(t *testing.T) {
	var records []byte
	for _, r := range [][]byte{record(111, "nomad"), record(333, "other"), record(222, "bad\xff\x1b"), record(111, "a-child"), record(444, "0123456789abcdef")} {
		records = append(records, r...)
	}
	names := want(111, 222, 444, 999)
	assert.Equal(t, 3, nameFrom(append(records, 1, 2, 3), names), "a record read in part waits for its rest")
	assert.Equal(t, map[uint64]string{111: "nomad", 222: "bad\uFFFD\\x1b", 444: "0123456789abcdef", 999: ""}, names,
		"the first holder names a socket; a name of all 16 bytes has no NUL")
}

func TestTheKernelsListNamesWhatTheWalkOfProcNames(t *testing.T) {
	programs.NotShort(t, "loads a kernel program")
	programs.NeedRoot(t, "load a kernel program")
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	client, err := net.Dial("tcp", l.Addr().String())
	require.NoError(t, err)
	defer client.Close()
	server, err := l.Accept()
	require.NoError(t, err)
	defer server.Close()
	inodes := append(socketInodes(t, l.(*net.TCPListener), client.(*net.TCPConn), server.(*net.TCPConn)), 1<<62)

	it, err := LoadIterator(btf.NewCache())
	programs.Loaded(t, err)
	defer it.Close()
	require.NoError(t, it.Check())
	fromKernel, fromProc := want(inodes...), want(inodes...)
	res, err := it.Names(context.Background(), fromKernel)
	require.NoError(t, err)
	_, err = Proc("/proc").Names(context.Background(), fromProc)
	require.NoError(t, err)
	assert.Equal(t, fromProc, fromKernel)
	assert.Equal(t, 3, res.Found, "1<<62 is nobody's")
	assert.NotEmpty(t, fromKernel[inodes[0]])

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err = it.Names(ctx, want(inodes...))
	assert.ErrorContains(t, err, "gave up after 0 of 4 sockets")
}
