package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"sigs.k8s.io/yaml"

	"github.com/consul-conn-exporter/consul-conn-exporter/internal/testkit/loopback"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/testkit/portopener"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/testkit/programs"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/textfile"
)

const dashboardFile = "../deploy/grafana/consul-conn-exporter.json"

type dashboard struct {
	Templating struct {
		List []struct{ Name, Type string }
	}
	Panels []struct {
		ID         int
		Type       string
		Title      string
		Datasource struct{ Type, UID string }
		Targets    []struct {
			Expr       string
			Datasource struct{ Type, UID string }
		}
	}
}

func readDashboard(t *testing.T) dashboard {
	t.Helper()
	text, err := os.ReadFile(dashboardFile)
	require.NoError(t, err)
	var d dashboard
	require.NoError(t, json.Unmarshal(text, &d))
	return d
}

func TestDashboardIsOnTheDatasourceVariableWithNoHardCodedInstance(t *testing.T) {
	d := readDashboard(t)
	var variables []string
	for _, v := range d.Templating.List {
		variables = append(variables, v.Name+":"+v.Type)
	}
	assert.Equal(t, []string{"datasource:datasource", "datacenter:query", "job:query", "instance:query"}, variables)
	ids := map[int]bool{}
	require.NotEmpty(t, d.Panels)
	fleet := 0
	for _, p := range d.Panels {
		assert.False(t, ids[p.ID], "panel id %d twice", p.ID)
		ids[p.ID] = true
		if p.Type == "row" {
			continue
		}
		assert.Equal(t, "${datasource}", p.Datasource.UID, p.Title)
		require.NotEmpty(t, p.Targets, p.Title)
		for _, target := range p.Targets {
			assert.Equal(t, "${datasource}", target.Datasource.UID, p.Title)
			assert.Contains(t, target.Expr, `datacenter=~"$datacenter"`, p.Title)
			// The fleet's panels read the recording rules, over every agent
			// of the datacenters chosen; the agents' the exporter's series.
			if strings.Contains(target.Expr, ":consul_") {
				fleet++
			} else {
				assert.Contains(t, target.Expr, `instance=~"$instance"`, p.Title)
			}
			assert.NotContains(t, target.Expr, `instance="`, p.Title)
			assert.NotRegexp(t, `\[[0-9]+[smhd]\]`, target.Expr, "%s: a range is $__rate_interval, Grafana's convention", p.Title)
		}
	}
	assert.Positive(t, fleet, "the fleet's row")
}

