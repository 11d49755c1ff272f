package limits

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// agent answers /v1/agent/self as a Consul agent does, with the status and
// body answer gives it now.
func agent(t *testing.T, answer *atomic.Value) {
	t.Helper()
	server := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		require.Equal(t, "/v1/agent/self", r.URL.Path)
		a := answer.Load().(response)
		w.WriteHeader(a.status)
		io.WriteString(w, a.body)
	}))
	t.Cleanup(server.Close)
	t.Setenv("CONSUL_HTTP_ADDR", strings.TrimPrefix(server.URL, "http://"))
	t.Setenv("CONSUL_HTTP_TOKEN", "")
	t.Setenv("CONSUL_HTTP_TOKEN_FILE", "")
}

type response struct {
	status int
	body   string
}

const self = `{"Config": {"Version": "1.20.1"}, "DebugConfig": {"HTTPMaxConnsPerClient": 150, "RPCMaxConnsPerClient": 40, "HTTPPort": 8500, "HTTPSPort": 8501, "ServerPort": 8300, "ServerMode": true}}`

func source(t *testing.T, answer response, logger *slog.Logger) (*Source, *atomic.Value) {
	t.Helper()
	var a atomic.Value
	a.Store(answer)
	agent(t, &a)
	s, err := NewSource(Config{HTTP: Limit{Auto: true}, RPC: Limit{Auto: true}, HTTPPorts: []uint16{8500}, RPCPorts: []uint16{8300}, Refresh: time.Minute, Agent: Agent{}}, Reach{}, logger)
	require.NoError(t, err)
	return s, &a
}

var discard = slog.New(slog.DiscardHandler)

func TestAutoLimitsAreReadFromTheAgent(t *testing.T) {
	s, _ := source(t, response{200, self}, discard)
	snap := s.Snapshot()
	assert.True(t, snap.Auto)
	assert.True(t, snap.ReadOK)
	assert.Equal(t, 150, snap.HTTP)
	assert.Equal(t, 40, snap.RPC)
}

func TestAFailedReadIsNamedAndTheLastLimitsStay(t *testing.T) {
	for name, tc := range map[string]struct {
		answer  response
		err     string
		tooMany bool
	}{
		"403":       {response{403, "Permission denied: token lacks agent:read"}, "403 Permission denied: token lacks agent:read: give a token with agent:read (CONSUL_HTTP_TOKEN_FILE)", false},
		"429":       {response{429, "Your IP is issuing too many concurrent connections, please rate limit your calls"}, "this host's address holds all of the agent's http_max_conns_per_client", true},
		"garbage":   {response{200, "<html>a proxy's page</html>"}, "reading the limits from the Consul agent", false},
		"no limits": {response{200, `{"DebugConfig": {}}`}, "has no HTTPMaxConnsPerClient", false},
	} {
		t.Run(name, func(t *testing.T) {
			s, answer := source(t, response{200, self}, discard)
			require.Equal(t, 150, s.Snapshot().HTTP)
			answer.Store(tc.answer)
			s.read()
			snap := s.Snapshot()
			assert.False(t, snap.ReadOK)
			require.Error(t, snap.ReadErr)
			assert.Contains(t, snap.ReadErr.Error(), tc.err)
			assert.NotContains(t, snap.ReadErr.Error(), "\n")
			assert.Equal(t, tc.tooMany, snap.TooManyConnections)
			assert.Equal(t, 150, snap.HTTP, "the last limit read stays")
		})
	}
}

func TestBeforeAnyGoodReadThereIsNoLimit(t *testing.T) {
	s, _ := source(t, response{403, "Permission denied"}, discard)
	snap := s.Snapshot()
	assert.False(t, snap.ReadOK)
	assert.Zero(t, snap.HTTP, "no guessed default")
	assert.Zero(t, snap.RPC)
}

