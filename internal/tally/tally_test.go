package tally

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"

	"github.com/consul-conn-exporter/consul-conn-exporter/internal/table/socket"
)

func sock(state socket.State, local, peer string) socket.Socket {
	return socket.Socket{State: state, Local: netip.MustParseAddrPort(local), Peer: netip.MustParseAddrPort(peer)}
}

func TestAddCountsServerSideSocketsOfWatchedPortsAndStates(t *testing.T) {
	counts := New([]uint16{8500, 8501}, []socket.State{socket.StateEstablished, socket.StateCloseWait})
	for _, s := range []socket.Socket{
		sock(socket.StateEstablished, "127.0.0.1:8500", "10.0.0.5:40000"),
		sock(socket.StateEstablished, "[::ffff:127.0.0.2]:8500", "[::ffff:10.0.0.5]:40001"), // same client
		sock(socket.StateCloseWait, "127.0.0.1:8501", "10.0.0.5:40002"),
		sock(socket.StateEstablished, "[::1]:8500", "[::1]:40003"),
		sock(socket.StateEstablished, "10.0.0.5:40000", "127.0.0.1:8500"), // client side: peer port
		sock(socket.StateTimeWait, "127.0.0.1:8500", "10.0.0.6:40004"),
		sock(socket.StateListen, "127.0.0.1:8500", "0.0.0.0:0"),
		sock(socket.StateEstablished, "127.0.0.1:9000", "10.0.0.7:40005"), // unwatched port
	} {
		counts.Add(s)
	}
	assert.Equal(t, 3, counts.Total(8500))
	assert.Equal(t, 1, counts.Total(8501))
	assert.Equal(t, 0, counts.Total(9000))
	assert.Equal(t, 1, counts.ByState(8501, socket.StateCloseWait))
	assert.Equal(t, 3, counts.MaxPerClient())
	assert.Equal(t, []ClientCount{
		{netip.MustParseAddr("10.0.0.5"), 3},
		{netip.IPv6Loopback(), 1},
	}, counts.TopClients(10))
}

func TestTopClientsBreaksTiesByAddress(t *testing.T) {
	counts := New([]uint16{8500}, []socket.State{socket.StateEstablished})
	for _, peer := range []string{"10.0.0.9:1", "10.0.0.10:1", "[::1]:1", "10.0.0.2:1", "10.0.0.2:2"} {
		counts.Add(sock(socket.StateEstablished, "127.0.0.1:8500", peer))
	}
	assert.Equal(t, []ClientCount{
		{netip.MustParseAddr("10.0.0.2"), 2},
		{netip.MustParseAddr("10.0.0.9"), 1},
		{netip.MustParseAddr("10.0.0.10"), 1},
	}, counts.TopClients(3))
	assert.Empty(t, counts.TopClients(0))
}

func TestClientsHoldingCountsEveryClientAtOrPastN(t *testing.T) {
	counts := New([]uint16{8500}, []socket.State{socket.StateEstablished})
	for _, peer := range []string{"10.0.0.1:1", "10.0.0.1:2", "10.0.0.1:3", "10.0.0.2:1", "10.0.0.2:2", "[::ffff:10.0.0.2]:3", "10.0.0.3:1"} {
		counts.Add(sock(socket.StateEstablished, "127.0.0.1:8500", peer))
	}
	assert.Equal(t, 3, counts.ClientsHolding(1))
	assert.Equal(t, 2, counts.ClientsHolding(3), "at and past it, the v4-mapped address one client")
	assert.Equal(t, 0, counts.ClientsHolding(4))
}

func TestEmptyTallyIsZeroEverywhere(t *testing.T) {
	counts := New([]uint16{8500}, []socket.State{socket.StateEstablished})
	assert.Equal(t, 0, counts.Total(8500))
	assert.Equal(t, 0, counts.MaxPerClient())
	assert.Equal(t, 0, counts.ClientsHolding(1))
	assert.Empty(t, counts.TopClients(10))
}

func TestTopClientsIntoAllocatesNothingWithRoom(t *testing.T) {
	counts := New([]uint16{8500}, []socket.State{socket.StateEstablished})
	for i := range 300 { // squares mod 50: uneven counts over fewer than 50 clients
		counts.Add(sock(socket.StateEstablished, "127.0.0.1:8500", fmt.Sprintf("10.0.0.%d:%d", (i*i)%50, 40000+i)))
	}
	dst := make([]ClientCount, 0, 5)
	assert.Equal(t, counts.TopClients(5), counts.TopClientsInto(dst, 5))
	assert.Zero(t, testing.AllocsPerRun(10, func() { dst = counts.TopClientsInto(dst, 5) }))
	all := counts.TopClients(1000)
	assert.Less(t, len(all), 50)
	for i := 1; i < len(all); i++ {
		assert.GreaterOrEqual(t, all[i-1].Count, all[i].Count, "most first")
	}
	assert.Empty(t, counts.TopClients(0))
}

