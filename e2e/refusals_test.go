package e2e

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/consul-conn-exporter/consul-conn-exporter/internal/testkit/loopback"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/testkit/programs"
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
	held := holdServed(t, agent.httpAddr, busy, 10)
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
	// What the kernel skipped the programs for is exported (value fails
	// the test where a series is absent): 0 here, or the counts above
	// would lack it.
	assert.Zero(t, value(t, metrics, "consul_conn_exporter_refusals_missed_total"))
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

// One busy client refused thousands of times through a few source ports
// (as through a narrow ip_local_port_range, or a client making more
// connections than its range holds): every refusal the client saw is
// counted, once. Before it, requests Consul answered and then closed with
// their bodies unread (the kernel resets those too), and a listener on the
// agent's own port in another network namespace resetting thousands of
// connections: none is a refusal.
func TestEveryRefusalOfABusyClientIsCountedHoweverOftenItsPortsComeRound(t *testing.T) {
	programs.NeedRoot(t, "load the refusals' kernel program")
	agent := startConsul(t, "http_max_conns_per_client = 10", false)
	url, _ := startRefusals(t, "--port", agent.httpPort(), "--limit", "10", "--command", "true")
	total := func() float64 { return value(t, scrape(t, url), "consul_refused_http_connections_total") }

	for _, request := range []string{
		"PUT /v1/kv/big HTTP/1.1\r\nHost: consul\r\nContent-Length: 1048576\r\n\r\n",      // over kv_max_value_size: 413
		"POST /v1/agent/self HTTP/1.1\r\nHost: consul\r\nContent-Length: 1048576\r\n\r\n", // the wrong method: 405
	} {
		for range 3 {
			answeredThenReset(t, agent.httpAddr, "127.0.0.43", request)
		}
	}
	const others = 2000
	loopback.InNewNamespace(t, func() {
		theirs, err := net.Listen("tcp", agent.httpAddr)
		require.NoError(t, err, "the agent's address and port, free in another namespace")
		defer theirs.Close()
		for range others {
			conn := dialFrom(t, "127.0.0.44", agent.httpAddr)
			_, err := io.WriteString(conn, "GET /v1/agent/self HTTP/1.1\r\n\r\n")
			require.NoError(t, err)
			server, err := theirs.Accept()
			require.NoError(t, err)
			require.NoError(t, server.Close()) // the request unread: a reset
			_, err = conn.Read(make([]byte, 1))
			require.True(t, closedByPeer(err), "%v", err)
			conn.Close()
		}
	})
	require.Equal(t, 0.0, total(), "answered requests and another namespace's resets are no refusals")

	const busy = "127.0.0.45"
	for range 10 {
		code, conn := request(t, agent.httpAddr, busy)
		require.Equal(t, http.StatusOK, code)
		t.Cleanup(func() { conn.Close() })
	}
	fromPorts := make([]int, 10)
	for i := range fromPorts {
		fromPorts[i] = int(loopback.Port())
	}
	const tries = 3000
	seen, busyPorts := 0, 0
	for i := range tries {
		conn, err := dialFromPort(busy, fromPorts[i%len(fromPorts)], agent.httpAddr)
		if err != nil {
			// The port still held by the connection before (its reset
			// not yet through): the next one.
			busyPorts++
			continue
		}
		status, err := ask(conn)
		conn.Close()
		require.True(t, status == http.StatusTooManyRequests || err != nil && closedByPeer(err), "try %d past the limit: %d %v", i+1, status, err)
		seen++
	}
	t.Logf("%d refusals seen by the client through %d source ports (%d tries found the port in use)", seen, len(fromPorts), busyPorts)
	require.Greater(t, seen, tries/2)
	require.Eventually(t, func() bool { return total() >= float64(seen) }, 10*time.Second, 50*time.Millisecond)
	metrics := scrape(t, url)
	assert.Equal(t, float64(seen), value(t, metrics, "consul_refused_http_connections_total"))
	assert.Equal(t, float64(seen), value(t, metrics, `consul_refused_http_connections_per_client_total{client="`+busy+`"}`))
}

// answeredThenReset sends request, whose 1 MiB body Consul does not read:
// it answers, and closes with the body unread, which the kernel answers
// with a reset.
func answeredThenReset(t *testing.T, consulAddr, from, request string) {
	t.Helper()
	conn := dialFrom(t, from, consulAddr)
	require.NoError(t, conn.SetDeadline(time.Now().Add(30*time.Second)))
	go func() {
		if _, err := io.WriteString(conn, request); err == nil {
			conn.Write(make([]byte, 1<<20)) // cut short by the reset
		}
	}()
	_, err := io.Copy(io.Discard, conn)
	require.True(t, err == nil || closedByPeer(err), "%v", err)
}