func TestFailuresAreLoggedOncePerChange(t *testing.T) {
	var log strings.Builder
	s, answer := source(t, response{403, "Permission denied"}, slog.New(slog.NewTextHandler(&log, nil)))
	for range 3 {
		s.read()
	}
	answer.Store(response{200, self})
	s.read()
	s.read()
	assert.Equal(t, 1, strings.Count(log.String(), "cannot read the limits"), log.String())
	assert.Equal(t, 1, strings.Count(log.String(), "works again"), log.String())
}

func TestAPortTheAgentServesButIsNotWatchedIsWarnedOnce(t *testing.T) {
	var log strings.Builder
	s, _ := source(t, response{200, self}, slog.New(slog.NewTextHandler(&log, nil)))
	s.read()
	s.read()
	assert.Equal(t, 1, strings.Count(log.String(), "add --port 8501"), log.String())
	assert.NotContains(t, log.String(), "--rpc.port", "8300 is watched")
}

func TestNumberedLimitsNeedNoAgent(t *testing.T) {
	s, err := NewSource(Config{HTTP: Limit{N: 200}, RPC: Limit{N: 100}, HTTPPorts: nil, RPCPorts: nil, Refresh: time.Minute, Agent: Agent{}}, Reach{}, discard)
	require.NoError(t, err)
	assert.Equal(t, Snapshot{HTTP: 200, RPC: 100}, s.Snapshot())
	for _, bad := range []string{"-1", "many", "", "1e3"} {
		_, err := ParseLimit(bad)
		assert.Error(t, err, bad)
	}
}

// Consul at its per-client limit answers 429 and closes as soon as it
// accepts, before the request arrives. That answer must read as the 429 it
// is, not as a connection that failed.
func TestA429SentBeforeTheRequestIsRead(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			io.WriteString(conn, "HTTP/1.1 429 Too Many Requests\r\nContent-Type: text/plain\r\nContent-Length: 27\r\n\r\nYour IP is issuing too many")
			conn.Close()
		}
	}()
	t.Setenv("CONSUL_HTTP_ADDR", l.Addr().String())
	t.Setenv("CONSUL_HTTP_TOKEN", "")
	t.Setenv("CONSUL_HTTP_TOKEN_FILE", "")
	for range 20 {
		s, err := NewSource(Config{HTTP: Limit{Auto: true}, RPC: Limit{N: 100}, HTTPPorts: []uint16{8500}, RPCPorts: nil, Refresh: time.Minute, Agent: Agent{}}, Reach{}, discard)
		require.NoError(t, err)
		snap := s.Snapshot()
		require.True(t, snap.TooManyConnections, "%v", snap.ReadErr)
	}
}

// Consul's 0 is "no limit"; a group that is not watched is not read.
func TestZeroIsNoLimitAndOnlyTheWatchedGroupsAreRead(t *testing.T) {
	var a atomic.Value
	a.Store(response{200, `{"DebugConfig": {"HTTPMaxConnsPerClient": 0, "HTTPPort": 8500}}`})
	agent(t, &a)
	s, err := NewSource(Config{HTTP: Limit{Auto: true}, RPC: Limit{}, HTTPPorts: []uint16{8500}, RPCPorts: nil, Refresh: time.Minute, Agent: Agent{}}, Reach{}, discard)
	require.NoError(t, err)
	snap := s.Snapshot()
	require.True(t, snap.ReadOK, "%v", snap.ReadErr)
	assert.Zero(t, snap.HTTP)
	l, err := ParseLimit("0")
	require.NoError(t, err)
	assert.Equal(t, Limit{}, l)
}

