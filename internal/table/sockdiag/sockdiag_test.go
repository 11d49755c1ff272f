package sockdiag

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mdlayher/netlink"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/consul-conn-exporter/consul-conn-exporter/internal/table/socket"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/testkit/loopback"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/testkit/portopener"
)

var counted = []socket.State{socket.StateEstablished, socket.StateCloseWait}

// The kernel filters the table to the watched ports and states; the
// comparison with ss's own rows is in package source.
func TestReadsTheWatchedPortsAndStates(t *testing.T) {
	v4, v6, mapped := loopback.Mix(t)
	ports := []uint16{v4.Port(), v6.Port(), mapped.Port()}
	rows := loopback.Rows(t, New(ports, nil, counted, 10*time.Second))
	assert.Len(t, rows, loopback.MixCounted)
	assert.Contains(t, strings.Join(rows, "\n"), fmt.Sprintf("close-wait 127.0.0.1:%d 127.0.0.15:", v4.Port()))
	assert.Contains(t, strings.Join(rows, "\n"), fmt.Sprintf("established [::ffff:127.0.0.2]:%d [::ffff:127.0.0.13]:", mapped.Port()))

	// One port, one state: the kernel filters both.
	rows = loopback.Rows(t, New([]uint16{v6.Port()}, nil, []socket.State{socket.StateEstablished}, 10*time.Second))
	assert.Len(t, rows, 7)
	rows = loopback.Rows(t, New([]uint16{v4.Port()}, nil, []socket.State{socket.StateCloseWait}, 10*time.Second))
	assert.Len(t, rows, 2)
}

func TestAProgramTheKernelRefusesFailsTheRead(t *testing.T) {
	// A condition whose jump lands inside itself: the kernel's audit of the
	// bytecode answers the dump with an NLMSG_ERROR (EINVAL).
	r := New([]uint16{8500}, nil, counted, 10*time.Second)
	r.bytecode[1] = 4
	err := r.Read(context.Background(), func(socket.Socket) { t.Fatal("a socket from a refused dump") }, func() {})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "invalid argument: the kernel refused the request")
}

func TestAnInterruptedDumpIsReadAgainOnceThenFails(t *testing.T) {
	dumps, resets := 0, 0
	interruptedTwice := func() error { dumps++; return errInterrupted }
	err := retryOnce(interruptedTwice, func() { resets++ })
	assert.Equal(t, 2, dumps)
	assert.Equal(t, 1, resets, "the first dump's sockets are dropped before the second")
	require.Error(t, err)
	assert.Equal(t, "netlink sock_diag: the socket table changed during the dump, twice in a row", err.Error())

	dumps = 0
	interruptedOnce := func() error {
		if dumps++; dumps == 1 {
			return errInterrupted
		}
		return nil
	}
	assert.NoError(t, retryOnce(interruptedOnce, func() {}))
	assert.Equal(t, 2, dumps)
}

// message is an inet_diag_msg as the kernel sends it.
func message(family, state byte, local, peer netip.AddrPort) []byte {
	b := make([]byte, msgLen)
	b[0], b[1] = family, state
	b[4], b[5] = byte(local.Port()>>8), byte(local.Port())
	b[6], b[7] = byte(peer.Port()>>8), byte(peer.Port())
	if family == 2 {
		a, p := local.Addr().As4(), peer.Addr().As4()
		copy(b[8:], a[:])
		copy(b[24:], p[:])
	} else {
		a, p := local.Addr().As16(), peer.Addr().As16()
		copy(b[8:], a[:])
		copy(b[24:], p[:])
	}
	return b
}

// frame puts messages into one datagram as the kernel does, with
// netlink's own encoding.
func frame(t testing.TB, msgs ...netlink.Message) []byte {
	var b []byte
	for _, m := range msgs {
		m.Header.Length = uint32(16 + len(m.Data))
		enc, err := m.MarshalBinary()
		require.NoError(t, err)
		b = append(b, enc...)
	}
	return b
}

func socketMessage(flags netlink.HeaderFlags) netlink.Message {
	return netlink.Message{Header: netlink.Header{Type: sockDiagByFamily, Flags: flags | netlink.Multi},
		Data: message(2, 1, netip.MustParseAddrPort("127.0.0.1:8500"), netip.MustParseAddrPort("127.0.0.9:40000"))}
}

var doneMessage = netlink.Message{Header: netlink.Header{Type: netlink.Done, Flags: netlink.Multi}, Data: make([]byte, 4)}