// dialFromPort connects from a chosen source port, which the connection
// before it may have used.
func dialFromPort(from string, port int, to string) (net.Conn, error) {
	d := net.Dialer{
		LocalAddr: &net.TCPAddr{IP: net.ParseIP(from), Port: port},
		Control: func(_, _ string, c syscall.RawConn) error {
			var err error
			if cerr := c.Control(func(fd uintptr) { err = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_REUSEADDR, 1) }); cerr != nil {
				return cerr
			}
			return err
		},
	}
	return d.Dial("tcp", to)
}

// ask sends a request on conn and reads the status of its answer.
func ask(conn net.Conn) (int, error) {
	if err := conn.SetDeadline(time.Now().Add(30 * time.Second)); err != nil {
		return 0, err
	}
	if _, err := io.WriteString(conn, "GET /v1/agent/self HTTP/1.1\r\nHost: consul\r\n\r\n"); err != nil {
		return 0, err
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
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
	assert.Eventually(t, func() bool {
		metrics = scrape(t, url)
		return metrics["consul_refused_http_connections_total"] >= clients
	}, 30*time.Second, 100*time.Millisecond)
	assert.Equal(t, float64(clients), value(t, metrics, "consul_refused_http_connections_total"), "exact, whatever the map evicted (untracked: %v)", metrics["consul_refused_http_connections_untracked_total"])
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

// Over IPv6 (the agent also on ::1) refusals are counted exactly, as over
// IPv4. Over HTTPS (the same limiter) none is: Consul reads the TLS
// handshake before it refuses, and the kernel cannot tell a handshake read
// from a request read, so the count stays a lower bound rather than take in
// answered connections (docs/refusals.md).
func TestRefusalsOverIPv6AreCountedAndOverHTTPSNone(t *testing.T) {
	programs.NeedRoot(t, "load the refusals' kernel program")
	agent := startAgent(t, "http_max_conns_per_client = 10", agentOptions{dualStackTLS: true})
	_, httpPort, err := net.SplitHostPort(agent.httpAddr)
	require.NoError(t, err)
	_, httpsPort, err := net.SplitHostPort(agent.httpsAddr)
	require.NoError(t, err)
	url, _ := startRefusals(t, "--port", httpPort, "--port", httpsPort, "--limit", "10", "--command", "true")
	total := func() float64 { return value(t, scrape(t, url), "consul_refused_http_connections_total") }

	// IPv6: ten held from ::1, three more refused.
	v6 := net.JoinHostPort("::1", httpPort)
	holdServed(t, v6, "::1", 10)
	for i := range 3 {
		require.True(t, refused(t, v6, "::1"), "IPv6 request %d past the limit", i+1)
	}
	// The kernel counts a reset as it is sent, before the client sees it.
	require.Equal(t, 3.0, total())
	assert.Equal(t, 3.0, value(t, scrape(t, url), `consul_refused_http_connections_per_client_total{client="::1"}`))

	// HTTPS: ten held from one address over HTTP, then its connections to
	// the HTTPS port are refused by the same limiter, with a 429 over TLS.
	const busy = "127.0.0.25"
	holdServed(t, agent.httpAddr, busy, 10)
	refusedOverTLS := 0
	for range 20 {
		if status, err := agent.askOverTLS(t, busy); err == nil {
			require.Equal(t, http.StatusTooManyRequests, status)
			refusedOverTLS++
		}
	}
	t.Logf("%d HTTPS requests answered 429, 0 counted (a stated lower bound)", refusedOverTLS)
	require.Positive(t, refusedOverTLS)
	assert.Equal(t, 3.0, total(), "no HTTPS refusal counted, nor any other")
}

// A real agent (Consul built with Go 1.24 or later listens MPTCP) refusing
// an MPTCP client past its limit: each refusal counted once, with the
// built-in reader and with the events, as a TCP client's are (the
// agent's close having read nothing is judged on the MPTCP connection, not
// on its subflow, whose data the kernel moves in read or not).
func TestRefusalsOfAnMPTCPClientAreCounted(t *testing.T) {
	programs.NeedRoot(t, "load the refusals' kernel program")
	needEvents(t)
	agent := startConsul(t, "http_max_conns_per_client = 5", false)
	p := agent.httpPort()
	urls := map[string]string{}
	for _, source := range []string{"netlink", "events"} {
		urls[source], _ = startRefusals(t, "--source", source, "--port", p, "--limit", "5")
	}
	const busy = "127.0.0.97"
	holdServed(t, agent.httpAddr, busy, 5)
	const refusals = 10
	for range refusals {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(busy)}}
		d.SetMultipathTCP(true)
		conn, err := d.Dial("tcp", agent.httpAddr)
		require.NoError(t, err)
		if mptcp, _ := conn.(*net.TCPConn).MultipathTCP(); !mptcp {
			conn.Close()
			programs.Missing(t, "the connection to the agent fell back to TCP: MPTCP is off here (sysctl net.mptcp.enabled=1), or this Consul was built with Go before 1.24")
		}
		require.NoError(t, conn.SetDeadline(time.Now().Add(10*time.Second)))
		_, err = io.WriteString(conn, "GET /v1/agent/self HTTP/1.1\r\nHost: consul\r\n\r\n")
		require.NoError(t, err)
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err == nil {
			require.Equal(t, http.StatusTooManyRequests, resp.StatusCode)
			resp.Body.Close()
		}
		conn.Close()
	}
	for source, url := range urls {
		var got map[string]float64
		require.Eventually(t, func() bool {
			got = scrape(t, url)
			return got["consul_refused_http_connections_total"] >= refusals
		}, 10*time.Second, 20*time.Millisecond, "%s: the MPTCP client's refusals", source)
		assert.Equal(t, float64(refusals), value(t, got, "consul_refused_http_connections_total"), source)
		assert.Equal(t, float64(refusals), value(t, got, `consul_refused_http_connections_per_client_total{client="`+busy+`"}`), source)
	}
}

