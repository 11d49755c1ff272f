package e2e

import (
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A limit not set yet, proven on the real agent: with the agent at 200
// and --whatif.limit http=20, three addresses that open and hold 25, 15
// and 40 connections are predicted 5, 0 and 20 refusals, from the samples
// of a running exporter and by the kernel's events at each open (both
// started before them); an agent at 20, the same pattern run again,
// refuses exactly those, counted by the clients' own 429s and closes and
// by the exporter's --refusals.
func TestWhatIfALimitPredictsTheAgentsRefusals(t *testing.T) {
	needEvents(t)
	pattern := map[string]int{"127.0.0.111": 25, "127.0.0.112": 15, "127.0.0.113": 40}
	want := map[string]int{"127.0.0.111": 5, "127.0.0.112": 0, "127.0.0.113": 20}
	openAndHold := func(agent consulAgent) map[string]int {
		refusedTo := map[string]int{}
		for from, n := range pattern {
			refusedTo[from] = 0
			for range n {
				status, conn, err := exchange(t, agent.httpAddr, from)
				if err == nil && status == http.StatusOK {
					t.Cleanup(func() { conn.Close() })
					continue
				}
				require.True(t, err == nil && status == http.StatusTooManyRequests || err != nil && closedByPeer(err), "%d %v", status, err)
				conn.Close()
				refusedTo[from]++
			}
		}
		return refusedTo
	}

	agent := startConsul(t, "http_max_conns_per_client = 200", false)
	addr := freeAddr(t)
	startServer(t, binary, "--web.listen-address="+addr, "--source", "netlink", "--sample.interval", "100ms",
		"--port", agent.httpPort(), "--limit", "200", "--whatif.limit", "http=20", "--whatif.limit", "http=100")
	url := "http://" + addr + "/metrics"
	require.Eventually(t, func() bool { return scrape(t, url)[`consul_conn_exporter_collector_success{collector="source"}`] == 1 }, 20*time.Second, 50*time.Millisecond)
	eventsURL := eventsExporter(t, "--port", agent.httpPort(), "--limit", "200", "--whatif.limit", "http=20", "--whatif.limit", "http=100")
	require.Eventually(t, func() bool {
		return scrape(t, eventsURL)[`consul_conn_exporter_collector_success{collector="events"}`] == 1
	}, 20*time.Second, 50*time.Millisecond)
	assert.Equal(t, map[string]int{"127.0.0.111": 0, "127.0.0.112": 0, "127.0.0.113": 0}, openAndHold(agent), "the agent at 200 refuses none")

	for name, url := range map[string]string{"samples": url, "events": eventsURL} {
		var metrics map[string]float64
		require.Eventually(t, func() bool {
			metrics = scrape(t, url)
			return metrics[`consul_http_whatif_refused_total{limit="20"}`] == 25
		}, 20*time.Second, 50*time.Millisecond, "%s: every client seen at its count", name)
		for from, n := range want {
			assert.Equal(t, float64(n), metrics[fmt.Sprintf(`consul_http_whatif_refused_per_client_total{client="%s",limit="20"}`, from)], "%s %s", name, from)
		}
		assert.Zero(t, value(t, metrics, `consul_http_whatif_refused_total{limit="100"}`), name)
	}

	// The agent at 20, the same pattern: refused exactly as predicted.
	at20 := startConsul(t, "http_max_conns_per_client = 20", false)
	refusalsURL, _ := startRefusals(t, "--port", at20.httpPort(), "--limit", "20")
	require.Eventually(t, func() bool {
		return scrape(t, refusalsURL)[`consul_conn_exporter_collector_success{collector="refusals"}`] == 1
	}, 20*time.Second, 50*time.Millisecond)
	assert.Equal(t, want, openAndHold(at20), "the clients' own count")
	var refusals map[string]float64
	require.Eventually(t, func() bool {
		refusals = scrape(t, refusalsURL)
		return refusals["consul_refused_http_connections_total"] >= 25
	}, 20*time.Second, 50*time.Millisecond, "the refusals counted in the kernel")
	assert.Equal(t, 25.0, value(t, refusals, "consul_refused_http_connections_total"))
	for from, n := range want {
		assert.Equal(t, float64(n), refusals[fmt.Sprintf(`consul_refused_http_connections_per_client_total{client="%s"}`, from)], "--refusals: %s", from)
	}
}
