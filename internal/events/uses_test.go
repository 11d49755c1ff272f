package events

import (
	"context"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/cilium/ebpf/btf"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/consul-conn-exporter/consul-conn-exporter/internal/table/sockdiag"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/table/socket"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/testkit/loopback"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/testkit/portopener"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/testkit/programs"
)

// agentSide is a listener standing for the agent: the test reads and
// sends on each connection's server end as the agent would.
type agentSide struct {
	l    *portopener.Listener
	port uint16
}

func listenAsAgent(t *testing.T) *agentSide {
	t.Helper()
	l := loopback.Listen(t, "127.0.0.1")
	return &agentSide{l: l, port: l.Port()}
}

// open is one connection to the agent: its client end and its server end.
func (a *agentSide) open(t *testing.T) (client, server net.Conn) {
	t.Helper()
	pair := loopback.Open(t, a.l, "127.0.0.71", 1)[0]
	return pair.Client, pair.Server
}

// request is a blocking query as a client sends it, and reply the
// agent's answer to it.
const (
	request = "GET /v1/kv/watched?index=7&wait=5m HTTP/1.1\r\nHost: 127.0.0.1:8500\r\n\r\n"
	reply   = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Consul-Index: 8\r\nContent-Length: 2\r\n\r\n[]"
)

// exchange is the client sending a request and the agent reading it, and,
// where answer, answering it, which the client reads.
func exchange(t *testing.T, client, server net.Conn, answer bool) {
	t.Helper()
	sendAndRead(t, client, server, request)
	if !answer {
		return
	}
	_, err := io.WriteString(server, reply)
	require.NoError(t, err)
	_, err = io.ReadFull(client, make([]byte, len(reply)))
	require.NoError(t, err)
}

// sendAndRead is the client sending text and the agent reading it.
func sendAndRead(t *testing.T, client, server net.Conn, text string) {
	t.Helper()
	_, err := io.WriteString(client, text)
	require.NoError(t, err)
	_, err = io.ReadFull(server, make([]byte, len(text)))
	require.NoError(t, err)
}

// usesRead are the uses the counter's records say, summed, and per use
// the longest age a record carries.
func usesRead(t *testing.T, c *Counter) (map[socket.Use]int, map[socket.Use]time.Duration) {
	t.Helper()
	uses, longest := map[socket.Use]int{}, map[socket.Use]time.Duration{}
	require.NoError(t, c.Read(context.Background(), func(s socket.Socket) {
		uses[s.Use] += s.Sockets
		longest[socket.UseWaiting] = max(longest[socket.UseWaiting], time.Duration(s.Traffic.SinceReceived)*time.Millisecond)
		longest[socket.UseIdle] = max(longest[socket.UseIdle], time.Duration(s.Traffic.SinceSent)*time.Millisecond)
	}, func() {}))
	return uses, longest
}

// Each connection's use is the agent's last read or send that moved data
// on it, as it happens: a fresh request read and not answered is waiting,
// so is one read on a connection answered before (which tcp_info cannot
// tell from idle, both in one tick); an answer sent is idle; nothing read
// is silent; the client's FIN is half-closed, whatever was last.
func TestEachConnectionsUseIsTheAgentsLastReadOrSend(t *testing.T) {
	a := listenAsAgent(t)
	c := loaded(t, []uint16{a.port})
	require.NoError(t, c.Uses())

	for range 3 {
		client, server := a.open(t)
		exchange(t, client, server, false) // waiting
	}
	for range 2 {
		client, server := a.open(t)
		exchange(t, client, server, true)
		exchange(t, client, server, false) // waiting again, on a reused connection
	}
	answered := make([]net.Conn, 4)
	servers := make([]net.Conn, 4)
	for i := range answered {
		answered[i], servers[i] = a.open(t)
		exchange(t, answered[i], servers[i], true) // idle
	}
	for range 5 {
		a.open(t) // silent
	}
	client, server := a.open(t)
	exchange(t, client, server, true)
	require.NoError(t, client.(*net.TCPConn).CloseWrite()) // half-closed

	var uses map[socket.Use]int
	require.Eventually(t, func() bool {
		uses, _ = usesRead(t, c)
		return uses[socket.UseHalfClosed] == 1
	}, 10*time.Second, 10*time.Millisecond, "the client's FIN")
	assert.Equal(t, map[socket.Use]int{socket.UseWaiting: 5, socket.UseIdle: 4, socket.UseSilent: 5, socket.UseHalfClosed: 1}, uses)

	// A request on an idle connection: waiting; its answer: idle again.
	exchange(t, answered[0], servers[0], false)
	uses, _ = usesRead(t, c)
	assert.Equal(t, 6, uses[socket.UseWaiting], "read last")
	assert.Equal(t, 3, uses[socket.UseIdle])
	_, err := io.WriteString(servers[0], reply)
	require.NoError(t, err)
	uses, _ = usesRead(t, c)
	assert.Equal(t, 5, uses[socket.UseWaiting], "sent last")
	assert.Equal(t, 4, uses[socket.UseIdle])

	// An HTTP/2 client's control frame after the answer (a PING, 17
	// bytes, in a TLS 1.3 record: 39) is no request: not waiting, not
	// told; the request after it is.
	sendAndRead(t, answered[2], servers[2], string(make([]byte, 39)))
	uses, _ = usesRead(t, c)
	assert.Equal(t, 5, uses[socket.UseWaiting], "no request came")
	assert.Equal(t, 3, uses[socket.UseIdle])
	assert.Equal(t, 1, uses[socket.UseUnknown])
	sendAndRead(t, answered[2], servers[2], request)
	uses, _ = usesRead(t, c)
	assert.Equal(t, 6, uses[socket.UseWaiting], "a request")
	assert.Zero(t, uses[socket.UseUnknown])
	// The agent's acknowledgement of the client's PING while the request
	// waits (39 bytes) is no answer: still waiting.
	_, err = servers[2].Write(make([]byte, 39))
	require.NoError(t, err)
	uses, _ = usesRead(t, c)
	assert.Equal(t, 6, uses[socket.UseWaiting], "no answer yet")
	_, err = io.WriteString(servers[2], reply)
	require.NoError(t, err)
	uses, _ = usesRead(t, c)
	assert.Equal(t, 4, uses[socket.UseIdle], "answered")

	// A close takes it off its use.
	require.NoError(t, servers[1].Close())
	uses, _ = usesRead(t, c)
	assert.Equal(t, 3, uses[socket.UseIdle], "closed by the agent")
}