// A client that connects to the agent's HTTPS port and sends nothing is
// closed at https_handshake_timeout, the agent having read nothing, and
// reset when it sends after: the limiter's refusal looks the same, but
// comes at the accept. Neither rule counts it as refused, over TCP or
// MPTCP, with the built-in reader or with the events: it is untracked (a
// close that late may be a refusal held up in the agent's accept queue).
// The one request refused meanwhile counts, once, by each.
func TestAClientSilentPastTheTLSHandshakeTimeoutIsNoRefusal(t *testing.T) {
	programs.NeedRoot(t, "load the refusals' kernel program")
	needEvents(t)
	agent := startAgent(t, "http_max_conns_per_client = 3\nhttps_handshake_timeout = \"1500ms\"", agentOptions{dualStackTLS: true})
	_, httpsPort, err := net.SplitHostPort(agent.httpsAddr)
	require.NoError(t, err)
	urls := map[string]string{}
	for _, source := range []string{"netlink", "events"} {
		urls[source], _ = startRefusals(t, "--source", source, "--port", agent.httpPort(), "--port", httpsPort, "--limit", "3")
	}
	const silent = "127.0.0.29"
	for _, mptcp := range []bool{false, true} {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(silent)}}
		d.SetMultipathTCP(mptcp)
		conn, err := d.Dial("tcp", agent.httpsAddr)
		require.NoError(t, err)
		if is, _ := conn.(*net.TCPConn).MultipathTCP(); is != mptcp {
			conn.Close()
			programs.Missing(t, "the connection to the agent fell back to TCP: MPTCP is off here (sysctl net.mptcp.enabled=1), or this Consul was built with Go before 1.24")
		}
		require.NoError(t, conn.SetDeadline(time.Now().Add(20*time.Second)))
		_, err = conn.Read(make([]byte, 1))
		require.ErrorIs(t, err, io.EOF, "the agent's close at its handshake timeout")
		_, err = io.WriteString(conn, "\x16\x03\x01 a late ClientHello")
		require.NoError(t, err)
		if !mptcp { // its reset come back, where it would be counted
			for err == nil {
				_, err = io.WriteString(conn, "\r\n")
			}
			require.True(t, closedByPeer(err), "the reset of the late hello: %v", err)
		}
		conn.Close() // an MPTCP connection's end, where it would be counted
	}
	const busy = "127.0.0.30"
	holdServed(t, agent.httpAddr, busy, 3)
	require.True(t, refused(t, agent.httpAddr, busy))
	for source, url := range urls {
		var got map[string]float64
		assert.Eventually(t, func() bool {
			got = scrape(t, url)
			return got["consul_refused_http_connections_total"] >= 1 && got["consul_refused_http_connections_untracked_total"] >= 2
		}, 10*time.Second, 20*time.Millisecond, "%s: the refusal, and the silent ones", source)
		assert.Equal(t, 1.0, value(t, got, "consul_refused_http_connections_total"), source)
		assert.Equal(t, 1.0, value(t, got, `consul_refused_http_connections_per_client_total{client="`+busy+`"}`), source)
		assert.Equal(t, 2.0, value(t, got, "consul_refused_http_connections_untracked_total"), "%s: the silent ones, over TCP and MPTCP", source)
	}
}
