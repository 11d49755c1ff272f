package e2e

import (
	"context"
	"fmt"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/consul-conn-exporter/consul-conn-exporter/internal/testkit/loopback"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/testkit/portopener"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/testkit/programs"
)

// needEvents ends the test where the events' programs cannot load here.
func needEvents(t *testing.T) {
	t.Helper()
	programs.NeedRoot(t, "load the events' kernel programs")
	programs.NeedBTF(t)
}

// openCounts are the open connections' series of metrics: what the
// events must give as a read of the table gives them (the uses apart: the
// events tell them exactly, a table's tcp_info not always).
func openCounts(metrics map[string]float64) map[string]float64 {
	m := maps.Clone(metrics)
	maps.DeleteFunc(m, func(key string, _ float64) bool {
		return !strings.HasPrefix(key, "consul_open_") || strings.Contains(key, "_peak") || strings.Contains(key, "_by_use")
	})
	return m
}

// exactUnlessMissed asserts the metric key is want, or within the changes
// the exporter says the kernel skipped the events' program for.
func exactUnlessMissed(t *testing.T, metrics map[string]float64, want float64, key string) {
	t.Helper()
	programs.ExactUnlessMissed(t, want, value(t, metrics, key), value(t, metrics, "consul_conn_exporter_events_missed_total"), key)
}

// eventsExporter starts the exporter with --source events and args, and
// returns its /metrics URL.
func eventsExporter(t *testing.T, args ...string) string {
	t.Helper()
	addr := freeAddr(t)
	startServer(t, append([]string{binary, "--web.listen-address=" + addr, "--source", "events"}, args...)...)
	return "http://" + addr + "/metrics"
}

// The exporter's programs are a BTF tracepoint and a TCP iterator, as its
// links say (their fdinfo): no map-element iterator, which some security
// policies refuse, and which would take the whole source down there.
func TestEventsLinkNoMapElementIterator(t *testing.T) {
	needEvents(t)
	l := loopback.Listen(t, "127.0.0.1")
	p := startServer(t, binary, "--web.listen-address="+freeAddr(t), "--source", "events", "--port", port(l))
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fdinfo", p.cmd.Process.Pid))
	require.NoError(t, err)
	var links []string
	for _, fd := range fds {
		info, err := os.ReadFile(fmt.Sprintf("/proc/%d/fdinfo/%s", p.cmd.Process.Pid, fd.Name()))
		if err != nil {
			continue // closed meanwhile
		}
		var kind, target string
		for _, line := range strings.Split(string(info), "\n") {
			if k, v, ok := strings.Cut(line, ":\t"); ok && k == "link_type" {
				kind = v
			} else if ok && k == "target_name" {
				target = v
			}
		}
		if kind != "" {
			links = append(links, strings.TrimSpace(kind+" "+target))
		}
	}
	slices.Sort(links)
	// One for the changes of state, one each for the reads and the sends
	// (on a kernel with their tracepoints, Linux 6.3 and later).
	assert.Equal(t, []string{"iter tcp", "raw_tracepoint", "raw_tracepoint", "raw_tracepoint"}, links, "tp_btf attaches as a raw tracepoint")
}

// The counts the events keep equal a read of the table after every step:
// connections open before the start, IPv4, IPv6 and v4-mapped, CLOSE-WAIT,
// the RPC group, opens and closes.
func TestEventsCountsEqualTheTablesAfterEveryStep(t *testing.T) {
	needEvents(t)
	v4, v6, mapped := loopback.Mix(t) // before the start
	rpc := loopback.Listen(t, "127.0.0.1")
	loopback.Open(t, rpc, "127.0.0.16", 3)
	args := []string{"--port", port(v4), "--port", port(v6), "--port", port(mapped), "--rpc.port", port(rpc), "--limit", "50", "--rpc.limit", "10"}
	url := eventsExporter(t, args...)
	table := func() map[string]float64 {
		res := exporter(t, t.TempDir(), append([]string{"--source", "netlink", "--once"}, args...)...)
		require.Zero(t, res.exit, res.stderr)
		return openCounts(res.metrics)
	}
	assert.Equal(t, table(), openCounts(scrape(t, url)), "the seed")

	more := loopback.Open(t, v4, "127.0.0.11", 10) // the same client as the seed's 20
	loopback.Open(t, mapped, "127.0.0.11", 4)      // and v4-mapped: one client
	loopback.Open(t, v6, "::1", 2)
	loopback.Open(t, rpc, "127.0.0.16", 5)
	got := scrape(t, url)
	assert.Equal(t, table(), openCounts(got), "after opens")
	assert.Equal(t, 34.0, value(t, got, `consul_open_http_connections_per_client{client="127.0.0.11"}`))
	exactUnlessMissed(t, got, 14, `consul_opened_http_connections_per_client_total{client="127.0.0.11"}`) // opened since the start
	exactUnlessMissed(t, got, 5, `consul_opened_rpc_connections_per_client_total{client="127.0.0.16"}`)

	for _, p := range more[:6] { // the client first: CLOSE-WAIT, still held
		require.NoError(t, p.Client.Close())
		_, err := p.Server.Read(make([]byte, 1))
		require.Error(t, err)
	}
	portopener.CloseAll(more[6:])
	got = scrape(t, url)
	assert.Equal(t, table(), openCounts(got), "after closes")
	exactUnlessMissed(t, got, 4, `consul_closed_http_connections_total{by="client"}`)
	exactUnlessMissed(t, got, 4, `consul_http_connection_duration_seconds_count`)
	if value(t, got, "consul_conn_exporter_events_drift") != 0 {
		assert.Positive(t, value(t, got, "consul_conn_exporter_events_missed_total"), "a drift only where the kernel skipped the program")
	}
}

