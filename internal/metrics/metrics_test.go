package metrics

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/consul-conn-exporter/consul-conn-exporter/internal/collector"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/limits"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/table/socket"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/tally"
)

// A result no collector makes (a label that is not UTF-8) still cannot
// panic the exposition: it renders as a failed collection, every feature
// drawn from the counts failed with it, the limits' read as it went.
func TestAResultThatCannotBeRenderedIsAFailedCollection(t *testing.T) {
	res := collector.Result{
		Groups: []collector.GroupCounts{{Group: collector.Group{Limiter: collector.HTTP, Ports: []uint16{8500}},
			Counts:    tally.New([]uint16{8500}, []socket.State{socket.StateEstablished}),
			Processes: []tally.ProcessCount{{Client: netip.MustParseAddr("127.0.0.7"), Process: "bad\xff", Count: 1}}}},
		ProcessesKnown: true, TopClients: 10,
		Limits: limits.Snapshot{Auto: true, ReadOK: true},
		Parts:  []collector.Part{{Name: "source"}, {Name: "limits"}, {Name: "processes"}},
	}
	want := `
# HELP consul_conn_exporter_collect_success 1 if the socket table was read and counted, 0 if the collection failed (then no connection counts are reported).
# TYPE consul_conn_exporter_collect_success gauge
consul_conn_exporter_collect_success 0
# HELP consul_conn_exporter_collector_success 1 if the feature worked in the last collection, 0 if not (the log says why): one series per feature enabled, the source's the counts'.
# TYPE consul_conn_exporter_collector_success gauge
consul_conn_exporter_collector_success{collector="limits"} 1
consul_conn_exporter_collector_success{collector="processes"} 0
consul_conn_exporter_collector_success{collector="source"} 0
# HELP consul_conn_exporter_limits_read_success 1 if the last read of the limits from the Consul agent (--limit auto) worked, 0 if not (the last limits read stay).
# TYPE consul_conn_exporter_limits_read_success gauge
consul_conn_exporter_limits_read_success 1
# HELP consul_conn_exporter_processes_success 1 if the programs holding the connections were named (--clients.processes), 0 if not (then the per-process counts are absent; the other counts are not affected).
# TYPE consul_conn_exporter_processes_success gauge
consul_conn_exporter_processes_success 0
`
	require.NoError(t, testutil.CollectAndCompare(Of(res), strings.NewReader(want), "consul_conn_exporter_collect_success",
		"consul_conn_exporter_collector_success", "consul_conn_exporter_limits_read_success", "consul_conn_exporter_processes_success"))
	assert.Zero(t, testutil.CollectAndCount(Of(res), "consul_open_http_connections_per_process"))
}
