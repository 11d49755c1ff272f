package e2e

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/consul-conn-exporter/consul-conn-exporter/internal/testkit/programs"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/textfile"
)

// The agent's own limits, its server RPC limiter and the local programs
// holding its connections, against a real Consul agent with ACLs on and
// limits that are not the defaults.
func TestConsulAwareAgainstARealAgent(t *testing.T) {
	programs.Need(t, "ss", "apt-get install iproute2")
	agent := startConsul(t, `http_max_conns_per_client = 37
rpc_max_conns_per_client = 23
rpc_handshake_timeout = "5m"`, true)
	_, httpPort, _ := net.SplitHostPort(agent.httpAddr)
	_, rpcPort, _ := net.SplitHostPort(agent.serverAddr)
	t.Setenv("CONSUL_HTTP_ADDR", agent.httpAddr)
	watch := []string{"--port", httpPort, "--rpc.port", rpcPort}

	// The least a token needs, as the README gives it.
	client := agent.api(t)
	policy, _, err := client.ACL().PolicyCreate(&api.ACLPolicy{Name: "consul-conn-exporter", Rules: `agent_prefix "" { policy = "read" }`}, nil)
	require.NoError(t, err)
	token, _, err := client.ACL().TokenCreate(&api.ACLToken{Policies: []*api.ACLTokenPolicyLink{{ID: policy.ID}}}, nil)
	require.NoError(t, err)
	tokenFile := filepath.Join(t.TempDir(), "token")
	require.NoError(t, os.WriteFile(tokenFile, []byte(token.SecretID+"\n"), 0o600))

	t.Run("auto with an agent:read token file", func(t *testing.T) {
		t.Setenv("CONSUL_HTTP_TOKEN_FILE", tokenFile)
		dir := t.TempDir()
		res := exporter(t, dir, append([]string{"--once", "--limit", "auto", "--rpc.limit", "auto"}, watch...)...)
		require.Equal(t, 0, res.exit, res.stderr)
		assert.Equal(t, 37.0, value(t, res.metrics, "consul_http_max_conns_per_client"))
		assert.Equal(t, 23.0, value(t, res.metrics, "consul_rpc_max_conns_per_client"))
		assert.Equal(t, 1.0, value(t, res.metrics, "consul_conn_exporter_limits_read_success"))
		deprecatedAsTheirNew(t, res.metrics)
		assert.Equal(t, 2.0, value(t, res.metrics, `consul_open_rpc_connections_per_client{client="127.0.0.1"}`), "the dev server's own two")
		assertNoSecret(t, res, dir, token.SecretID, agent.token)
		assert.NotContains(t, res.stderr, "which is not watched")

		// Watching another port than the agent's: its connections would
		// be missed, and the agent's own configuration says so.
		res = exporter(t, t.TempDir(), "--once", "--limit", "auto", "--port", "18999")
		require.Equal(t, 0, res.exit, res.stderr)
		assert.Contains(t, res.stderr, "the Consul agent serves HTTP on port "+httpPort+", which is not watched: add --port "+httpPort)
	})

	t.Run("auto without a token", func(t *testing.T) {
		dir := t.TempDir()
		res := exporter(t, dir, append([]string{"--once", "--limit", "auto", "--rpc.limit", "auto"}, watch...)...)
		assert.Equal(t, 1, res.exit, "a failed read fails --once")
		assert.Contains(t, res.stderr, "403")
		assert.Contains(t, res.stderr, "agent:read")
		assert.Equal(t, 0.0, value(t, res.metrics, "consul_conn_exporter_limits_read_success"))
		assert.Equal(t, 1.0, value(t, res.metrics, "consul_conn_exporter_collect_success"), "the counts are still right")
		deprecatedAsTheirNew(t, res.metrics)
		assert.Contains(t, res.metrics, `consul_open_rpc_connections{port="`+rpcPort+`"}`)
		assert.NotContains(t, res.metrics, "consul_http_max_conns_per_client", "no limit rather than a guessed one")
		assert.NotContains(t, res.metrics, "consul_rpc_max_conns_per_client")
		assertNoSecret(t, res, dir, token.SecretID, agent.token)
	})

	t.Run("the RPC limiter refuses past the count we report", func(t *testing.T) {
		// HTTP connections that must not move while RPC ones come.
		for range 5 {
			request(t, agent.httpAddr, "127.0.0.104")
		}
		count := func() map[string]float64 {
			res := exporter(t, t.TempDir(), append([]string{"--once", "--limit", "37", "--rpc.limit", "23"}, watch...)...)
			require.Equal(t, 0, res.exit, res.stderr)
			return res.metrics
		}
		before := count()
		const busy = "127.0.0.103"
		perClient := `consul_open_rpc_connections_per_client{client="` + busy + `"}`
		for held := 0; held < 23; held++ {
			require.Equal(t, float64(held), count()[perClient])
			dialFrom(t, busy, agent.serverAddr)
		}
		at := count()
		require.Equal(t, 23.0, value(t, at, perClient))
		require.Equal(t, 23.0, value(t, at, "consul_open_rpc_connections_max_per_client"))
		require.Equal(t, at["consul_rpc_max_conns_per_client"], at["consul_open_rpc_connections_max_per_client"])

		// Our metric is at the limit: Consul closes the next one at once.
		conn := dialFrom(t, busy, agent.serverAddr)
		require.NoError(t, conn.SetReadDeadline(time.Now().Add(30*time.Second)))
		_, err := conn.Read(make([]byte, 1))
		assert.True(t, closedByPeer(err), "Consul closes connection 24, got %v", err)

		after := count()
		assert.Equal(t, 23.0, value(t, after, perClient), "the 23 before it are held")
		for _, name := range []string{`consul_open_http_connections{port="` + httpPort + `"}`,
			`consul_open_http_connections_per_client{client="127.0.0.104"}`, "consul_open_http_connections_max_per_client"} {
			assert.Equal(t, before[name], after[name], "%s moved with RPC connections", name)
		}
		assert.Equal(t, 5.0, value(t, after, `consul_open_http_connections_per_client{client="127.0.0.104"}`))
	})

	t.Run("the local programs holding the connections", func(t *testing.T) {
		curl := programs.Need(t, "curl", "apt-get install curl")
		python := programs.Need(t, "python3", "apt-get install python3")
		_, meta, err := client.Catalog().Services(nil)
		require.NoError(t, err)
		// Three blocking queries, held until the test ends.
		var curlComm string
		for range 3 {
			cmd := exec.Command(curl, "-s", "-H", "X-Consul-Token: "+agent.token,
				"http://"+agent.httpAddr+"/v1/catalog/services?wait=5m&index="+itoa(meta.LastIndex))
			require.NoError(t, cmd.Start())
			t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
			curlComm = comm(t, cmd.Process.Pid)
		}
		// And a Python client holding five keep-alive connections.
		py := startUntil(t, "ready", python, "-c", `
import http.client, signal, sys
conns = []
for _ in range(5):
    c = http.client.HTTPConnection(sys.argv[1])
    c.request("GET", "/v1/status/leader")
    c.getresponse().read()
    conns.append(c)
print("ready", flush=True)
signal.pause()
`, agent.httpAddr)
		pyComm := comm(t, py.cmd.Process.Pid)
		require.NotEqual(t, curlComm, pyComm)

		args := append([]string{"--once", "--limit", "37", "--clients.processes"}, watch...)
		var asRoot result
		// curl may not have connected yet; the Python client has.
		require.Eventually(t, func() bool {
			asRoot = exporter(t, t.TempDir(), args...)
			return asRoot.metrics[`consul_open_http_connections_per_process{process="`+curlComm+`"}`] == 3
		}, 20*time.Second, 50*time.Millisecond, "three curls: %v", asRoot.metrics)
		require.Equal(t, 0, asRoot.exit, asRoot.stderr)
		assert.Equal(t, 5.0, value(t, asRoot.metrics, `consul_open_http_connections_per_process{process="`+pyComm+`"}`))
		assert.NotContains(t, asRoot.stderr, "cannot tell which local programs")
		// netstat and the built-in reader name the same programs, and so
		// does the kernel's list of open files.
		programs.Need(t, "netstat", "apt-get install net-tools")
		for _, via := range []struct {
			source     string
			fromKernel bool
		}{{"netstat", false}, {"netlink", false}, {"ss", true}, {"netlink", true}} {
			run, lookup := exporter, "--no-clients.processes.bpf"
			if via.fromKernel {
				run, lookup = plainExporter, "--clients.processes.bpf"
			}
			res := run(t, t.TempDir(), append(args, "--source", via.source, lookup)...)
			require.Equal(t, 0, res.exit, res.stderr)
			assert.Equal(t, via.fromKernel, strings.Contains(res.stderr, fromKernel), res.stderr)
			assert.Equal(t, 3.0, value(t, res.metrics, `consul_open_http_connections_per_process{process="`+curlComm+`"}`), via.source)
			assert.Equal(t, 5.0, value(t, res.metrics, `consul_open_http_connections_per_process{process="`+pyComm+`"}`), via.source)
		}

		// As nobody, the programs are hidden: no per-process series, a
		// warning, and the same counts.
		asNobody := runAsNobody(t, nil, args...)
		require.Equal(t, 0, asNobody.exit, asNobody.stderr)
		assert.Contains(t, asNobody.stderr, "cannot tell which local programs hold the connections")
		assert.Contains(t, asNobody.stderr, "CAP_SYS_PTRACE")
		for name := range asNobody.metrics {
			assert.NotContains(t, name, "per_process")
		}
		for name, value := range asRoot.metrics {
			// The uses change as the agent's own connections talk (its RPC
			// ones, idle or unknown by the tick), and the longest is an
			// age: two runs read them apart.
			if strings.Contains(name, "connections") && !strings.Contains(name, "per_process") && !strings.Contains(name, "_by_use") {
				assert.Equal(t, value, asNobody.metrics[name], name)
			}
		}
		// As nobody with the capabilities the README gives instead of root,
		// the walk of /proc names them all.
		withCaps := runAsNobody(t, []string{"sys_ptrace", "dac_read_search"}, args...)
		require.Equal(t, 0, withCaps.exit, withCaps.stderr)
		assert.NotContains(t, withCaps.stderr, fromKernel)
		assert.Equal(t, 3.0, value(t, withCaps.metrics, `consul_open_http_connections_per_process{process="`+curlComm+`"}`))
		assert.Equal(t, 5.0, value(t, withCaps.metrics, `consul_open_http_connections_per_process{process="`+pyComm+`"}`))
	})

	t.Run("a reload shows", func(t *testing.T) {
		t.Setenv("CONSUL_HTTP_TOKEN_FILE", tokenFile)
		dir := t.TempDir()
		startUntil(t, "msg=starting", append([]string{binary, "--textfile.directory", dir, "--limit", "auto",
			"--limit.refresh", "1s", "--interval", "100ms"}, watch...)...)
		limit := func() float64 {
			return readMetrics(t, filepath.Join(dir, textfile.FileName))["consul_http_max_conns_per_client"]
		}
		require.Eventually(t, func() bool { return limit() == 37 }, 20*time.Second, 20*time.Millisecond)

		text, err := os.ReadFile(agent.config)
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(agent.config, []byte(strings.Replace(string(text),
			"http_max_conns_per_client = 37", "http_max_conns_per_client = 41", 1)), 0o600))
		require.NoError(t, client.Agent().Reload())
		assert.Eventually(t, func() bool { return limit() == 41 }, 20*time.Second, 20*time.Millisecond,
			"the running exporter shows the reloaded limit")
	})
}

// assertNoSecret checks that no token is in the exporter's output.
func assertNoSecret(t *testing.T, res result, dir string, secrets ...string) {
	t.Helper()
	file, err := os.ReadFile(filepath.Join(dir, textfile.FileName))
	require.NoError(t, err)
	for _, secret := range secrets {
		assert.NotContains(t, res.stderr, secret)
		assert.NotContains(t, string(file), secret)
	}
}