// Uses are counted per group and per client where the source tells them;
// the rest, a client's v4-mapped sockets included with its own, are of
// unknown use, and every count adds up to the total.
func TestUsesAddUpToTheTotalWithTheRestUnknown(t *testing.T) {
	counts := New([]uint16{8500}, []socket.State{socket.StateEstablished, socket.StateCloseWait})
	used := func(s socket.Socket, u socket.Use) socket.Socket { s.Use = u; return s }
	for _, s := range []socket.Socket{
		used(sock(socket.StateEstablished, "127.0.0.1:8500", "10.0.0.5:40000"), socket.UseWaiting),
		used(sock(socket.StateEstablished, "[::ffff:127.0.0.1]:8500", "[::ffff:10.0.0.5]:40001"), socket.UseWaiting),
		used(sock(socket.StateCloseWait, "127.0.0.1:8500", "10.0.0.5:40002"), socket.UseHalfClosed),
		sock(socket.StateEstablished, "127.0.0.1:8500", "10.0.0.5:40003"),
		used(sock(socket.StateEstablished, "127.0.0.1:8500", "10.0.0.6:40004"), socket.UseIdle),
		used(sock(socket.StateEstablished, "10.0.0.5:40000", "127.0.0.1:8500"), socket.UseIdle), // client side
	} {
		counts.Add(s)
	}
	client := netip.MustParseAddr("10.0.0.5")
	assert.Equal(t, 2, counts.ByUse(socket.UseWaiting))
	counts.Add(socket.Socket{State: socket.StateEstablished, Local: netip.MustParseAddrPort("127.0.0.1:8500"), Peer: netip.MustParseAddrPort("10.0.0.7:1"),
		Use: socket.UseIdle, Traffic: socket.Traffic{BytesReceived: 9, BytesSent: 9, SinceReceived: 3_600_004, SinceSent: 3_600_000}})
	assert.Equal(t, time.Hour, counts.Longest(socket.UseIdle), "idle since its answer")
	assert.Zero(t, counts.Longest(socket.UseSilent))
	assert.Equal(t, 2, counts.ByUse(socket.UseIdle))
	assert.Equal(t, 1, counts.ByUse(socket.UseHalfClosed))
	assert.Equal(t, 1, counts.ByUse(socket.UseUnknown))
	assert.Equal(t, 0, counts.ByUse(socket.UseSilent))
	assert.Equal(t, 2, counts.ClientByUse(client, socket.UseWaiting))
	assert.Equal(t, 1, counts.ClientByUse(client, socket.UseUnknown))
	assert.Equal(t, 0, counts.ClientByUse(client, socket.UseIdle))
	total := 0
	for _, u := range socket.Uses {
		total += counts.ByUse(u)
	}
	assert.Equal(t, counts.Total(8500), total)
}

// A half-closed connection's client end is in FIN-WAIT-2 while the
// program that shut its side holds it: that program holds the slot. Once
// closed, it lingers orphaned, with no inode, and names nobody.
func TestAHalfClosedConnectionsProgramIsItsShutDownClientEnds(t *testing.T) {
	server := netip.MustParseAddrPort("127.0.0.1:8500")
	held, orphaned := netip.MustParseAddrPort("127.0.0.5:40001"), netip.MustParseAddrPort("127.0.0.5:40002")
	p := NewProcesses([]uint16{8500}, []socket.State{socket.StateEstablished, socket.StateCloseWait})
	for _, s := range []socket.Socket{
		{State: socket.StateCloseWait, Local: server, Peer: held, Use: socket.UseHalfClosed},
		{State: socket.StateFinWait2, Local: held, Peer: server, Inode: 7},
		{State: socket.StateCloseWait, Local: server, Peer: orphaned, Use: socket.UseHalfClosed},
		{State: socket.StateFinWait2, Local: orphaned, Peer: server},
	} {
		p.Add(s)
	}
	assert.Equal(t, map[uint64]string{7: ""}, p.Unnamed())
	counts, unknown := p.Held(map[uint64]string{7: "consul-template"})
	want := ProcessCount{Client: held.Addr(), Process: "consul-template", Count: 1}
	want.ByUse[socket.UseHalfClosed] = 1
	assert.Equal(t, []ProcessCount{want}, counts)
	assert.Equal(t, Unknown{}, unknown)
}