// Thousands of short connections from one client, each opened and closed
// between two scrapes, are counted one by one; a burst of 40 held for
// milliseconds shows as 40 in the peak.
func TestEventsCountEveryShortConnectionAndTheBurstsPeakExactly(t *testing.T) {
	needEvents(t)
	l := loopback.Listen(t, "127.0.0.1")
	url := eventsExporter(t, "--port", port(l), "--limit", "30", "--peak.window", "1h")
	before := scrape(t, url)
	from := netip.MustParseAddr("127.0.0.70")
	for range 3000 {
		pairs, err := l.Open(context.Background(), from, 1)
		require.NoError(t, err)
		require.NoError(t, portopener.CloseAll(pairs))
	}
	burst := loopback.Open(t, l, "127.0.0.71", 40)
	require.NoError(t, portopener.CloseAll(burst))
	got := scrape(t, url)
	require.Zero(t, value(t, before, "consul_opened_http_connections_total"))
	exactUnlessMissed(t, got, 3040, "consul_opened_http_connections_total")
	exactUnlessMissed(t, got, 3000, `consul_opened_http_connections_per_client_total{client="127.0.0.70"}`)
	got["closed"] = 0
	for _, by := range []string{"agent", "client", "reset"} {
		got["closed"] += value(t, got, `consul_closed_http_connections_total{by="`+by+`"}`)
	}
	exactUnlessMissed(t, got, 3040, "closed")
	exactUnlessMissed(t, got, 3040, "consul_http_connection_duration_seconds_count")
	assert.Equal(t, 0.0, value(t, got, "consul_open_http_connections_max_per_client"), "the snapshot sees none")
	assert.Equal(t, 40.0, value(t, got, `consul_open_http_connections_peak_per_client{client="127.0.0.71"}`), "the burst, exactly")
	assert.Positive(t, value(t, got, "consul_http_client_at_limit_seconds_total"), "40 of 30: at the limit while it lasted")
}

// Minutes of constant churn from several clients, with an audit every
// second: an audit finds something to correct only where the kernel says
// it skipped the program (it does, when a socket's change comes in an
// interrupt of another's on the same CPU: each is audited before the next
// read), and the counts equal the table's when the churn stops.
func TestEventsSoakUnderChurnHasNoDrift(t *testing.T) {
	needEvents(t)
	soak := 2 * time.Minute
	var ls []*portopener.Listener
	args := []string{"--events.audit-interval", "1s"}
	for range 4 {
		l := loopback.Listen(t, "127.0.0.1")
		ls = append(ls, l)
		args = append(args, "--port", port(l))
	}
	loopback.Open(t, ls[0], "127.0.0.80", 25) // held throughout
	url := eventsExporter(t, args...)
	ctx, cancel := context.WithTimeout(context.Background(), soak)
	defer cancel()
	var wg sync.WaitGroup
	for i, l := range ls { // a listener takes one opener
		wg.Go(func() {
			from := netip.AddrFrom4([4]byte{127, 0, 0, byte(81 + i)})
			for ctx.Err() == nil {
				pairs, err := l.Open(context.Background(), from, 1+i)
				if !assert.NoError(t, err) {
					return
				}
				portopener.CloseAll(pairs)
			}
		})
	}
	scrapes, drifts, missed := 0, 0, 0.0
	for ctx.Err() == nil {
		got := scrape(t, url)
		nowMissed := value(t, got, "consul_conn_exporter_events_missed_total")
		if value(t, got, "consul_conn_exporter_events_drift") != 0 {
			drifts++
			require.Greater(t, nowMissed, 0.0, "scrape %d: a drift with no event missed", scrapes)
		}
		missed = nowMissed
		scrapes++
	}
	wg.Wait()
	got := scrape(t, url)
	assert.GreaterOrEqual(t, value(t, got, "consul_conn_exporter_events_audits_total"), soak.Seconds()-2, "an audit a second")
	t.Logf("%d scrapes, %.0f connections opened, %.0f audits, %.0f events missed, %d scrapes with a drift corrected",
		scrapes, value(t, got, "consul_opened_http_connections_total"), value(t, got, "consul_conn_exporter_events_audits_total"), missed, drifts)
	res := exporter(t, t.TempDir(), append([]string{"--source", "netlink", "--once"}, args[2:]...)...)
	require.Zero(t, res.exit, res.stderr)
	assert.Equal(t, openCounts(res.metrics), openCounts(got), "the table's counts")
	assert.Equal(t, 25.0, value(t, got, "consul_open_http_connections_max_per_client"))
}