func TestTheTokenFileIsReadAtEveryRefresh(t *testing.T) {
	var tokens []string
	server := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tokens = append(tokens, r.Header.Get("X-Consul-Token"))
		io.WriteString(w, self)
	}))
	t.Cleanup(server.Close)
	tokenFile := filepath.Join(t.TempDir(), "token")
	t.Setenv("CONSUL_HTTP_ADDR", strings.TrimPrefix(server.URL, "http://"))
	t.Setenv("CONSUL_HTTP_TOKEN", "")
	t.Setenv("CONSUL_HTTP_TOKEN_FILE", tokenFile)
	s, err := NewSource(Config{HTTP: Limit{Auto: true}, RPC: Limit{}, HTTPPorts: []uint16{8500}, RPCPorts: nil, Refresh: time.Minute, Agent: Agent{}}, Reach{}, discard)
	require.NoError(t, err, "a missing token file is a failed read, not a failed start")
	snap := s.Snapshot()
	assert.False(t, snap.ReadOK)
	assert.ErrorContains(t, snap.ReadErr, "token")

	require.NoError(t, os.WriteFile(tokenFile, []byte("first\n"), 0o600))
	s.read()
	require.NoError(t, os.WriteFile(tokenFile, []byte("rotated\n"), 0o600))
	s.read()
	assert.Equal(t, []string{"first", "rotated"}, tokens)
	assert.True(t, s.Snapshot().ReadOK)
}

func TestAHugeAnswerIsRefusedNotRead(t *testing.T) {
	s, _ := source(t, response{200, `{"DebugConfig": {"X": "` + strings.Repeat("x", 2*maxAnswer) + `"}}`}, discard)
	snap := s.Snapshot()
	assert.False(t, snap.ReadOK)
	assert.ErrorContains(t, snap.ReadErr, "longer than 1048576 bytes")
}

// An agent that answers only after the exporter started has its limit known
// within seconds, not at the next --limit.refresh (a minute here).
func TestAFailedReadIsTriedAgainSoon(t *testing.T) {
	s, answer := source(t, response{500, "starting"}, discard)
	require.False(t, s.Snapshot().ReadOK)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go s.Run(ctx)
	answer.Store(response{200, self})
	require.Eventually(t, func() bool { return s.Snapshot().ReadOK }, 10*time.Second, 10*time.Millisecond)
	assert.Equal(t, 150, s.Snapshot().HTTP)
}

// The ports the agent serves that are not watched travel with the limits,
// for check to say.
func TestUnwatchedPortsAreInTheSnapshot(t *testing.T) {
	s, _ := source(t, response{200, self}, discard)
	assert.Equal(t, []string{"the Consul agent serves HTTPS on port 8501, which is not watched: add --port 8501, or its connections are not counted"}, s.Snapshot().Notes)
}

// --consul.server and --consul.token-file win over CONSUL_HTTP_ADDR and
// CONSUL_HTTP_TOKEN; what no flag names still comes from the environment.
func TestTheAgentsFlagsWinOverTheEnvironment(t *testing.T) {
	var seen atomic.Value
	server := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen.Store(r.Header.Get("X-Consul-Token"))
		io.WriteString(w, self)
	}))
	defer server.Close()
	t.Setenv("CONSUL_HTTP_ADDR", "127.0.0.1:1") // nothing there
	t.Setenv("CONSUL_HTTP_TOKEN", "from-the-environment")
	t.Setenv("CONSUL_HTTP_TOKEN_FILE", "")
	token := filepath.Join(t.TempDir(), "token")
	require.NoError(t, os.WriteFile(token, []byte("from-the-file\n"), 0o600))
	s, err := NewSource(Config{HTTP: Limit{Auto: true}, RPC: Limit{}, HTTPPorts: []uint16{8500}, RPCPorts: nil, Refresh: time.Minute, Agent: Agent{Server: server.URL, TokenFile: token}}, Reach{}, discard)
	require.NoError(t, err)
	snap := s.Snapshot()
	require.True(t, snap.ReadOK, "%v", snap.ReadErr)
	assert.Equal(t, 150, snap.HTTP)
	assert.Equal(t, "from-the-file", seen.Load())
}

// ownSockets are the sockets a read told of, and whether each was
// connected already when it was.
type ownSockets struct {
	mu        sync.Mutex
	told      []int
	connected []bool
}

