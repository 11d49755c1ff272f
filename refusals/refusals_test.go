package refusals

import (
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/consul-conn-exporter/consul-conn-exporter/internal/loopback"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/programs"
	"github.com/consul-conn-exporter/consul-conn-exporter/tally"
)

// resetFrom has the server end of a connection from client close with the
// client's data unread, as Consul closes a refused connection: the kernel
// resets it.
func resetFrom(t *testing.T, l net.Listener, client string) {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(client)}}
	conn, err := d.Dial("tcp", l.Addr().String())
	require.NoError(t, err)
	defer conn.Close()
	_, err = conn.Write([]byte("GET /v1/agent/self HTTP/1.1\r\n\r\n"))
	require.NoError(t, err)
	server, err := l.Accept()
	require.NoError(t, err)
	require.NoError(t, conn.SetReadDeadline(time.Now().Add(5*time.Second)))
	require.NoError(t, server.Close()) // unread data: RST
	_, err = conn.Read(make([]byte, 1))
	require.ErrorIs(t, err, syscall.ECONNRESET, "the reset")
}

func TestCountsTheResetsOfWatchedPortsPerClient(t *testing.T) {
	programs.NotShort(t, "loads a kernel program")
	programs.NeedRoot(t, "load a kernel program")
	watched, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer watched.Close()
	other, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer other.Close()
	port := uint16(watched.Addr().(*net.TCPAddr).Port)

	c, err := Load([][]uint16{{port}, {}})
	require.NoError(t, err)
	defer c.Close()
	for range 3 {
		resetFrom(t, watched, "127.0.0.33")
	}
	resetFrom(t, watched, "127.0.0.34")
	resetFrom(t, other, "127.0.0.35") // not watched
	// A connection refused for no socket at all (nothing listens there):
	// NO_SOCKET, not a refusal.
	closed := loopback.Port()
	_, err = net.DialTimeout("tcp", netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), closed).String(), time.Second)
	require.Error(t, err)

	groups, err := c.Snapshot(10)
	require.NoError(t, err)
	assert.Equal(t, uint64(4), groups[0].Total)
	assert.Equal(t, []tally.ClientCount{{Client: netip.MustParseAddr("127.0.0.33"), Count: 3}, {Client: netip.MustParseAddr("127.0.0.34"), Count: 1}}, groups[0].Top)
	assert.Zero(t, groups[1].Total)
	assert.Empty(t, groups[1].Top)
}
