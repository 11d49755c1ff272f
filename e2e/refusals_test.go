package e2e

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/consul-conn-exporter/consul-conn-exporter/internal/programs"
)

// refused asks the agent from the address from and says whether it was
// refused: a 429, or the reset that Consul's close with the request unread
// sends, before the answer could be read.
func refused(t *testing.T, consulAddr, from string) bool {
	t.Helper()
	status, conn, err := exchange(t, consulAddr, from)
	conn.Close()
	if err != nil {
		require.True(t, closedByPeer(err), "%v", err)
		return true
	}
	return status == http.StatusTooManyRequests
}

// startRefusals starts the exporter (a build without cgo, as released) with
// --refusals and returns its /metrics URL and its pid.
func startRefusals(t *testing.T, args ...string) (string, int) {
	t.Helper()
	addr := freeAddr(t)
	p := startServer(t, append([]string{plainBinary, "--refusals", "--web.listen-address=" + addr, "--sample.interval=0"}, args...)...)
	return "http://" + addr + "/metrics", p.cmd.Process.Pid
}

// A real agent with http_max_conns_per_client = 10: ten connections held from
// one address, then N more requests from it refused: that client's counter
// and the total are exactly N. Requests served to another address, blocking
// queries their clients close, and idle closes move no counter.
func TestRefusalsOfARealAgentAreCountedPerClient(t *testing.T) {
	programs.NeedRoot(t, "load the refusals' kernel program")
	programs.Need(t, "ss", "apt-get install iproute2")
	agent := startConsul(t, "http_max_conns_per_client = 10\nrpc_max_conns_per_client = 12", false)
	_, httpPort, err := net.SplitHostPort(agent.httpAddr)
	require.NoError(t, err)
	_, rpcPort, err := net.SplitHostPort(agent.serverAddr)
	require.NoError(t, err)
	url, pid := startRefusals(t, "--port", httpPort, "--limit", "10", "--rpc.port", rpcPort, "--rpc.limit", "12")

	status, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	require.NoError(t, err)
	assert.Contains(t, string(status), "\nCapEff:\t0000000000000000\n", "every capability dropped once loaded, as root too")

	// Not refusals: served requests from another address, a blocking query
	// its client gives up on, connections closed idle.
	for range 5 {
		code, conn := request(t, agent.httpAddr, "127.0.0.16")
		require.Equal(t, http.StatusOK, code)
		conn.Close()
	}
	blocking := dialFrom(t, "127.0.0.17", agent.httpAddr)
	_, err = io.WriteString(blocking, "GET /v1/catalog/services?index=1000000&wait=5m HTTP/1.1\r\nHost: consul\r\n\r\n")
	require.NoError(t, err)
	blocking.Close()
	none := scrape(t, url)
	assert.Equal(t, 0.0, value(t, none, "consul_refused_http_connections_total"))
	assert.Equal(t, 0.0, value(t, none, "consul_refused_rpc_connections_total"))

	const busy = "127.0.0.15"
	var held []net.Conn
	t.Cleanup(func() {
		for _, c := range held {
			c.Close()
		}
	})
	for range 10 {
		code, conn := request(t, agent.httpAddr, busy)
		require.Equal(t, http.StatusOK, code)
		held = append(held, conn)
	}
	const n = 7
	for i := range n {
		require.True(t, refused(t, agent.httpAddr, busy), "request %d past the limit", i+1)
	}
	var metrics map[string]float64
	require.Eventually(t, func() bool {
		metrics = scrape(t, url)
		return metrics["consul_refused_http_connections_total"] >= n
	}, 10*time.Second, 50*time.Millisecond)
	refusedSeries := func() (series []string) {
		for key, v := range metrics {
			if strings.HasPrefix(key, "consul_refused_") {
				series = append(series, fmt.Sprint(key, " ", v))
			}
		}
		return series
	}
	assert.Equal(t, float64(n), value(t, metrics, "consul_refused_http_connections_total"), "%v", refusedSeries())
	assert.Equal(t, float64(n), value(t, metrics, `consul_refused_http_connections_per_client_total{client="`+busy+`"}`))
	for key := range metrics {
		if strings.HasPrefix(key, "consul_refused_") {
			assert.NotContains(t, key, "127.0.0.16", "served: never refused")
			assert.NotContains(t, key, "127.0.0.17", "a blocking query closed by its client is no refusal")
		}
	}
	assert.Equal(t, 0.0, value(t, metrics, "consul_refused_rpc_connections_total"), "one limiter per group")

	// The server's RPC limiter: the dev server holds two of its own, so
	// ten from one address reach 12; the next ones, which send their first
	// byte at once as Consul's own clients do, are reset.
	const rpcBusy = "127.0.0.18"
	for range 12 {
		held = append(held, dialFrom(t, rpcBusy, agent.serverAddr))
	}
	const rpcRefused = 4
	for range rpcRefused {
		conn := dialFrom(t, rpcBusy, agent.serverAddr)
		_, err := conn.Write([]byte{0}) // the RPC protocol byte
		require.NoError(t, err)
		require.NoError(t, conn.SetReadDeadline(time.Now().Add(30*time.Second)))
		// Closed at once, the byte unread: a reset (read as such, or as
		// the end of the stream when the FIN comes first).
		_, err = conn.Read(make([]byte, 1))
		require.True(t, closedByPeer(err), "refused, got %v", err)
		conn.Close()
	}
	require.Eventually(t, func() bool {
		metrics = scrape(t, url)
		return metrics["consul_refused_rpc_connections_total"] >= rpcRefused
	}, 10*time.Second, 50*time.Millisecond)
	assert.Equal(t, float64(rpcRefused), value(t, metrics, "consul_refused_rpc_connections_total"))
	assert.Equal(t, float64(rpcRefused), value(t, metrics, `consul_refused_rpc_connections_per_client_total{client="`+rpcBusy+`"}`))
	assert.Equal(t, float64(n), value(t, metrics, "consul_refused_http_connections_total"), "HTTP unchanged")
}