func (o *ownSockets) Own(fd int) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	_, err := unix.Getpeername(fd)
	o.told = append(o.told, fd)
	o.connected = append(o.connected, err == nil)
	return nil
}

// Each connection of a read is told of, by its own socket, before it
// connects: whatever address the kernel picks for it.
func TestEachReadsConnectionIsToldOfByItsSocketBeforeItConnects(t *testing.T) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	own := &ownSockets{}
	s := &Source{reach: Reach{Own: own}}
	conn, err := s.dial(context.Background(), "tcp", ln.Addr().String())
	require.NoError(t, err)
	defer conn.Close()
	raw, err := conn.(*net.TCPConn).SyscallConn()
	require.NoError(t, err)
	var fd int
	require.NoError(t, raw.Control(func(f uintptr) { fd = int(f) }))
	assert.Equal(t, []int{fd}, own.told, "its own socket")
	assert.Equal(t, []bool{false}, own.connected, "told of before it connected")
}

// Where the listeners say the agent is, a read goes there, whatever else
// answers at the agent's name; where they say it is at none of its
// addresses, or have not said yet, no read is made.
func TestReadsGoOnlyWhereTheListenersSayTheAgentIs(t *testing.T) {
	s, _ := source(t, response{200, self}, discard) // what answers at the name
	listener := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, strings.Replace(self, `"HTTPMaxConnsPerClient": 150`, `"HTTPMaxConnsPerClient": 77`, 1))
	}))
	defer listener.Close()
	judged := netip.MustParseAddrPort(strings.TrimPrefix(listener.URL, "http://"))
	for _, tc := range []struct {
		name string
		at   netip.AddrPort
		done bool
		want int
	}{
		{"not judged (yet)", judged, false, 0},
		{"at none", netip.AddrPort{}, true, 0},
		{"at its listener", judged, true, 77},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s.reach.At = func() (netip.AddrPort, bool) { return tc.at, tc.done }
			s.read()
			snap := s.Snapshot()
			assert.Equal(t, tc.want != 0, snap.ReadOK, snap.ReadErr)
			if tc.want != 0 {
				assert.Equal(t, tc.want, snap.HTTP)
			} else {
				assert.ErrorContains(t, snap.ReadErr, "no listener of the agent's is known at its address")
				assert.Zero(t, snap.HTTP, "never what answers at the name")
			}
		})
	}
}

// With no address given, the limits are read from Consul's default
// client_addr at the first watched HTTP port, as the listeners take it
// (with --command, which reads no listeners, too): not from whatever
// serves the api package's 127.0.0.1:8500.
func TestWithNoAddressTheLimitsAreReadAtTheFirstWatchedHTTPPort(t *testing.T) {
	t.Setenv("CONSUL_HTTP_ADDR", "")
	t.Setenv("CONSUL_HTTP_TOKEN", "")
	t.Setenv("CONSUL_HTTP_TOKEN_FILE", "")
	server := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, self) }))
	defer server.Close()
	at := netip.MustParseAddrPort(strings.TrimPrefix(server.URL, "http://"))
	s, err := NewSource(Config{HTTP: Limit{Auto: true}, RPC: Limit{N: 100}, HTTPPorts: []uint16{at.Port()}, RPCPorts: nil, Refresh: time.Minute, Agent: Agent{}}, Reach{}, discard)
	require.NoError(t, err)
	snap := s.Snapshot()
	require.True(t, snap.ReadOK, snap.ReadErr)
	assert.Equal(t, 150, snap.HTTP)
}