func TestDatagramsDecodeInPlaceUntilDone(t *testing.T) {
	var got []socket.Socket
	add := func(s socket.Socket) { got = append(got, s) }
	done, interrupted, err := datagram(frame(t, socketMessage(0), socketMessage(0)), add)
	require.NoError(t, err)
	assert.False(t, done)
	assert.False(t, interrupted)
	done, _, err = datagram(frame(t, socketMessage(0), doneMessage), add)
	require.NoError(t, err)
	assert.True(t, done)
	require.Len(t, got, 3)
	assert.Equal(t, "127.0.0.9:40000", got[0].Peer.String())

	_, interrupted, err = datagram(frame(t, socketMessage(netlink.DumpInterrupted)), add)
	require.NoError(t, err)
	assert.True(t, interrupted, "NLM_F_DUMP_INTR")
}

func TestDatagramsRefuseErrorsAndStrangeMessages(t *testing.T) {
	add := func(socket.Socket) {}
	eperm := netlink.Message{Header: netlink.Header{Type: netlink.Error}, Data: make([]byte, 20)}
	errno := int32(-1) // -EPERM
	binary.NativeEndian.PutUint32(eperm.Data, uint32(errno))
	_, _, err := datagram(frame(t, socketMessage(0), eperm), add)
	assert.ErrorContains(t, err, "operation not permitted: netlink sockets are not allowed here")

	truncated := socketMessage(0)
	truncated.Data = truncated.Data[:40]
	_, _, err = datagram(frame(t, truncated), add)
	assert.ErrorContains(t, err, "a socket message of 40 bytes, want 72")
	other := socketMessage(0)
	other.Header.Type = 99
	_, _, err = datagram(frame(t, other), add)
	assert.ErrorContains(t, err, "a message of type 99")
	whole := frame(t, socketMessage(0))
	_, _, err = datagram(whole[:len(whole)-8], add)
	assert.ErrorContains(t, err, "a message of 88 bytes in 80")
}

func TestDecodeDoesNotAllocate(t *testing.T) {
	b := message(10, 8, netip.MustParseAddrPort("[::1]:8500"), netip.MustParseAddrPort("[::ffff:10.0.0.5]:40000"))
	s, err := Decode(b)
	require.NoError(t, err)
	assert.Equal(t, socket.StateCloseWait, s.State)
	assert.Equal(t, "[::ffff:10.0.0.5]:40000", s.Peer.String())
	assert.Zero(t, testing.AllocsPerRun(100, func() { _, _ = Decode(b) }))
}

// FuzzDatagram feeds arbitrary bytes to the decoder of the kernel's
// datagrams: an error or sockets, never a panic, and only sockets of a
// known family and state.
func FuzzDatagram(f *testing.F) {
	f.Add(frame(f, socketMessage(0), socketMessage(netlink.DumpInterrupted), doneMessage))
	v6 := socketMessage(0)
	v6.Data = message(10, 8, netip.MustParseAddrPort("[::1]:8500"), netip.MustParseAddrPort("[::1]:40000"))
	f.Add(frame(f, v6))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _, _ = datagram(b, func(s socket.Socket) {
			if s.State == socket.StateUnknown || s.State > socket.StateClosing || !s.Local.IsValid() || !s.Peer.IsValid() {
				t.Fatalf("decoded %+v", s)
			}
			if s.Local.Addr().Is4() != s.Peer.Addr().Is4() {
				t.Fatalf("one socket of two families: %+v", s)
			}
		})
	})
}

// The client ends of connections to the client ports come too, each with
// the inode that names its program in /proc.
func TestClientEndsComeWithTheirInodes(t *testing.T) {
	l := loopback.Listen(t, "127.0.0.1")
	pairs := loopback.Open(t, l, "127.0.0.16", 3)
	want := map[string]uint64{}
	for _, p := range pairs {
		want[p.Client.LocalAddr().String()] = loopback.InodeOf(t, p.Client.(syscall.Conn))
	}
	got := map[string]uint64{}
	require.NoError(t, New(nil, []uint16{l.Port()}, counted, 10*time.Second).Read(context.Background(), func(s socket.Socket) {
		got[s.Local.String()] = s.Inode
	}, func() {}))
	assert.Equal(t, want, got, "only the client ends, each with its inode")
}