// Without the capabilities: exit 2 with one line saying how to grant them,
// and nothing written first. Without the flag: no counter.
func TestRefusalsWithoutPrivilegeExitTwoWithOneLine(t *testing.T) {
	args := append(programs.AsNobody(t), plainBinary, "--refusals", "--web.listen-address="+freeAddr(t), "--command", "true")
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	assert.Equal(t, 2, exitCode(t, err), "%s", out)
	text := strings.TrimSpace(string(out))
	assert.Equal(t, 0, strings.Count(text, "\n"), "one line: %s", text)
	assert.Contains(t, text, "CAP_BPF and CAP_PERFMON")
	assert.Contains(t, text, "AmbientCapabilities=")

	addr := freeAddr(t)
	startServer(t, plainBinary, "--web.listen-address="+addr, "--command", "true")
	for key := range scrape(t, "http://"+addr+"/metrics") {
		assert.NotContains(t, key, "refused")
	}
}

// More distinct clients than the kernel's map holds (65,536), each refused
// once: the total stays exact, and the exporter's memory bounded.
func TestRefusalsFromMoreClientsThanTheMapHolds(t *testing.T) {
	programs.NeedRoot(t, "load the refusals' kernel program")
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	port := strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
	url, pid := startRefusals(t, "--port", port, "--limit", "10", "--command", "true")

	const clients = 70_000
	for i := range clients {
		from := net.IPv4(127, 1, byte(i>>8), byte(i))
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: from}}
		c, err := d.Dial("tcp", l.Addr().String())
		require.NoError(t, err)
		server, err := l.Accept()
		require.NoError(t, err)
		// Closed at once with a reset, as a refused connection is.
		require.NoError(t, server.(*net.TCPConn).SetLinger(0))
		server.Close()
		c.Close()
	}
	var metrics map[string]float64
	require.Eventually(t, func() bool {
		metrics = scrape(t, url)
		return metrics["consul_refused_http_connections_total"] >= clients
	}, 30*time.Second, 100*time.Millisecond)
	assert.Equal(t, float64(clients), value(t, metrics, "consul_refused_http_connections_total"), "exact, whatever the map evicted")
	perClient := 0
	for key := range metrics {
		if strings.HasPrefix(key, "consul_refused_http_connections_per_client_total") {
			perClient++
		}
	}
	assert.Equal(t, 10, perClient, "--clients.top of them")
	status, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	require.NoError(t, err)
	var hwm int
	for _, line := range strings.Split(string(status), "\n") {
		if strings.HasPrefix(line, "VmHWM:") {
			hwm, err = strconv.Atoi(strings.Fields(line)[1])
			require.NoError(t, err)
		}
	}
	t.Logf("peak RSS %d KiB", hwm)
	assert.Less(t, hwm, 32<<10, "peak RSS in KiB")
}