// --grpc.limit auto follows the agent's version: none before the gRPC
// limiter came (2.0.3), said once; the agent's value where it reports one;
// Consul's default of 100, said, where it does not; an agent whose version
// cannot be read is a failed read for the gRPC limit, never a guess, and
// the other limits it read apply.
func TestTheGRPCLimitFollowsTheAgentsVersion(t *testing.T) {
	for name, tc := range map[string]struct {
		self  string
		limit int
		note  string
		err   string
	}{
		"1.20.1": {`{"Config": {"Version": "1.20.1"}, "DebugConfig": {"HTTPMaxConnsPerClient": 200, "GRPCPort": 8502}}`, 0,
			"the Consul agent 1.20.1 has no gRPC per-client limiter (it came with 2.0.3): no limit applies to its gRPC connections", ""},
		"2.0.3 reporting it": {`{"Config": {"Version": "2.0.3"}, "DebugConfig": {"HTTPMaxConnsPerClient": 200, "GRPCMaxConnsPerClient": 40, "GRPCPort": 8502}}`, 40, "", ""},
		"2.1.0+ent not reporting it": {`{"Config": {"Version": "2.1.0+ent"}, "DebugConfig": {"HTTPMaxConnsPerClient": 200, "GRPCPort": 8502}}`, 100,
			"the Consul agent 2.1.0 does not report grpc_max_conns_per_client: Consul's default of 100 is taken", ""},
		"no version": {`{"Config": {"Version": "weird"}, "DebugConfig": {"HTTPMaxConnsPerClient": 150}}`, 0, "",
			`the agent's version "weird" is not one (Config.Version): cannot tell whether it has a gRPC limiter`},
	} {
		t.Run(name, func(t *testing.T) {
			var a atomic.Value
			a.Store(response{200, tc.self})
			agent(t, &a)
			var log strings.Builder
			s, err := NewSource(Config{HTTP: Limit{Auto: true}, GRPC: Limit{Auto: true}, HTTPPorts: []uint16{8500}, GRPCPorts: []uint16{8502},
				Refresh: time.Minute}, Reach{}, slog.New(slog.NewTextHandler(&log, nil)))
			require.NoError(t, err)
			s.read()
			s.read()
			snap := s.Snapshot()
			if tc.err != "" {
				assert.ErrorContains(t, snap.Err(), tc.err)
				assert.Zero(t, snap.GRPC, "not known")
				assert.Equal(t, 150, snap.HTTP, "the limits the read could tell apply")
				return
			}
			require.NoError(t, snap.Err())
			assert.Equal(t, tc.limit, snap.GRPC)
			if tc.note == "" {
				assert.Empty(t, snap.Notes)
			} else {
				assert.Equal(t, []string{tc.note}, snap.Notes)
				assert.Equal(t, 1, strings.Count(log.String(), tc.note), "said once")
			}
		})
	}
}

// A gRPC limit given as a number needs no agent, and a gRPC port the agent
// serves that is not watched is said.
func TestANumberedGRPCLimitNeedsNoAgentAndAnUnwatchedGRPCPortIsSaid(t *testing.T) {
	s, err := NewSource(Config{GRPC: Limit{N: 100}, GRPCPorts: []uint16{8502}, Refresh: time.Minute}, Reach{}, discard)
	require.NoError(t, err)
	assert.Equal(t, Snapshot{GRPC: 100}, s.Snapshot())

	var a atomic.Value
	a.Store(response{200, `{"Config": {"Version": "2.0.3"}, "DebugConfig": {"HTTPMaxConnsPerClient": 200, "HTTPPort": 8500, "GRPCPort": 8502, "GRPCTLSPort": 8503}}`})
	agent(t, &a)
	s, err = NewSource(Config{HTTP: Limit{Auto: true}, GRPC: Limit{N: 100}, HTTPPorts: []uint16{8500}, GRPCPorts: []uint16{8502}, Refresh: time.Minute}, Reach{}, discard)
	require.NoError(t, err)
	assert.Equal(t, []string{"the Consul agent serves gRPC over TLS on port 8503, which is not watched: add --grpc.port 8503, or its connections are not counted"}, s.Snapshot().Notes)
	assert.Equal(t, 100, s.Snapshot().GRPC)
}
