package e2e

import (
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/consul-conn-exporter/consul-conn-exporter/internal/testkit/loopback"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/testkit/programs"
)

// A client that holds 45 connections for 1.5 s between two scrapes leaves
// no trace in the snapshot, and its peak in the samples: the same for two
// scrapers, with the time at --limit 40 counted, until the window has
// passed.
func TestABurstBetweenScrapesShowsInThePeak(t *testing.T) {
	programs.Need(t, "ss", "apt-get install iproute2")
	for _, source := range []string{"ss", "netlink"} {
		t.Run(source, func(t *testing.T) {
			l := loopback.Listen(t, "127.0.0.1")
			addr := freeAddr(t)
			startServer(t, binary, "--web.listen-address="+addr, "--port", port(l), "--source", source,
				"--limit", "40", "--sample.interval", "1s", "--peak.window", "4s")
			url := "http://" + addr + "/metrics"
			before := scrape(t, url)
			assert.Equal(t, 0.0, value(t, before, "consul_open_http_connections_max_per_client_peak"))
			atLimitBefore := value(t, before, "consul_http_client_at_limit_seconds_total")

			burst := loopback.Open(t, l, "127.0.0.77", 45)
			time.Sleep(1500 * time.Millisecond) // the burst itself, not a wait for anything
			for _, p := range burst {
				p.Client.Close()
				p.Server.Close()
			}
			require.Eventually(t, func() bool {
				return value(t, scrape(t, url), "consul_open_http_connections_max_per_client") == 0
			}, 10*time.Second, 50*time.Millisecond, "the burst is over")

			first := scrape(t, url)
			assert.Equal(t, 0.0, value(t, first, "consul_open_http_connections_max_per_client"), "the snapshot saw nothing")
			assert.Equal(t, 45.0, value(t, first, "consul_open_http_connections_max_per_client_peak"))
			assert.Equal(t, 45.0, value(t, first, `consul_open_http_connections_peak_per_client{client="127.0.0.77"}`))
			atLimit := value(t, first, "consul_http_client_at_limit_seconds_total") - atLimitBefore
			assert.InDelta(t, 1.5, atLimit, 1.0, "1.5 s at the limit, to within a sample interval")

			second := scrape(t, url)
			assert.Equal(t, 45.0, value(t, second, "consul_open_http_connections_max_per_client_peak"), "another scraper, the same peak")

			require.Eventually(t, func() bool {
				return value(t, scrape(t, url), "consul_open_http_connections_max_per_client_peak") == 0
			}, 15*time.Second, 100*time.Millisecond, "after the window, the peak is the snapshot again")
		})
	}
}

// A source that fails about one read in three: the failed samples are counted,
// the peaks come from the good ones, and no zero stands in for a failure.
func TestFailedSamplesAreCountedNotZeros(t *testing.T) {
	dir := t.TempDir()
	outcomes := filepath.Join(dir, "outcomes")
	require.NoError(t, os.WriteFile(outcomes, nil, 0o644))
	capture, err := filepath.Abs("../testdata/captures/ss-iproute2-6.1.0_tan_mixed.txt")
	require.NoError(t, err)
	// About one run in three fails; each notes its outcome with one append
	// (atomic, whatever else runs at the same moment).
	script := `if [ $(expr $(date +%N) % 3) = 0 ]; then echo fail >> ` + outcomes + `; exit 1; fi; echo ok >> ` + outcomes + `; cat ` + capture
	addr := freeAddr(t)
	startServer(t, binary, "--web.listen-address="+addr, "--command", "sh -c '"+script+"'", "--port", "8500",
		"--sample.interval", "100ms", "--peak.window", "10s")
	url := "http://" + addr + "/metrics"
	failedRuns := func() int {
		text, err := os.ReadFile(outcomes)
		require.NoError(t, err)
		return strings.Count(string(text), "fail")
	}
	var (
		metrics       map[string]float64
		before, after int
	)
	require.Eventually(t, func() bool {
		before = failedRuns()
		resp, err := http.Get(url)
		require.NoError(t, err)
		metrics = parseMetrics(t, resp.Body, "the scraped body")
		resp.Body.Close()
		after = failedRuns()
		// The scrape's own collection is one of the runs and may fail: then
		// it shows no group's series, the peaks included.
		return metrics["consul_conn_exporter_samples_total"] >= 12 && metrics["consul_conn_exporter_samples_failed_total"] >= 2 &&
			metrics["consul_conn_exporter_collect_success"] == 1
	}, 30*time.Second, 100*time.Millisecond)
	// Every failed run noted before the scrape is counted, but the one that
	// may still be ending; none that was not noted by its end.
	failed := value(t, metrics, "consul_conn_exporter_samples_failed_total")
	assert.GreaterOrEqual(t, failed, float64(before-1), "failed runs noted before the scrape: %d", before)
	assert.LessOrEqual(t, failed, float64(after), "failed runs noted after the scrape: %d", after)
	assert.Equal(t, 9.0, value(t, metrics, "consul_open_http_connections_max_per_client_peak"), "the capture's busiest client, from the good samples")
}

// A real agent with a small limit: a 2-second burst to it from one address
// shows in the peak and in the time at the limit, read from the agent, and
// with --refusals the requests refused meanwhile are counted too.
func TestABurstToARealAgentsLimitShowsInThePeak(t *testing.T) {
	programs.Need(t, "ss", "apt-get install iproute2")
	programs.NeedRoot(t, "load the refusals' kernel program")
	agent := startConsul(t, "http_max_conns_per_client = 20", false)
	_, httpPort, err := net.SplitHostPort(agent.httpAddr)
	require.NoError(t, err)
	addr := freeAddr(t)
	t.Setenv("CONSUL_HTTP_ADDR", agent.httpAddr)
	// With --refusals.
	startServer(t, plainBinary, "--web.listen-address="+addr, "--port", httpPort, "--limit", "auto",
		"--sample.interval", "500ms", "--peak.window", "1m", "--source", "netlink", "--refusals")
	url := "http://" + addr + "/metrics"
	require.Eventually(t, func() bool {
		return scrape(t, url)["consul_http_max_conns_per_client"] == 20
	}, 20*time.Second, 100*time.Millisecond, "the limit read from the agent")

	const busy = "127.0.0.6"
	held := holdServed(t, agent.httpAddr, busy, 20)
	for i := range 3 { // refused meanwhile
		require.True(t, refused(t, agent.httpAddr, busy), "request %d past the limit", i+1)
	}
	time.Sleep(2 * time.Second) // the burst itself
	for _, c := range held {
		c.Close()
	}
	require.Eventually(t, func() bool {
		return scrape(t, url)[`consul_open_http_connections_per_client{client="`+busy+`"}`] == 0
	}, 20*time.Second, 100*time.Millisecond, "the burst is over")
	after := scrape(t, url)
	assert.Equal(t, 20.0, value(t, after, `consul_open_http_connections_peak_per_client{client="`+busy+`"}`))
	assert.GreaterOrEqual(t, value(t, after, "consul_open_http_connections_max_per_client_peak"), 20.0)
	assert.InDelta(t, 2.0, value(t, after, "consul_http_client_at_limit_seconds_total"), 1.0)
	assert.Equal(t, 3.0, value(t, after, `consul_refused_http_connections_per_client_total{client="`+busy+`"}`), "the burst's refusals")
}