// Over IPv6 (the agent also on ::1) and on the HTTPS port: one limiter
// over both ports, one total. Over HTTPS a refusal is counted when Consul's
// side sends the reset, which it does not always do (docs/refusals.md).
func TestRefusalsOverIPv6AndHTTPSAreOneLimiter(t *testing.T) {
	programs.NeedRoot(t, "load the refusals' kernel program")
	agent := startAgent(t, "http_max_conns_per_client = 10", agentOptions{dualStackTLS: true})
	_, httpPort, err := net.SplitHostPort(agent.httpAddr)
	require.NoError(t, err)
	_, httpsPort, err := net.SplitHostPort(agent.httpsAddr)
	require.NoError(t, err)
	url, _ := startRefusals(t, "--port", httpPort, "--port", httpsPort, "--limit", "10", "--command", "true")

	var held []net.Conn
	t.Cleanup(func() {
		for _, c := range held {
			c.Close()
		}
	})
	// IPv6: ten held from ::1, three more refused.
	v6 := net.JoinHostPort("::1", httpPort)
	for range 10 {
		code, conn := request(t, v6, "::1")
		require.Equal(t, http.StatusOK, code)
		held = append(held, conn)
	}
	for i := range 3 {
		require.True(t, refused(t, v6, "::1"), "IPv6 request %d past the limit", i+1)
	}

	// The kernel counts a reset as it is sent, before the client sees it.
	total := func() float64 { return value(t, scrape(t, url), "consul_refused_http_connections_total") }
	require.Equal(t, 3.0, total())

	// HTTPS: ten held from one address over HTTP, then its connections to
	// the HTTPS port are refused by the same limiter.
	const busy = "127.0.0.25"
	for range 10 {
		code, conn := request(t, agent.httpAddr, busy)
		require.Equal(t, http.StatusOK, code)
		held = append(held, conn)
	}
	pool := x509.NewCertPool()
	ca, err := os.ReadFile(filepath.Join(agent.certs, "consul-agent-ca.pem"))
	require.NoError(t, err)
	require.True(t, pool.AppendCertsFromPEM(ca))
	// Consul answers 429 over TLS as soon as the handshake is done, then
	// sends TLS's close_notify and closes. The refusal ends in a reset
	// either way, but not always Consul's: a client that closes after the
	// 429 and before the close_notify comes resets the connection itself, and
	// only resets sent from the watched port count (a client's own reset is
	// no sign of a refusal: every HTTPS client that closes first is reset by
	// Go's close_notify). A client that waits for Consul's close before it
	// writes its request is always reset by Consul, and counted exactly.
	tlsConfig := &tls.Config{RootCAs: pool, ServerName: "localhost"}
	const get = "GET /v1/agent/self HTTP/1.1\r\nHost: consul\r\n\r\n"
	// Under load Consul's 10 ms can run out before its 429 is written (the
	// client then reads a reset or an end); such tries are not the proof and
	// are made again, a bounded number of times.
	for answered, tries := 0, 0; answered < 3; tries++ {
		require.Less(t, tries, 30, "Consul answered 429 over TLS to %d of %d tries", answered, tries)
		before := total()
		raw := dialFrom(t, busy, agent.httpsAddr)
		require.NoError(t, raw.SetDeadline(time.Now().Add(30*time.Second)))
		conn := tls.Client(raw, tlsConfig) // closed through raw: TLS's close_notify would be a request too
		var resp *http.Response
		err := conn.Handshake()
		if err == nil {
			resp, err = http.ReadResponse(bufio.NewReader(conn), nil)
		}
		if err != nil {
			t.Logf("try %d: no answer: %v", tries+1, err)
			raw.Close()
			continue
		}
		resp.Body.Close()
		require.Equal(t, http.StatusTooManyRequests, resp.StatusCode)
		_, err = io.Copy(io.Discard, raw) // the close_notify, to Consul's close
		require.NoError(t, err)
		_, err = io.WriteString(conn, get)
		require.NoError(t, err)
		// The reset is sent as the request arrives, maybe not before the
		// write returns.
		require.Eventually(t, func() bool { return total() == before+1 }, 10*time.Second, 20*time.Millisecond)
		raw.Close()
		answered++
	}
	metrics := scrape(t, url)
	afterReadFirst := value(t, metrics, "consul_refused_http_connections_total")
	assert.Equal(t, 3.0, value(t, metrics, `consul_refused_http_connections_per_client_total{client="::1"}`))
	assert.Equal(t, afterReadFirst-3, value(t, metrics, `consul_refused_http_connections_per_client_total{client="`+busy+`"}`), "one total over both ports")

	// Clients that write first, as they all do: each refused, each counted
	// at most once. Under load a refused client's write or read may fail
	// too, and whether it was counted depends on whose reset came first.
	const writeFirst = 10
	for range writeFirst {
		conn := tls.Client(dialFrom(t, busy, agent.httpsAddr), tlsConfig)
		require.NoError(t, conn.SetDeadline(time.Now().Add(30*time.Second)))
		if _, err := io.WriteString(conn, get); err == nil {
			if resp, err := http.ReadResponse(bufio.NewReader(conn), nil); err == nil {
				resp.Body.Close()
				require.Equal(t, http.StatusTooManyRequests, resp.StatusCode)
			}
		}
		conn.Close()
	}
	counted := total() - afterReadFirst
	t.Logf("HTTPS refusals of clients that write first: %v of %d counted", counted, writeFirst)
	assert.LessOrEqual(t, counted, float64(writeFirst), "never more than were refused")
}