// Each connection's use is read from its tcp_info in the same dump, as the
// agent's side of real loopback connections has it: opened and silent; a
// first request not answered; a request answered and kept; a request
// sent on a kept connection a tick or more after its answer; and a client
// that shut its sending side (CLOSE-WAIT).
func TestEachConnectionsUseComesFromItsTCPInfo(t *testing.T) {
	l := loopback.Listen(t, "127.0.0.1")
	pairs := loopback.Open(t, l, "127.0.0.41", 5)
	request, answer := []byte("GET /v1/kv/a?index=7 HTTP/1.1\r\n\r\n"), []byte("HTTP/1.1 200 OK\r\n\r\n")
	send := func(from, to net.Conn, b []byte) {
		_, err := from.Write(b)
		require.NoError(t, err)
		_, err = io.ReadFull(to, make([]byte, len(b)))
		require.NoError(t, err)
	}
	silent, first, kept, reused, halfClosed := pairs[0], pairs[1], pairs[2], pairs[3], pairs[4]
	r := New([]uint16{l.Port()}, nil, counted, 10*time.Second).WithUses()
	read := func() map[string]socket.Socket {
		got := map[string]socket.Socket{}
		require.NoError(t, r.Read(context.Background(), func(s socket.Socket) { got[s.Peer.String()] = s }, func() { clear(got) }))
		return got
	}
	peer := func(p portopener.Pair) string { return p.Client.LocalAddr().String() }
	// ticked waits until the kernel's clock has moved on since p's last
	// data: what comes next is later by a tick or more.
	ticked := func(p portopener.Pair) {
		require.Eventually(t, func() bool {
			traffic := read()[peer(p)].Traffic
			return min(traffic.SinceReceived, traffic.SinceSent) > 0 || traffic.SinceReceived > 0 && traffic.BytesSent == 0
		}, 5*time.Second, time.Millisecond)
	}
	send(first.Client, first.Server, request)
	for _, p := range []portopener.Pair{kept, reused} {
		send(p.Client, p.Server, request)
		ticked(p)
		send(p.Server, p.Client, answer)
	}
	ticked(reused)
	send(reused.Client, reused.Server, request)
	require.NoError(t, halfClosed.Client.(*net.TCPConn).CloseWrite())
	uses := func() map[string]socket.Use {
		got := map[string]socket.Use{}
		for p, s := range read() {
			got[p] = s.Use
		}
		return got
	}
	require.Eventually(t, func() bool { return uses()[peer(halfClosed)] == socket.UseHalfClosed }, 5*time.Second, time.Millisecond,
		"the client's FIN has come")

	assert.Equal(t, map[string]socket.Use{
		peer(silent): socket.UseSilent, peer(first): socket.UseWaiting, peer(kept): socket.UseIdle,
		peer(reused): socket.UseWaiting, peer(halfClosed): socket.UseHalfClosed,
	}, uses())
	var without []socket.Use
	require.NoError(t, New([]uint16{l.Port()}, nil, counted, 10*time.Second).Read(context.Background(), func(s socket.Socket) { without = append(without, s.Use) }, func() {}))
	assert.Equal(t, []socket.Use{socket.UseUnknown, socket.UseUnknown, socket.UseUnknown, socket.UseUnknown, socket.UseUnknown}, without,
		"not asked for: no tcp_info, no use")
}

// BenchmarkUses reads the sockets of port 8500 (what bench/bench.sh holds
// open there) with and without each one's tcp_info, alternately in each
// iteration, so that a busy machine's drift cancels: it reports the median
// of each and of the per-iteration ratios.
func BenchmarkUses(b *testing.B) {
	plain := New([]uint16{8500}, nil, counted, time.Minute)
	with := plain.WithUses()
	var plainNs, withNs, ratios []float64
	sockets := 0
	read := func(r *Reader) float64 {
		sockets = 0
		start := time.Now()
		if err := r.Read(context.Background(), func(socket.Socket) { sockets++ }, func() {}); err != nil {
			b.Fatal(err)
		}
		return float64(time.Since(start).Nanoseconds())
	}
	for b.Loop() {
		p, w := read(plain), read(with)
		plainNs, withNs, ratios = append(plainNs, p), append(withNs, w), append(ratios, w/p)
	}
	median := func(v []float64) float64 { slices.Sort(v); return v[len(v)/2] }
	b.ReportMetric(median(plainNs), "without-ns/op")
	b.ReportMetric(median(withNs), "with-ns/op")
	b.ReportMetric(median(ratios), "ratio")
	b.ReportMetric(float64(sockets), "sockets")
}