// Without the privilege to load its programs, --source events says what to
// grant in one line and exits 2: no other source stands in for it.
func TestEventsWithoutPrivilegeSayWhatToGrant(t *testing.T) {
	programs.NotShort(t, "runs the exporter")
	res := runAsNobody(t, nil, "--source", "events", "--once")
	assert.Equal(t, 2, res.exit)
	assert.Contains(t, res.stderr, "CAP_BPF and CAP_PERFMON")
	assert.Equal(t, 1, strings.Count(strings.TrimSpace(res.stderr), "\n")+1, "one line: %s", res.stderr)
	assert.Nil(t, res.metrics, "nothing written")
}

// Against a real agent with http_max_conns_per_client = 20: before each
// new connection from one client, the events' count says how many it
// holds, and the agent serves it while that is below the limit; the next
// 50 are refused, each counted once as a refusal at the limit (none below
// it), and show in the peak as the moment the kernel held 21 before the
// agent closed each.
func TestEventsAgainstARealAgent(t *testing.T) {
	needEvents(t)
	const limit = 20
	agent := startConsul(t, "http_max_conns_per_client = 20", false)
	_, consulPort, err := net.SplitHostPort(agent.httpAddr)
	require.NoError(t, err)
	args := []string{"--port", consulPort, "--limit", fmt.Sprint(limit)}
	url := eventsExporter(t, append([]string{"--refusals", "--sample.interval", "100ms", "--peak.window", "1h"}, args...)...)
	const busy = "127.0.0.111"
	for held := range limit {
		got := scrape(t, url)
		require.Equal(t, float64(held), got[`consul_open_http_connections_per_client{client="`+busy+`"}`], "before connection %d", held+1)
		status, _ := request(t, agent.httpAddr, busy)
		require.Equal(t, http.StatusOK, status, "connection %d of %d", held+1, limit)
	}
	require.True(t, refused(t, agent.httpAddr, busy), "the 21st")
	first := scrape(t, url)
	assert.Equal(t, float64(limit+1), value(t, first, `consul_open_http_connections_peak_per_client{client="`+busy+`"}`), "the refused one was open a moment")
	const refusals = 50
	for i := 1; i < refusals; i++ {
		require.True(t, refused(t, agent.httpAddr, busy), "connection %d", limit+1+i)
	}
	var got map[string]float64
	require.Eventually(t, func() bool {
		got = scrape(t, url)
		return got["consul_refused_http_connections_total"] >= refusals
	}, 10*time.Second, 50*time.Millisecond, "the refusals counted")
	assert.Equal(t, float64(refusals), value(t, got, "consul_refused_http_connections_total"), "each once, by one rule or the other")
	assert.Zero(t, value(t, got, "consul_refused_http_connections_below_limit_total"), "the limiter and the kernel agree")
	assert.Equal(t, float64(limit), value(t, got, `consul_open_http_connections_per_client{client="`+busy+`"}`))
	exactUnlessMissed(t, got, float64(limit+refusals), `consul_opened_http_connections_per_client_total{client="`+busy+`"}`)
	assert.Positive(t, value(t, got, "consul_http_client_at_limit_seconds_total"))
	res := exporter(t, t.TempDir(), append([]string{"--source", "netlink", "--once"}, args...)...)
	require.Zero(t, res.exit, res.stderr)
	assert.Equal(t, openCounts(res.metrics), openCounts(got), "the table's counts")
}

// The exporter's own reads of the limits from a real agent (--limit auto,
// every second) are never among the agent's clients: no churn, no count,
// no series of their address, while an agent's client's are all there.
func TestEventsNeverCountTheExportersOwnReadsOfTheLimits(t *testing.T) {
	needEvents(t)
	agent := startConsul(t, "http_max_conns_per_client = 20", false)
	t.Setenv("CONSUL_HTTP_ADDR", agent.httpAddr)
	url := eventsExporter(t, "--port", agent.httpPort(), "--limit", "auto", "--limit.refresh", "1s")
	require.Eventually(t, func() bool {
		return scrape(t, url)["consul_http_max_conns_per_client"] == 20
	}, 20*time.Second, 50*time.Millisecond, "the limit read from the agent")
	const client = "127.0.0.113"
	status, conn := request(t, agent.httpAddr, client)
	require.Equal(t, http.StatusOK, status)
	conn.Close()
	got := scrape(t, url)
	exactUnlessMissed(t, got, 1, "consul_opened_http_connections_total")
	exactUnlessMissed(t, got, 1, `consul_opened_http_connections_per_client_total{client="`+client+`"}`)
	host, _, err := net.SplitHostPort(agent.httpAddr)
	require.NoError(t, err)
	for key := range got {
		assert.NotContains(t, key, `client="`+host+`"`, "the exporter's own address")
	}
}

