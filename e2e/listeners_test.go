package e2e

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/consul-conn-exporter/consul-conn-exporter/internal/testkit/programs"
)

// A user with no privileges listens on another loopback address at the
// agent's port (Consul listens on 127.0.0.1 alone by default) and opens 250
// connections to itself: they are not the agent's, and neither the counts
// nor check move; the port is said to have two users listening. The same
// user listening at the agent's address on another watched port (the RPC
// port here) decides nothing on the agent's HTTP port.
func TestAnotherUsersListenerOnTheAgentsPortIsNotCounted(t *testing.T) {
	programs.Need(t, "ss", "apt-get install iproute2")
	agent := startConsul(t, "http_max_conns_per_client = 200", false)
	const busy = "127.0.0.50"
	for range 5 {
		status, conn := request(t, agent.httpAddr, busy)
		require.Equal(t, http.StatusOK, status)
		t.Cleanup(func() { conn.Close() })
	}
	opener := portOpener(t) // run as nobody
	startUntil(t, "opened 250 client connections",
		append(programs.AsNobody(t), opener, "-address", "127.0.0.60", "-p", agent.httpPort(), "-n", "250", "-clients", "1")...)
	_, rpc, _ := strings.Cut(freeAddr(t), ":")
	startUntil(t, "opened 1 client connections",
		append(programs.AsNobody(t), opener, "-address", "127.0.0.1", "-p", rpc, "-n", "1", "-clients", "1")...)

	for _, source := range []string{"ss", "netstat", "netlink"} {
		t.Run(source, func(t *testing.T) {
			if source == "netstat" {
				programs.Need(t, "netstat", "apt-get install net-tools")
			}
			res := exporter(t, t.TempDir(), "--once", "--source", source, "--port", agent.httpPort(), "--rpc.port", rpc, "--limit", "200")
			require.Equal(t, 0, res.exit, res.stderr)
			p := agent.httpPort()
			assert.Equal(t, 5.0, value(t, res.metrics, `consul_open_http_connections{port="`+p+`"}`))
			assert.Equal(t, 5.0, value(t, res.metrics, "consul_open_http_connections_max_per_client"))
			assert.Equal(t, 2.0, value(t, res.metrics, `consul_conn_exporter_port_listener_users{port="`+p+`"}`))
			assert.Equal(t, 1.0, value(t, res.metrics, `consul_conn_exporter_port_listening{port="`+p+`"}`))
			assert.Contains(t, res.stderr, "several users listen on port "+p)
		})
	}
	res := checkCommand(t, nil, "--port", agent.httpPort(), "--rpc.port", rpc, "--limit", "200")
	assert.Equal(t, 0, res.exit, res.stdout)
	assertVerdict(t, "OK: "+busy+" holds 5 of the 200 HTTP connections http_max_conns_per_client allows (2%)", lastLine(res.stdout))
	assert.Contains(t, res.stdout, "several users listen on port "+agent.httpPort())
}

// A watched port nothing listens on (a typo, an agent serving HTTPS only, or
// one that is down) is said: its count of 0 is true, the collection works,
// and check is UNKNOWN naming the port.
func TestAWatchedPortNothingListensOnIsSaid(t *testing.T) {
	programs.Need(t, "ss", "apt-get install iproute2")
	_, free, _ := strings.Cut(freeAddr(t), ":")
	res := exporter(t, t.TempDir(), "--once", "--port", free)
	require.Equal(t, 0, res.exit, res.stderr)
	assert.Equal(t, 1.0, value(t, res.metrics, "consul_conn_exporter_collect_success"))
	assert.Equal(t, 0.0, value(t, res.metrics, `consul_conn_exporter_port_listening{port="`+free+`"}`))
	assert.Contains(t, res.stderr, "nothing listens on port "+free)

	c := checkCommand(t, nil, "--port", free, "--limit", "200")
	assert.Equal(t, 3, c.exit, c.stdout)
	assert.Equal(t, "UNKNOWN: nothing listens on port "+free+": a wrong --port, --rpc.port or --grpc.port, or the agent is down", lastLine(c.stdout))
}

// An exporter started before the agent knows the agent's limit within
// seconds of the agent answering, not at the next --limit.refresh.
func TestAnExporterStartedBeforeTheAgentReadsTheLimitWithinSeconds(t *testing.T) {
	programs.Need(t, "ss", "apt-get install iproute2")
	consulAddr, addr := freeAddr(t), freeAddr(t)
	_, port, _ := strings.Cut(consulAddr, ":")
	exporter := start(t, "env", "CONSUL_HTTP_ADDR="+consulAddr, plainBinary, "--web.listen-address="+addr, "--port", port, "--limit", "auto", "--sample.interval=0")
	exporter.waitFor(t, "cannot read the limits", 1)
	exporter.waitFor(t, "Listening on", 1) // the server is up: the log may come first
	url := "http://" + addr + "/metrics"
	assert.Equal(t, 0.0, value(t, scrape(t, url), "consul_conn_exporter_limits_read_success"))

	startAgent(t, "http_max_conns_per_client = 77", agentOptions{httpAddr: consulAddr})
	started := time.Now()
	require.Eventually(t, func() bool {
		return scrape(t, url)["consul_http_max_conns_per_client"] == 77
	}, 20*time.Second, 100*time.Millisecond, "the limit read from the agent (--limit.refresh is 5m)")
	t.Logf("the limit known %s after the agent answered", time.Since(started).Round(time.Millisecond))
}
