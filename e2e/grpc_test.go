package e2e

import (
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/consul-conn-exporter/consul-conn-exporter/internal/testkit/programs"
)

// grpcPeer is the stand-in for a Consul 2.0.3 agent's external gRPC
// listeners (tools/grpcpeer: a gRPC health server behind
// hashicorp/go-connlimit, as Consul's), with a limit of limit on each of
// its ports; it returns their addresses, plaintext and TLS.
func grpcPeer(t *testing.T, limit int) (plain, secure string) {
	t.Helper()
	programs.NotShort(t, "runs a gRPC server")
	bin := filepath.Join(t.TempDir(), "grpcpeer")
	build := exec.Command("go", "build", "-o", bin, ".")
	build.Dir = "../tools/grpcpeer"
	out, err := build.CombinedOutput()
	require.NoError(t, err, "building tools/grpcpeer: %s", out)
	plain, secure = freeAddr(t), freeAddr(t)
	startUntil(t, "ready", bin, "-plain", plain, "-tls", secure, "-limit", fmt.Sprint(limit))
	return plain, secure
}

// grpcConnect opens a connection from the address from to a gRPC port, as
// an HTTP/2 client does (over TLS where secure): it is served if the
// server's SETTINGS come back, and then held open until the test ends. A
// refused one is closed, as the tests' clients close after a refusal
// (grpc-go's would reconnect).
func grpcConnect(t *testing.T, from, to string, secure bool) (served bool) {
	t.Helper()
	conn := dialFrom(t, from, to)
	var c net.Conn = conn
	require.NoError(t, conn.SetDeadline(time.Now().Add(10*time.Second)))
	if secure {
		tc := tls.Client(conn, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"}})
		if err := tc.Handshake(); err != nil {
			conn.Close()
			require.True(t, closedByPeer(err), "the TLS handshake: %v", err)
			return false
		}
		c = tc
	}
	// The client preface and an empty SETTINGS frame.
	_, err := io.WriteString(c, "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
	header := make([]byte, 9)
	if err == nil {
		_, err = io.ReadFull(c, header)
	}
	if err != nil {
		conn.Close()
		require.True(t, closedByPeer(err), "%v", err)
		return false
	}
	require.Equal(t, byte(4), header[3], "the server's first frame is its SETTINGS")
	require.NoError(t, conn.SetDeadline(time.Time{}))
	t.Cleanup(func() { conn.Close() })
	return true
}

// The gRPC limiter group, against the limiter Consul 2.0.3 uses (limit 5
// on a plaintext and a TLS port): one address opening 8 connections to
// each port holds 5 and is refused 3. The exporter, with ss, the built-in
// reader and the kernel's events (started before the clients), reads 5
// held on each port, each port a group of its own, and counts 3 refusals
// for that address on each; a limit of 3 would have refused its 4th to 8th
// opens (the events' judgement; the samples', which see the 5 held, 2);
// the programs holding them are named per port (ss, the built-in reader),
// the events count its 8 opens on each; check is CRITICAL for it. The HTTP group, nothing on its port, counts none.
func TestGRPCLimiterGroupHeldAndRefusedPerPort(t *testing.T) {
	needEvents(t)
	programs.Need(t, "ss", "apt-get install iproute2")
	plain, secure := grpcPeer(t, 5)
	plainPort, securePort := portOf(t, plain), portOf(t, secure)
	// Nothing listens on the HTTP port: the agent's user is given.
	httpPort, user := portOf(t, freeAddr(t)), fmt.Sprint(os.Getuid())
	flags := []string{"--port", httpPort, "--consul.user", user, "--grpc.port", plainPort, "--grpc.port", securePort, "--grpc.limit", "5", "--whatif.limit", "grpc=3", "--refusals"}
	urls := map[string]string{"events": eventsExporter(t, flags...)}
	for _, source := range []string{"ss", "netlink"} {
		addr := freeAddr(t)
		startServer(t, append([]string{binary, "--web.listen-address=" + addr, "--source", source, "--clients.processes"}, flags...)...)
		urls[source] = "http://" + addr + "/metrics"
	}
	for name, url := range urls {
		require.Eventually(t, func() bool {
			return scrape(t, url)[`consul_conn_exporter_collector_success{collector="refusals"}`] == 1
		}, 20*time.Second, 50*time.Millisecond, name)
	}

	const fromPlain, fromSecure = "127.0.0.121", "127.0.0.122"
	program := comm(t, os.Getpid())
	for _, c := range []struct {
		from, to string
		secure   bool
	}{{fromPlain, plain, false}, {fromSecure, secure, true}} {
		served := 0
		for range 8 {
			if grpcConnect(t, c.from, c.to, c.secure) {
				served++
			}
		}
		require.Equal(t, 5, served, "the limiter serves 5 of %s's 8", c.from)
	}

	for name, url := range urls {
		var m map[string]float64
		require.Eventually(t, func() bool {
			m = scrape(t, url)
			return m[fmt.Sprintf(`consul_refused_grpc_connections_total{port="%s"}`, plainPort)] >= 3 &&
				m[fmt.Sprintf(`consul_refused_grpc_connections_total{port="%s"}`, securePort)] >= 3
		}, 20*time.Second, 50*time.Millisecond, "%s: the refusals counted", name)
		for port, from := range map[string]string{plainPort: fromPlain, securePort: fromSecure} {
			at := func(metric string, labels ...string) float64 {
				labels = append(labels, `port="`+port+`"`)
				slices.Sort(labels) // as scrape keys them
				return value(t, m, fmt.Sprintf(`%s{%s}`, metric, strings.Join(labels, ",")))
			}
			client := `client="` + from + `"`
			assert.Equal(t, 5.0, at("consul_open_grpc_connections"), "%s %s", name, port)
			assert.Equal(t, 5.0, at("consul_open_grpc_connections_max_per_client"), "%s %s", name, port)
			assert.Equal(t, 5.0, at("consul_open_grpc_connections_per_client", client), "%s %s", name, port)
			assert.Equal(t, 5.0, at("consul_grpc_max_conns_per_client"), "%s %s", name, port)
			assert.Equal(t, 1.0, at("consul_grpc_clients_at_limit"), "%s %s", name, port)
			// A gRPC connection is never told waiting or idle: its
			// streams' reads and sends do not say (these are served, and
			// would read waiting over TLS by the HTTP rule).
			assert.Zero(t, at("consul_open_grpc_connections_by_use", `use="waiting"`)+at("consul_open_grpc_connections_by_use", `use="idle"`), "%s %s", name, port)
			if name == "events" { // the churn: every open, refused ones too
				exactUnlessMissed(t, m, 8, fmt.Sprintf(`consul_opened_grpc_connections_total{port="%s"}`, port))
			}
			if name != "events" { // which keep counts, not rows to name
				assert.Equal(t, 5.0, at("consul_open_grpc_connections_per_process", `process="`+program+`"`), "%s %s: this test holds them", name, port)
			}
			assert.Equal(t, 3.0, at("consul_refused_grpc_connections_total"), "%s %s", name, port)
			assert.Equal(t, 3.0, at("consul_refused_grpc_connections_per_client_total", client), "%s %s", name, port)
			assert.Equal(t, 0.0, at("consul_refused_grpc_connections_untracked_total"), "%s %s", name, port)
			// At 3, the client's 4th to 8th opens: as the events judge
			// each; the samples see the 5 held only.
			whatIf := map[string]float64{"events": 5, "ss": 2, "netlink": 2}[name]
			assert.Equal(t, whatIf, at("consul_grpc_whatif_refused_total", `limit="3"`), "%s %s", name, port)
			assert.Equal(t, whatIf, at("consul_grpc_whatif_refused_per_client_total", client, `limit="3"`), "%s %s", name, port)
		}
		assert.Equal(t, 0.0, value(t, m, "consul_open_http_connections_max_per_client"), name)
	}

	for _, source := range []string{"ss", "netlink"} {
		c := checkCommand(t, nil, "--source", source, "--port", httpPort, "--consul.user", user, "--grpc.port", plainPort, "--grpc.port", securePort, "--grpc.limit", "5")
		assert.Equal(t, 2, c.exit, "%s: CRITICAL\n%s%s", source, c.stdout, c.stderr)
		assert.Contains(t, c.stdout, "holds 5 of the 5 gRPC port "+plainPort+" connections grpc_max_conns_per_client allows", source)
		assert.Contains(t, c.stdout, "gRPC port "+securePort+" connections (limit 5 per client", source)
	}
}

// A real Consul 1.20 agent has no gRPC limiter: --grpc.limit auto says so,
// and no limit applies to the gRPC group (not Consul 2.0.3's default of
// 100): check is OK however many connections one address holds there.
func TestGRPCLimitAutoOfAnAgentWithoutTheLimiterIsNone(t *testing.T) {
	programs.Need(t, "ss", "apt-get install iproute2")
	agent := startConsul(t, "http_max_conns_per_client = 200", false)
	plain, _ := grpcPeer(t, 5)
	for range 4 {
		require.True(t, grpcConnect(t, "127.0.0.123", plain, false))
	}
	c := checkCommand(t, nil, "--port", agent.httpPort(), "--limit", "auto", "--consul.server", agent.httpAddr, "--grpc.port", portOf(t, plain), "--grpc.limit", "auto")
	assert.Equal(t, 0, c.exit, "%s%s", c.stdout, c.stderr)
	assert.Contains(t, c.stdout, "has no gRPC per-client limiter (it came with 2.0.3): no limit applies to its gRPC connections")
	assert.Contains(t, c.stdout, "gRPC port "+portOf(t, plain)+" connections (no per-client limit)")
	assert.NotContains(t, c.stdout, "grpc_max_conns_per_client allows")

	addr := freeAddr(t)
	startServer(t, binary, "--web.listen-address="+addr, "--port", agent.httpPort(), "--limit", "auto", "--consul.server", agent.httpAddr,
		"--grpc.port", portOf(t, plain), "--grpc.limit", "auto", "--sample.interval", "0")
	m := scrape(t, "http://"+addr+"/metrics")
	assert.Equal(t, 4.0, value(t, m, fmt.Sprintf(`consul_open_grpc_connections_per_client{client="127.0.0.123",port="%s"}`, portOf(t, plain))))
	assert.NotContains(t, m, fmt.Sprintf(`consul_grpc_max_conns_per_client{port="%s"}`, portOf(t, plain)), "no limit, not 100")
	assert.Equal(t, 1.0, value(t, m, "consul_conn_exporter_limits_read_success"))
}

func portOf(t *testing.T, addr string) string {
	t.Helper()
	_, port, err := net.SplitHostPort(addr)
	require.NoError(t, err)
	return port
}
