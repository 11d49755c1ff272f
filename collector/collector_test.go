package collector

import (
	"context"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/consul-conn-exporter/consul-conn-exporter/parser"
	"github.com/consul-conn-exporter/consul-conn-exporter/runner"
)

var defaultConfig = Config{
	Ports:      []uint16{8500, 8501},
	States:     []parser.State{parser.StateEstablished, parser.StateCloseWait},
	Limit:      200,
	TopClients: 10,
}

// mixed is a real ss capture; its expected counts are in the .expected.json
// beside it.
const mixed = "../fixtures/ss-iproute2-6.1.0_tan_mixed.txt"

func collect(t testing.TB, config Config, argv ...string) Result {
	t.Helper()
	r, err := runner.New(argv, 10*time.Second)
	require.NoError(t, err)
	return New(config, r, slog.New(slog.NewTextHandler(io.Discard, nil))).Collect(context.Background())
}

func TestCollectReportsEveryMetricOfACapture(t *testing.T) {
	res := collect(t, defaultConfig, "cat", mixed)
	require.NoError(t, res.Err)
	want := `
# HELP consul_open_http_connections Server-side TCP connections open on the port (ESTABLISHED and CLOSE-WAIT by default).
# TYPE consul_open_http_connections gauge
consul_open_http_connections{port="8500"} 18
consul_open_http_connections{port="8501"} 4
# HELP consul_open_http_connections_by_state Server-side TCP connections open on the port, by TCP state.
# TYPE consul_open_http_connections_by_state gauge
consul_open_http_connections_by_state{port="8500",state="close_wait"} 2
consul_open_http_connections_by_state{port="8500",state="established"} 16
consul_open_http_connections_by_state{port="8501",state="close_wait"} 1
consul_open_http_connections_by_state{port="8501",state="established"} 3
# HELP consul_open_http_connections_max_per_client Most connections any one client IP holds over all watched ports: the number Consul's http_max_conns_per_client applies to.
# TYPE consul_open_http_connections_max_per_client gauge
consul_open_http_connections_max_per_client 9
# HELP consul_open_http_connections_per_client Connections one client IP holds over all watched ports, for the clients holding the most.
# TYPE consul_open_http_connections_per_client gauge
consul_open_http_connections_per_client{client="127.0.0.10"} 9
consul_open_http_connections_per_client{client="127.0.0.11"} 6
consul_open_http_connections_per_client{client="127.0.0.12"} 3
consul_open_http_connections_per_client{client="::1"} 4
# HELP consul_http_max_conns_per_client Consul's per-client connection limit (http_max_conns_per_client) as configured for this exporter.
# TYPE consul_http_max_conns_per_client gauge
consul_http_max_conns_per_client 200
# HELP consul_conn_exporter_collect_success 1 if the socket table was read and counted, 0 if the collection failed (then no connection counts are reported).
# TYPE consul_conn_exporter_collect_success gauge
consul_conn_exporter_collect_success 1
`
	require.NoError(t, testutil.CollectAndCompare(res, strings.NewReader(want),
		"consul_open_http_connections", "consul_open_http_connections_by_state",
		"consul_open_http_connections_max_per_client", "consul_open_http_connections_per_client",
		"consul_http_max_conns_per_client", "consul_conn_exporter_collect_success"))
}

func TestMetricsAreLintClean(t *testing.T) {
	problems, err := testutil.CollectAndLint(collect(t, defaultConfig, "cat", mixed))
	require.NoError(t, err)
	assert.Empty(t, problems)
}

func TestTopClientsBoundsPerClientSamples(t *testing.T) {
	config := defaultConfig
	config.TopClients = 2
	res := collect(t, config, "cat", mixed)
	want := `
# HELP consul_open_http_connections_per_client Connections one client IP holds over all watched ports, for the clients holding the most.
# TYPE consul_open_http_connections_per_client gauge
consul_open_http_connections_per_client{client="127.0.0.10"} 9
consul_open_http_connections_per_client{client="127.0.0.11"} 6
`
	require.NoError(t, testutil.CollectAndCompare(res, strings.NewReader(want), "consul_open_http_connections_per_client"))

	config.TopClients = 0
	assert.Zero(t, testutil.CollectAndCount(collect(t, config, "cat", mixed), "consul_open_http_connections_per_client"))
}

func TestEmptyOutputIsARealZero(t *testing.T) {
	// What a narrow ss filter prints when nobody is connected.
	res := collect(t, defaultConfig, "true")
	require.NoError(t, res.Err)
	want := `
# HELP consul_open_http_connections Server-side TCP connections open on the port (ESTABLISHED and CLOSE-WAIT by default).
# TYPE consul_open_http_connections gauge
consul_open_http_connections{port="8500"} 0
consul_open_http_connections{port="8501"} 0
# HELP consul_open_http_connections_max_per_client Most connections any one client IP holds over all watched ports: the number Consul's http_max_conns_per_client applies to.
# TYPE consul_open_http_connections_max_per_client gauge
consul_open_http_connections_max_per_client 0
`
	require.NoError(t, testutil.CollectAndCompare(res, strings.NewReader(want),
		"consul_open_http_connections", "consul_open_http_connections_max_per_client"))
}

func TestFailedCollectionReportsNoCount(t *testing.T) {
	for _, tc := range []struct {
		name string
		argv []string
		err  string
	}{
		{"command missing", []string{"no-such-command-for-consul-conn-exporter"}, "cannot run"},
		{"non-zero exit", []string{"ls", "/no/such/dir"}, "exited with status 2"},
		{"garbage", []string{"echo", "garbage"}, "that are not ss or netstat socket rows"},
		{"summary instead of table", []string{"cat", "../fixtures/ss-iproute2-6.1.0_s-summary_mixed.txt"}, "that are not ss or netstat socket rows"},
		{"headers only and stderr", []string{"sh", "-c", "echo 'Proto Recv-Q Send-Q Local Address Foreign Address State'; echo 'netstat: /proc/net/tcp: No such file or directory' >&2"}, "wrote to stderr: netstat: /proc/net/tcp"},
		{"headers only", []string{"echo", "Proto Recv-Q Send-Q Local Address Foreign Address State"}, "no socket rows"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res := collect(t, defaultConfig, tc.argv...)
			require.Error(t, res.Err)
			assert.Contains(t, res.Err.Error(), tc.err)
			assert.NotContains(t, res.Err.Error(), "\n")
			want := `
# HELP consul_conn_exporter_collect_success 1 if the socket table was read and counted, 0 if the collection failed (then no connection counts are reported).
# TYPE consul_conn_exporter_collect_success gauge
consul_conn_exporter_collect_success 0
`
			require.NoError(t, testutil.CollectAndCompare(res, strings.NewReader(want), "consul_conn_exporter_collect_success"))
			assert.Equal(t, 2, testutil.CollectAndCount(res), "only success and duration")
		})
	}
}

func TestImpliedStateNeedsExactlyOneStateFilter(t *testing.T) {
	assert.Equal(t, parser.StateEstablished, impliedState(strings.Fields("ss -Htn state established ( sport = :8500 )")))
	assert.Equal(t, parser.StateCloseWait, impliedState(strings.Fields("ip netns exec consul ss -tn state close-wait")))
	assert.Equal(t, parser.StateUnknown, impliedState(strings.Fields("ss -Htan state established state close-wait")))
	assert.Equal(t, parser.StateUnknown, impliedState(strings.Fields("ss -tan")))
}