// A real Prometheus scrapes the real exporter (its own /metrics, with the
// RPC and gRPC groups and the local programs on) and node_exporter's textfile
// output, in a datacenter, with the alerts and the fleet's recording rules;
// every panel's and every alert rule's PromQL must parse, and the panels of
// features that are on, the fleet's too, must return series.
func TestDashboardAndAlertsQueryARealPrometheus(t *testing.T) {
	prometheus := programs.Need(t, "prometheus", "apt-get install prometheus")
	nodeExporter := programs.Need(t, "prometheus-node-exporter", "apt-get install prometheus-node-exporter")
	programs.Need(t, "ss", "apt-get install iproute2")
	programs.NeedRoot(t, "see the programs holding the connections")
	httpL, rpcL, grpcL := loopback.Listen(t, "127.0.0.1"), loopback.Listen(t, "127.0.0.1"), loopback.Listen(t, "127.0.0.1")
	dir := t.TempDir()
	exporterAddr, eventsAddr, nodeAddr, promAddr := freeAddr(t), freeAddr(t), freeAddr(t), freeAddr(t)
	startServer(t, plainBinary, "--web.listen-address="+exporterAddr, "--textfile.directory="+dir, "--interval=1s",
		"--port", port(httpL), "--rpc.port", port(rpcL), "--grpc.port", port(grpcL), "--clients.processes", "--refusals",
		"--whatif.limit", "http=5", "--whatif.limit", "rpc=2", "--whatif.limit", "grpc=2")
	// Opened after its first read, which the limits not set yet judge
	// from: what it found held opened before it.
	scrape(t, "http://"+exporterAddr+"/metrics")
	loopback.Open(t, httpL, "127.0.0.91", 12)
	loopback.Open(t, rpcL, "127.0.0.92", 3)
	loopback.Open(t, grpcL, "127.0.0.94", 4)
	// The churn's panels: a second exporter, on the kernel's events
	// (--clients.processes needs rows), and connections that come and go;
	// in a datacenter of its own, as it counts no refusals.
	startServer(t, plainBinary, "--web.listen-address="+eventsAddr, "--source", "events", "--port", port(httpL), "--rpc.port", port(rpcL))
	churn := loopback.Open(t, httpL, "127.0.0.93", 5)
	require.NoError(t, portopener.CloseAll(churn))
	startServer(t, nodeExporter, "--web.listen-address="+nodeAddr,
		"--collector.disable-defaults", "--collector.textfile", "--collector.textfile.directory="+dir)
	config := filepath.Join(t.TempDir(), "prometheus.yml")
	require.NoError(t, os.WriteFile(config, fmt.Appendf(nil, `global: {scrape_interval: 1s, evaluation_interval: 1s}
rule_files: [%q, %q]
scrape_configs:
  - {job_name: consul_conn_exporter, static_configs: [{targets: [%q], labels: {datacenter: dc1}}, {targets: [%q], labels: {datacenter: dc2}}]}
  - {job_name: node, static_configs: [{targets: [%q], labels: {datacenter: dc1}}]}
`, mustAbs(t, "../deploy/prometheus/alerts.yml"), mustAbs(t, "../deploy/prometheus/rules.yml"), exporterAddr, eventsAddr, nodeAddr), 0o644))
	startUntil(t, "Server is ready to receive web requests", prometheus, "--config.file="+config,
		"--storage.tsdb.path="+t.TempDir(), "--web.listen-address="+promAddr)

	query := func(expr string) (status string, series int, msg string) {
		resp, err := http.Get("http://" + promAddr + "/api/v1/query?query=" + url.QueryEscape(expr))
		require.NoError(t, err)
		defer resp.Body.Close()
		var body struct {
			Status, Error string
			Data          struct{ Result []json.RawMessage }
		}
		require.NoError(t, json.NewDecoder(resp.Body).Decode(&body))
		return body.Status, len(body.Data.Result), body.Error
	}
	// Two scrapes of each target.
	require.Eventually(t, func() bool {
		_, n, _ := query(`count_over_time(up[1m]) >= 2`)
		return n == 3
	}, 30*time.Second, 100*time.Millisecond, "two scrapes of both targets")
	// And the rules evaluated after them: a rate needs the two.
	require.Eventually(t, func() bool {
		_, n, _ := query(`datacenter:consul_refused_http_connections_per_minute:rate5m`)
		return n == 1
	}, 30*time.Second, 100*time.Millisecond, "the fleet's rules evaluated")
	require.FileExists(t, filepath.Join(dir, textfile.FileName))

	// "All" in Grafana: the variables' allValue.
	// Grafana sets $__rate_interval from the scrape interval; the range the
	// panels had before it.
	variables := strings.NewReplacer("$datacenter", ".*", "$job", ".*", "$instance", ".*", "$__rate_interval", "5m")
	for _, p := range readDashboard(t).Panels {
		for _, target := range p.Targets {
			expr := variables.Replace(target.Expr)
			status, series, msg := query(expr)
			assert.Equal(t, "success", status, "%s: %s: %s", p.Title, expr, msg)
			// Off in this test: the Pushgateway and --limit auto; and no
			// client is refused, so none has a refusals series.
			if !strings.Contains(expr, "push_time_seconds") && !strings.Contains(expr, `collector="limits"`) &&
				!strings.Contains(expr, "refused_http_connections_per_client") && !strings.Contains(expr, "refused_grpc_connections_per_client") {
				assert.Positive(t, series, "%s: %s returns no series", p.Title, expr)
			}
		}
	}
	for name, expr := range alertExprs(t) {
		status, _, msg := query(expr)
		assert.Equal(t, "success", status, "alert %s: %s", name, msg)
	}
}

func mustAbs(t *testing.T, path string) string {
	abs, err := filepath.Abs(path)
	require.NoError(t, err)
	return abs
}

// alertExprs are the expressions of deploy/prometheus/alerts.yml.
func alertExprs(t *testing.T) map[string]string {
	text, err := os.ReadFile("../deploy/prometheus/alerts.yml")
	require.NoError(t, err)
	var rules struct {
		Groups []struct {
			Rules []struct{ Alert, Expr string }
		}
	}
	require.NoError(t, yaml.Unmarshal(text, &rules))
	exprs := map[string]string{}
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			exprs[r.Alert] = r.Expr
		}
	}
	return exprs
}
