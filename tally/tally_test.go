package tally

import (
	"net/netip"
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/consul-conn-exporter/consul-conn-exporter/parser"
)

func socket(state parser.State, local, peer string) parser.Socket {
	return parser.Socket{State: state, Local: netip.MustParseAddrPort(local), Peer: netip.MustParseAddrPort(peer)}
}

func TestAddCountsServerSideSocketsOfWatchedPortsAndStates(t *testing.T) {
	counts := New([]uint16{8500, 8501}, []parser.State{parser.StateEstablished, parser.StateCloseWait})
	for _, s := range []parser.Socket{
		socket(parser.StateEstablished, "127.0.0.1:8500", "10.0.0.5:40000"),
		socket(parser.StateEstablished, "[::ffff:127.0.0.2]:8500", "[::ffff:10.0.0.5]:40001"), // same client
		socket(parser.StateCloseWait, "127.0.0.1:8501", "10.0.0.5:40002"),
		socket(parser.StateEstablished, "[::1]:8500", "[::1]:40003"),
		socket(parser.StateEstablished, "10.0.0.5:40000", "127.0.0.1:8500"), // client side: peer port
		socket(parser.StateTimeWait, "127.0.0.1:8500", "10.0.0.6:40004"),
		socket(parser.StateListen, "127.0.0.1:8500", "0.0.0.0:0"),
		socket(parser.StateEstablished, "127.0.0.1:9000", "10.0.0.7:40005"), // unwatched port
	} {
		counts.Add(s)
	}
	assert.Equal(t, 3, counts.Total(8500))
	assert.Equal(t, 1, counts.Total(8501))
	assert.Equal(t, 0, counts.Total(9000))
	assert.Equal(t, 1, counts.ByState(8501, parser.StateCloseWait))
	assert.Equal(t, 3, counts.MaxPerClient())
	assert.Equal(t, []ClientCount{
		{netip.MustParseAddr("10.0.0.5"), 3},
		{netip.IPv6Loopback(), 1},
	}, counts.TopClients(10))
}

func TestTopClientsBreaksTiesByAddress(t *testing.T) {
	counts := New([]uint16{8500}, []parser.State{parser.StateEstablished})
	for _, peer := range []string{"10.0.0.9:1", "10.0.0.10:1", "[::1]:1", "10.0.0.2:1", "10.0.0.2:2"} {
		counts.Add(socket(parser.StateEstablished, "127.0.0.1:8500", peer))
	}
	assert.Equal(t, []ClientCount{
		{netip.MustParseAddr("10.0.0.2"), 2},
		{netip.MustParseAddr("10.0.0.9"), 1},
		{netip.MustParseAddr("10.0.0.10"), 1},
	}, counts.TopClients(3))
	assert.Empty(t, counts.TopClients(0))
}

func TestEmptyTallyIsZeroEverywhere(t *testing.T) {
	counts := New([]uint16{8500}, []parser.State{parser.StateEstablished})
	assert.Equal(t, 0, counts.Total(8500))
	assert.Equal(t, 0, counts.MaxPerClient())
	assert.Empty(t, counts.TopClients(10))
}