// Connections open before the programs are told from their tcp_info at
// the seed: silent and a first request not answered are certain; one
// answered is idle, or unknown where the answer came in the request's
// clock tick, never another use. A census after keeps what the events
// said, and the longest each use has lasted.
func TestConnectionsOpenBeforeTheStartAreToldFromTheirTCPInfo(t *testing.T) {
	a := listenAsAgent(t)
	for range 2 {
		a.open(t) // silent
	}
	for range 3 {
		client, server := a.open(t)
		exchange(t, client, server, false) // waiting
	}
	for range 4 {
		client, server := a.open(t)
		exchange(t, client, server, true) // idle, or unknown
	}
	before := time.Now()
	c := loaded(t, []uint16{a.port})

	uses, _ := usesRead(t, c)
	assert.Equal(t, 2, uses[socket.UseSilent])
	assert.Equal(t, 3, uses[socket.UseWaiting])
	assert.Equal(t, 4, uses[socket.UseIdle]+uses[socket.UseUnknown], "answered: idle, or unknown within a tick: %v", uses)

	_, err := c.Census()
	require.NoError(t, err)
	again, longest := usesRead(t, c)
	assert.Equal(t, uses, again, "a census keeps each use")
	assert.Greater(t, longest[socket.UseWaiting], time.Duration(0), "the oldest request waiting")
	assert.LessOrEqual(t, longest[socket.UseWaiting], time.Since(before)+time.Second)
}

// On a kernel that traces no read or send (before Linux 6.3), the
// programs that would follow them are not loaded: no use could change from
// what the open said, so none is said; the half-closed, which their state
// tells, are, and the counts are exact.
func TestWithoutTheReadsAndSendsEveryUseIsUnknown(t *testing.T) {
	programs.NotShort(t, "loads a kernel program")
	programs.NeedRoot(t, "load a kernel program")
	programs.NeedBTF(t)
	a := listenAsAgent(t)
	c, err := load(btf.NewCache(), [][]uint16{{a.port}}, held, 1<<16, rootListens([]uint16{a.port}), nil, nil, errors.New("no tracepoints here"))
	programs.Loaded(t, err)
	t.Cleanup(c.Close)
	require.EqualError(t, c.Uses(), "no tracepoints here")
	assert.Nil(t, c.objs.Received, "not loaded")

	for range 2 {
		client, server := a.open(t)
		exchange(t, client, server, false)
	}
	a.open(t)
	client, server := a.open(t)
	exchange(t, client, server, true)
	require.NoError(t, client.(*net.TCPConn).CloseWrite())
	var uses map[socket.Use]int
	require.Eventually(t, func() bool {
		uses, _ = usesRead(t, c)
		return uses[socket.UseHalfClosed] == 1
	}, 10*time.Second, 10*time.Millisecond, "the client's FIN")
	assert.Equal(t, map[socket.Use]int{socket.UseUnknown: 3, socket.UseHalfClosed: 1}, uses)
}

// A request the agent has not read (too busy to: it waits in the kernel)
// is silent to the reads the events follow; the census, which sees the
// bytes received, makes it waiting, as the table's tcp_info says.
func TestARequestTheAgentHasNotReadWaitsFromTheCensusOn(t *testing.T) {
	a := listenAsAgent(t)
	c := loaded(t, []uint16{a.port})
	client, _ := a.open(t)
	_, err := io.WriteString(client, request)
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		var received uint64
		require.NoError(t, sockdiag.New([]uint16{a.port}, nil, held, 5*time.Second).WithUses().Read(context.Background(), func(s socket.Socket) {
			received += s.Traffic.BytesReceived
		}, func() {}))
		return received == uint64(len(request))
	}, 10*time.Second, 10*time.Millisecond, "the request in the kernel")
	uses, _ := usesRead(t, c)
	assert.Equal(t, map[socket.Use]int{socket.UseSilent: 1}, uses, "nothing read")
	_, err = c.Census()
	require.NoError(t, err)
	uses, _ = usesRead(t, c)
	assert.Equal(t, map[socket.Use]int{socket.UseWaiting: 1}, uses, "a request in")
}