// Clients gone are dropped from the kernel's clients at the audit after a
// read (their per-client series go), their churn kept in the totals; a
// client that still holds stays.
func TestEventsDropTheClientsGoneAndKeepTheirChurnInTheTotals(t *testing.T) {
	needEvents(t)
	l := loopback.Listen(t, "127.0.0.1")
	url := eventsExporter(t, "--port", port(l), "--events.audit-interval", "1s", "--clients.top", "20")
	const gone = 10
	for i := range gone {
		portopener.CloseAll(loopback.Open(t, l, fmt.Sprintf("127.0.5.%d", i+1), 1))
	}
	loopback.Open(t, l, "127.0.6.1", 2)
	perClient := func(metrics map[string]float64) (clients []string) {
		for key := range metrics {
			if strings.HasPrefix(key, "consul_opened_http_connections_per_client_total{") {
				clients = append(clients, key)
			}
		}
		return clients
	}
	got := scrape(t, url)
	exactUnlessMissed(t, got, gone+2, "consul_opened_http_connections_total")
	require.Len(t, perClient(got), gone+1, "every client, before an audit")
	require.Eventually(t, func() bool {
		got = scrape(t, url) // each read starts an epoch: the audit after it drops them
		return len(perClient(got)) == 1
	}, 20*time.Second, 100*time.Millisecond, "the clients gone dropped")
	assert.Equal(t, []string{`consul_opened_http_connections_per_client_total{client="127.0.6.1"}`}, perClient(got))
	exactUnlessMissed(t, got, gone+2, "consul_opened_http_connections_total")
	assert.Equal(t, 2.0, value(t, got, `consul_open_http_connections_per_client{client="127.0.6.1"}`))
}

// Over HTTPS, Consul reads the TLS handshake before its 429, so the rule of
// --refusals alone (closed having read nothing) counts none there. With
// the events beside it, the limiter's own rule counts each on the port the
// agent says is its HTTPS one, against the limit read from it (confirmed
// by a read after them): ten held from one address, then every HTTPS
// request of it refused is counted, once; HTTPS requests served to another
// address, none.
func TestEventsCountEveryHTTPSRefusalOfARealAgent(t *testing.T) {
	needEvents(t)
	agent := startAgent(t, "http_max_conns_per_client = 10", agentOptions{dualStackTLS: true})
	_, httpPort, err := net.SplitHostPort(agent.httpAddr)
	require.NoError(t, err)
	_, httpsPort, err := net.SplitHostPort(agent.httpsAddr)
	require.NoError(t, err)
	t.Setenv("CONSUL_HTTP_ADDR", agent.httpAddr)
	url := eventsExporter(t, "--refusals", "--port", httpPort, "--port", httpsPort, "--limit", "auto")
	require.Eventually(t, func() bool { return scrape(t, url)["consul_http_max_conns_per_client"] == 10 }, 20*time.Second, 50*time.Millisecond)
	for range 5 {
		status, err := agent.askOverTLS(t, "127.0.0.26")
		require.NoError(t, err)
		require.Equal(t, http.StatusOK, status, "served over HTTPS")
	}
	const busy = "127.0.0.27"
	holdServed(t, agent.httpAddr, busy, 10)
	refusedOverTLS := 0
	for range 20 {
		status, err := agent.askOverTLS(t, busy)
		if err != nil || status == http.StatusTooManyRequests {
			refusedOverTLS++ // a 429, or the close before it could be read
		}
	}
	require.Equal(t, 20, refusedOverTLS, "the agent refused every one")
	var got map[string]float64
	require.Eventually(t, func() bool {
		got = scrape(t, url)
		return got["consul_refused_http_connections_total"] >= 20
	}, 10*time.Second, 50*time.Millisecond)
	assert.Equal(t, 20.0, value(t, got, "consul_refused_http_connections_total"))
	assert.Equal(t, 20.0, value(t, got, `consul_refused_http_connections_per_client_total{client="`+busy+`"}`))
	assert.NotContains(t, got, `consul_refused_http_connections_per_client_total{client="127.0.0.26"}`)
	assert.Zero(t, value(t, got, "consul_refused_http_connections_below_limit_total"))
}
