package e2e

import (
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/consul-conn-exporter/consul-conn-exporter/internal/testkit/loopback"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/testkit/portopener"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/testkit/programs"
)

// The trust model (docs/sources.md): a connection counts only where one of
// the agent's listeners accepted it, whatever the source, and whatever a
// local user does with sockets of its own. Each test is a local user's
// attack (the attacker of attacker_test.go, run as nobody), made against
// every source it concerns.

// tableSources are the exporter's sources that read the table, each as the
// words that run the exporter with it: ss, net-tools' netstat, busybox's
// netstat (found as netstat in PATH) and the built-in reader.
func tableSources(t *testing.T) map[string][]string {
	t.Helper()
	programs.Need(t, "ss", "apt-get install iproute2")
	programs.Need(t, "netstat", "apt-get install net-tools")
	busybox := programs.Need(t, "busybox", "apt-get install busybox")
	bin := t.TempDir()
	require.NoError(t, os.Symlink(busybox, filepath.Join(bin, "netstat")))
	return map[string][]string{
		"ss":      {binary, "--source", "ss"},
		"netstat": {binary, "--source", "netstat"},
		"busybox": {"env", "PATH=" + bin, binary, "--source", "netstat"},
		"netlink": {binary, "--source", "netlink"},
	}
}

// withEvents are tableSources and the kernel's events, run --once.
func withEvents(t *testing.T) map[string][]string {
	t.Helper()
	sources := tableSources(t)
	needEvents(t)
	sources["events"] = []string{binary, "--source", "events"}
	return sources
}

// A local user binds sockets to the agent's port at loopback addresses the
// agent does not listen on (IPv4, v4-mapped, IPv6) and connects them to
// listeners of its own: no source counts them, check judges the agent's
// clients alone, and closing them unread counts no refusal, with the
// built-in reader or the events.
func TestSocketsAnotherUserBindsToTheAgentsPortCountNowhere(t *testing.T) {
	agent := startConsul(t, "http_max_conns_per_client = 20", false)
	p := agent.httpPort()
	const busy = "127.0.0.50"
	holdServed(t, agent.httpAddr, busy, 5)
	forger := attacker(t, asNobody(t), "forge", p, "30", "127.0.9.1", "unread")
	attacker(t, asNobody(t), "forge", p, "1", "::ffff:127.0.9.200")
	attacker(t, asNobody(t), "forge", p, "1", "::1")
	refusals := map[string]string{}
	for _, source := range []string{"netlink", "events"} {
		if source == "events" {
			needEvents(t)
		}
		refusals[source], _ = startRefusals(t, "--source", source, "--port", p, "--limit", "20")
	}

	for name, argv := range withEvents(t) {
		t.Run(name, func(t *testing.T) {
			res := runExporter(t, t.TempDir(), argv, "--once", "--port", p, "--limit", "20")
			require.Equal(t, 0, res.exit, res.stderr)
			assert.Equal(t, 5.0, value(t, res.metrics, `consul_open_http_connections{port="`+p+`"}`))
			assert.Equal(t, 5.0, value(t, res.metrics, "consul_open_http_connections_max_per_client"))
			assert.Equal(t, 5.0, value(t, res.metrics, `consul_open_http_connections_per_client{client="`+busy+`"}`))
			assert.NotContains(t, res.metrics, `consul_open_http_connections_per_client{client="127.0.0.1"}`)
		})
	}
	res := checkCommand(t, []string{"CONSUL_HTTP_ADDR=" + agent.httpAddr}, "--port", p, "--limit", "auto")
	assert.Equal(t, 0, res.exit, res.stdout)
	assertVerdict(t, "OK: "+busy+" holds 5 of the 20 HTTP connections http_max_conns_per_client allows (25%)", lastLine(res.stdout))

	require.NoError(t, forger.cmd.Process.Signal(syscall.SIGUSR1)) // closed, a byte unread: reset
	forger.waitFor(t, "closed", 1)
	holdServed(t, agent.httpAddr, "127.0.0.51", 20)
	require.True(t, refused(t, agent.httpAddr, "127.0.0.51"), "the 21st")
	for source, url := range refusals {
		var got map[string]float64
		require.Eventually(t, func() bool {
			got = scrape(t, url)
			return got["consul_refused_http_connections_total"] >= 1
		}, 10*time.Second, 20*time.Millisecond, "%s: the agent's refusal counted", source)
		assert.Equal(t, 1.0, value(t, got, "consul_refused_http_connections_total"), "%s: the agent's refusal alone", source)
	}
}

// A local user's socket bound to the agent's address before the agent
// listened there (the agent's listener binds over it: SO_REUSEADDR) is its
// planter's: the sources that give each socket's user leave it out;
// busybox's netstat, which gives none, cannot, and that is said.
func TestASocketPlantedBeforeTheAgentListenedIsNotTheAgents(t *testing.T) {
	p := loopback.Port()
	attacker(t, asNobody(t), "plant", fmt.Sprint(p), "3", "127.0.0.77")
	agent, err := portopener.Listen(netip.AddrPortFrom(netip.MustParseAddr("127.0.0.77"), p))
	require.NoError(t, err)
	t.Cleanup(func() { agent.Close() })
	loopback.Open(t, agent, "127.0.0.78", 2)
	for name, argv := range withEvents(t) {
		t.Run(name, func(t *testing.T) {
			res := runExporter(t, t.TempDir(), argv, "--once", "--port", fmt.Sprint(p), "--consul.server", fmt.Sprintf("127.0.0.77:%d", p))
			require.Equal(t, 0, res.exit, res.stderr)
			want := 2.0
			if name == "busybox" {
				want = 5
				assert.Contains(t, res.stderr, "the socket table gives no connection's user (busybox's netstat")
			} else {
				assert.NotContains(t, res.stderr, "gives no connection's user")
			}
			assert.Equal(t, want, value(t, res.metrics, fmt.Sprintf(`consul_open_http_connections{port="%d"}`, p)))
		})
	}
}

// namespaces numbers the network namespaces netns makes.
var namespaces atomic.Int64

// netns is a fresh network namespace with its loopback up, as the words
// that run a program in it: where a wildcard listener reaches nothing but
// loopback.
func netns(t *testing.T) []string {
	t.Helper()
	programs.NeedRoot(t, "make a network namespace")
	ip := programs.Need(t, "ip", "apt-get install iproute2")
	name := fmt.Sprintf("ccx-e2e-%d-%d", os.Getpid(), namespaces.Add(1))
	out, err := exec.Command(ip, "netns", "add", name).CombinedOutput()
	require.NoError(t, err, "%s", out)
	t.Cleanup(func() { exec.Command(ip, "netns", "delete", name).Run() })
	in := []string{ip, "netns", "exec", name}
	out, err = exec.Command(in[0], append(in[1:], ip, "link", "set", "lo", "up")...).CombinedOutput()
	require.NoError(t, err, "%s", out)
	return in
}

// The agent (root) listens on 0.0.0.0; another user listens on [::] with
// IPV6_V6ONLY after it (the kernel lists the newest first). The agent's
// user is the owner of the listener its address reaches, of its family:
// every source counts the agent's clients, none of the other user's.
func TestAnotherUsersWildcardOfTheOtherFamilyDoesNotHideTheAgent(t *testing.T) {
	ns := netns(t)
	p := fmt.Sprint(loopback.Port())
	attacker(t, ns, "listen", "0.0.0.0:"+p, "7", "127.0.0.1")
	attacker(t, append(ns, asNobody(t)...), "listen", "[::]:"+p, "3", "::1", "v6only")
	for name, argv := range withEvents(t) {
		t.Run(name, func(t *testing.T) {
			res := runExporter(t, t.TempDir(), append(ns, argv...), "--once", "--port", p)
			require.Equal(t, 0, res.exit, res.stderr)
			assert.Equal(t, 7.0, value(t, res.metrics, `consul_open_http_connections{port="`+p+`"}`))
			assert.NotContains(t, res.metrics, `consul_open_http_connections_per_client{client="::1"}`)
			assert.Contains(t, res.stderr, "several users listen on port "+p+" (the agent's: uid 0)")
		})
	}
	c := checkIn(t, ns, nil, "--port", p, "--limit", "200")
	require.Equal(t, 0, c.exit, "%s%s", c.stdout, c.stderr)
	assert.Equal(t, "OK: 127.0.0.1 holds 7 of the 200 HTTP connections http_max_conns_per_client allows (3%), 7 silent (nothing sent yet)", lastLine(c.stdout))
}

// An agent on a dual-stack [::] (Consul's Go listener on client_addr
// 0.0.0.0 or ::) takes IPv4 clients on IPv6 sockets, v4-mapped (net-tools'
// netstat prints them bare, on tcp6 rows): every source counts them as the
// listener's, IPv4 and IPv6 clients alike.
func TestADualStackAgentsIPv4ClientsCountOnEverySource(t *testing.T) {
	ns := netns(t)
	p := fmt.Sprint(loopback.Port())
	attacker(t, ns, "listen", "[::]:"+p, "5", "127.0.0.1", "dualstack")
	for name, argv := range withEvents(t) {
		t.Run(name, func(t *testing.T) {
			res := runExporter(t, t.TempDir(), append(ns, argv...), "--once", "--port", p)
			require.Equal(t, 0, res.exit, res.stderr)
			assert.Equal(t, 5.0, value(t, res.metrics, `consul_open_http_connections{port="`+p+`"}`))
			assert.Equal(t, 5.0, value(t, res.metrics, `consul_open_http_connections_per_client{client="127.0.0.1"}`))
		})
	}
}

// The agent's address names a host that does not resolve: said, never
// taken for 127.0.0.1 (where another user listens: the collection fails,
// rather than count its connections or a 0), and looked up again at each collection; once it
// resolves, the agent's listener there decides.
// The names are this test's own /etc/hosts, in a mount namespace of the
// exporter's.
func TestAnAgentsNameThatDoesNotResolveIsSaidAndLookedUpAgain(t *testing.T) {
	programs.NeedRoot(t, "make a private mount namespace")
	unshare := programs.Need(t, "unshare", "apt-get install util-linux")
	p := loopback.Port()
	agent, err := portopener.Listen(netip.AddrPortFrom(netip.MustParseAddr("127.0.0.2"), p))
	require.NoError(t, err)
	t.Cleanup(func() { agent.Close() })
	loopback.Open(t, agent, "127.0.0.91", 9)
	attacker(t, asNobody(t), "listen", fmt.Sprintf("127.0.0.1:%d", p), "2", "127.0.0.92")
	// This test's own names: /etc/hosts, and no name server (a look-up
	// of a name not there is refused at once, on any machine).
	etc := t.TempDir()
	hosts, resolv := filepath.Join(etc, "hosts"), filepath.Join(etc, "resolv.conf")
	require.NoError(t, os.WriteFile(hosts, []byte("127.0.0.1 localhost\n"), 0o644))
	require.NoError(t, os.WriteFile(resolv, []byte("nameserver 127.0.0.1\n"), 0o644))
	addr := freeAddr(t)
	exporter := start(t, unshare, "--mount", "--", "sh", "-c", `mount --bind "$0" /etc/hosts && mount --bind "$1" /etc/resolv.conf && shift && exec "$@"`, hosts, resolv,
		"env", "GODEBUG=netdns=go", fmt.Sprintf("CONSUL_HTTP_ADDR=agent.ccx.test:%d", p), binary, "--web.listen-address="+addr, "--port", fmt.Sprint(p), "--sample.interval=0")
	exporter.waitFor(t, "Listening on", 1)
	url := "http://" + addr + "/metrics"
	got := scrape(t, url)
	said := func(text string) func() bool {
		return func() bool {
			return slices.ContainsFunc(exporter.output(), func(line string) bool { return strings.Contains(line, text) })
		}
	}
	assert.Eventually(t, said(fmt.Sprintf("the agent's address agent.ccx.test:%d does not resolve", p)), 5*time.Second, 10*time.Millisecond, "said")
	assert.Eventually(t, said("the agent's address does not resolve, and never did"), 5*time.Second, 10*time.Millisecond, "and what it does to the counts")
	assert.NotContains(t, got, fmt.Sprintf(`consul_open_http_connections{port="%d"}`, p), "no listener is the agent's: not 127.0.0.1's count, nor a 0")
	assert.Zero(t, value(t, got, "consul_conn_exporter_collect_success"), "a failed collection")

	require.NoError(t, os.WriteFile(hosts, []byte("127.0.0.1 localhost\n127.0.0.2 agent.ccx.test\n"), 0o644))
	require.Eventually(t, func() bool {
		return scrape(t, url)[fmt.Sprintf(`consul_open_http_connections{port="%d"}`, p)] == 9
	}, 20*time.Second, 100*time.Millisecond, "the agent's alone, once its name resolves")
	assert.Eventually(t, said("the agent's address resolves again"), 5*time.Second, 10*time.Millisecond)
}

// setHTTPLimit edits the agent's http_max_conns_per_client from one number
// to another, and reloads it.
func (a consulAgent) setHTTPLimit(t *testing.T, from, to int) {
	t.Helper()
	text, err := os.ReadFile(a.config)
	require.NoError(t, err)
	edited := strings.Replace(string(text), fmt.Sprintf("http_max_conns_per_client = %d", from), fmt.Sprintf("http_max_conns_per_client = %d", to), 1)
	require.NotEqual(t, string(text), edited)
	require.NoError(t, os.WriteFile(a.config, []byte(edited), 0o600))
	require.NoError(t, a.api(t).Agent().Reload())
}

// Requests the agent answered are no refusals, whatever limit the exporter
// holds: an explicit --limit below the agent's (the agent's own evidence,
// a request read, says so on plain HTTP), or, over HTTPS, a limit the
// agent raised by a reload before the exporter read it again (the
// limiter's rule counts only against a limit a read after the refusal
// confirms).
func TestRequestsTheAgentAnsweredAreNoRefusals(t *testing.T) {
	needEvents(t)
	agent := startAgent(t, "http_max_conns_per_client = 20", agentOptions{dualStackTLS: true})
	p := agent.httpPort()
	_, https, err := net.SplitHostPort(agent.httpsAddr)
	require.NoError(t, err)
	const busy = "127.0.0.93"
	holdServed(t, agent.httpAddr, busy, 15)

	t.Run("an explicit limit below the agent's", func(t *testing.T) {
		url, _ := startRefusals(t, "--source", "events", "--port", p, "--limit", "10")
		for range 20 {
			status, conn := request(t, agent.httpAddr, busy)
			require.Equal(t, http.StatusOK, status)
			conn.Close()
		}
		got := scrape(t, url)
		assert.Zero(t, value(t, got, "consul_refused_http_connections_total"))
		assert.Zero(t, value(t, got, "consul_refused_http_connections_untracked_total"))
	})

	t.Run("over HTTPS, a limit the agent raised", func(t *testing.T) {
		t.Setenv("CONSUL_HTTP_ADDR", agent.httpAddr)
		url, _ := startRefusals(t, "--source", "events", "--port", p, "--port", https, "--limit", "auto")
		require.Eventually(t, func() bool { return scrape(t, url)["consul_http_max_conns_per_client"] == 20 }, 20*time.Second, 50*time.Millisecond)
		holdServed(t, agent.httpAddr, busy, 5) // 20: at the limit the exporter read
		agent.setHTTPLimit(t, 20, 40)          // read again in 5 minutes, but for what waits on it
		for range 5 {
			status, err := agent.askOverTLS(t, busy)
			require.NoError(t, err)
			require.Equal(t, http.StatusOK, status, "served: the agent's limit is 40 now")
		}
		var got map[string]float64
		require.Eventually(t, func() bool {
			got = scrape(t, url)
			return got["consul_refused_http_connections_untracked_total"] >= 5
		}, 20*time.Second, 50*time.Millisecond, "judged against 20 by the limiter's rule, not confirmed by the read of 40")
		assert.Zero(t, value(t, got, "consul_refused_http_connections_total"))
		assert.Equal(t, 40.0, value(t, got, "consul_http_max_conns_per_client"))
	})

	t.Run("over HTTPS, from a client at its limit that closes one as it asks again", func(t *testing.T) {
		// The agent lets go of a connection whose client closed its end
		// as soon as it reads the end: the kernel still has the socket,
		// half-closed, when the next request comes.
		t.Setenv("CONSUL_HTTP_ADDR", agent.httpAddr)
		url, _ := startRefusals(t, "--source", "events", "--port", p, "--port", https, "--limit", "auto")
		require.Eventually(t, func() bool { return scrape(t, url)["consul_http_max_conns_per_client"] == 40 }, 20*time.Second, 50*time.Millisecond)
		const racer = "127.0.0.99"
		held := holdServed(t, agent.httpAddr, racer, 40)
		answered, refused := 0, 0
		for range 16 {
			require.NoError(t, held[0].(*net.TCPConn).CloseWrite()) // its FIN: the agent's end half-closed
			held = held[1:]
			status, err := agent.askOverTLS(t, racer)
			switch {
			case err == nil && status == http.StatusOK:
				answered++
			default:
				refused++
			}
			require.Eventually(t, func() bool { // at the limit again, once the agent let go of the two closed
				status, conn := request(t, agent.httpAddr, racer)
				if status != http.StatusOK {
					refused++ // a refusal too, by the agent's own evidence
					conn.Close()
					return false
				}
				held = append(held, conn)
				return true
			}, 5*time.Second, 10*time.Millisecond)
		}
		t.Logf("%d answered, %d refused", answered, refused)
		require.Positive(t, answered, "some answered, the agent having let go of the half-closed one first")
		// For 3 s: a read of the agent after them confirms what is counted.
		scrapedNever(t, url, 3*time.Second, func(m map[string]float64) bool {
			return m["consul_refused_http_connections_total"] > float64(refused)
		}, "answered requests counted as refusals")
	})
}

// The time some client holds the limit counts connections open before the
// exporter started, judged against the first limit it reads (with the
// kernel's events, exact; with the built-in reader, sampled), and stops
// once a reload raised the limit past them.
func TestTheTimeAtTheLimitCountsFromTheStartAndStopsAtARaisedLimit(t *testing.T) {
	needEvents(t)
	agent := startConsul(t, "http_max_conns_per_client = 20", false)
	p := agent.httpPort()
	holdServed(t, agent.httpAddr, "127.0.0.94", 20) // before the start: at the limit
	t.Setenv("CONSUL_HTTP_ADDR", agent.httpAddr)
	urls := map[string]string{}
	for _, source := range []string{"events", "netlink"} {
		addr := freeAddr(t)
		startServer(t, binary, "--web.listen-address="+addr, "--source", source, "--port", p, "--limit", "auto", "--limit.refresh", "1s", "--sample.interval", "100ms")
		urls[source] = "http://" + addr + "/metrics"
	}
	const key = "consul_http_client_at_limit_seconds_total"
	for source, url := range urls {
		first := scrape(t, url)[key]
		since := time.Now()
		require.Eventually(t, func() bool { return scrape(t, url)[key] >= first+1 }, 20*time.Second, 50*time.Millisecond,
			"%s: a second more at the limit, with no change of the count", source)
		assert.InDelta(t, time.Since(since).Seconds(), scrape(t, url)[key]-first, 1, source)
	}
	agent.setHTTPLimit(t, 20, 30)
	for source, url := range urls {
		require.Eventually(t, func() bool { return scrape(t, url)["consul_http_max_conns_per_client"] == 30 }, 20*time.Second, 50*time.Millisecond)
		var stopped float64
		require.Eventually(t, func() bool { // a sample under way judged against 20 may end meanwhile
			stopped = scrape(t, url)[key]
			return scrape(t, url)[key] == stopped
		}, 5*time.Second, 200*time.Millisecond)
		scrapedNever(t, url, time.Second, func(m map[string]float64) bool { return m[key] != stopped },
			"%s: below a limit raised past the client: stopped", source)
	}
}

// The exporter's own reads of the limits, from an agent on 127.0.0.2 that
// the kernel connects to from 127.0.0.1, are never among the agent's
// clients: told by their socket, whatever source address the kernel picks.
func TestEventsNeverCountTheExportersOwnReadsFromAnyAddress(t *testing.T) {
	needEvents(t)
	_, port, err := net.SplitHostPort(freeAddr(t))
	require.NoError(t, err)
	agent := startAgent(t, "http_max_conns_per_client = 20", agentOptions{httpAddr: "127.0.0.2:" + port},
		func(consulAgent) string { return `addresses { http = "127.0.0.2" }` })
	t.Setenv("CONSUL_HTTP_ADDR", agent.httpAddr)
	addr := freeAddr(t)
	startServer(t, binary, "--web.listen-address="+addr, "--source", "events", "--port", port, "--limit", "auto", "--limit.refresh", "1s")
	url := "http://" + addr + "/metrics"
	require.Eventually(t, func() bool { return scrape(t, url)["consul_http_max_conns_per_client"] == 20 }, 20*time.Second, 50*time.Millisecond)
	scrapedNever(t, url, 3*time.Second, func(m map[string]float64) bool { return m["consul_opened_http_connections_total"] > 0 },
		"three reads of the limits, a second apart, none counted")
	status, conn := request(t, agent.httpAddr, "127.0.0.95")
	require.Equal(t, http.StatusOK, status)
	conn.Close()
	got := scrape(t, url)
	exactUnlessMissed(t, got, 1, "consul_opened_http_connections_total")
	for key := range got {
		assert.NotContains(t, key, `client="127.0.0.1"`, "the source address of the exporter's reads")
	}
}

// Connections that opened and closed from more addresses than the maps
// hold leave no key behind: a client that then holds connections is
// counted at once, with no audit to make room; and connections a full map
// cannot count are counted as lost once each, however many audits find
// them.
func TestEventsMapsFullOfClosedOrHeldConnectionsStayHonest(t *testing.T) {
	needEvents(t)
	l := loopback.Listen(t, "127.0.0.1")
	addr := freeAddr(t)
	startServer(t, binary, "--web.listen-address="+addr, "--source", "events", "--port", port(l), "--events.keys", "1024", "--limit", "10")
	url := "http://" + addr + "/metrics"
	const clients = 1100 // each from an address of its own, past 1,024
	for i := range clients {
		portopener.CloseAll(loopback.Open(t, l, netip.AddrFrom4([4]byte{127, 5, byte(i >> 8), byte(i)}).String(), 1))
	}
	loopback.Open(t, l, "127.0.0.1", 10)
	got := scrape(t, url)
	assert.Equal(t, 10.0, value(t, got, `consul_open_http_connections{port="`+port(l)+`"}`), "counted at once")
	assert.Zero(t, value(t, got, "consul_conn_exporter_events_http_lost_total"))
	// Its client, whom the clients' map was too full to follow, is
	// followed from the read that found it full (its peak, its time at
	// the limit), not from the second audit after.
	require.Eventually(t, func() bool {
		got = scrape(t, url)
		return got[`consul_open_http_connections_peak_per_client{client="127.0.0.1"}`] == 10 && got["consul_http_client_at_limit_seconds_total"] > 0
	}, 10*time.Second, 100*time.Millisecond, "the client at its limit followed")
	assert.Equal(t, float64(clients-1024+10), value(t, got, "consul_conn_exporter_events_http_unfollowed_total"), "each connection not followed, once: the churn's past the map, and its ten")

	held := loopback.Listen(t, "127.0.0.1")
	for i := range clients {
		loopback.Open(t, held, netip.AddrFrom4([4]byte{127, 6, byte(i >> 8), byte(i)}).String(), 1)
	}
	addr = freeAddr(t)
	audits := startServer(t, binary, "--web.listen-address="+addr, "--source", "events", "--port", port(held),
		"--events.keys", "1024", "--events.audit-interval", "1s")
	url = "http://" + addr + "/metrics"
	for n := 1; n <= 3; n++ {
		require.Eventually(t, func() bool { return scrape(t, url)["consul_conn_exporter_events_audits_total"] >= float64(n) }, 20*time.Second, 50*time.Millisecond)
		got = scrape(t, url)
		assert.Equal(t, 1024.0, value(t, got, `consul_open_http_connections{port="`+port(held)+`"}`), "audit %d: kept", n)
		assert.Equal(t, float64(clients-1024), value(t, got, "consul_conn_exporter_events_http_lost_total"), "audit %d: the ones past the map, once each", n)
	}
	audits.waitFor(t, "the kernel's connections map is full (--events.keys): 76 open connections are not counted", 1)
	assert.Equal(t, 1, strings.Count(strings.Join(audits.output(), "\n"), "the kernel's events drifted from the socket table"), "said once, not at every audit")
}

// Many watched ports (past what the kernel filters by) are read all the
// same, by every source: a listener on the last of them counts. 3,277 made
// the kernel's filter overflow its 64 KiB. In a network namespace of its
// own: with no address given, 127.0.0.1 on each of the thousands of ports
// is where the agent is looked for, and another user's listener on any of
// them on this host (another test's) makes none the agent's.
func TestThousandsOfWatchedPortsAreCounted(t *testing.T) {
	ns := netns(t)
	p := loopback.Port()
	attacker(t, ns, "listen", fmt.Sprintf("127.0.0.1:%d", p), "4", "127.0.0.96")
	for _, n := range []int{3277, 5000} {
		args := []string{"--once"}
		for q := int(p) - n + 1; q <= int(p); q++ {
			args = append(args, "--port", fmt.Sprint(q))
		}
		for name, argv := range tableSources(t) {
			t.Run(fmt.Sprintf("%d %s", n, name), func(t *testing.T) {
				res := runExporter(t, t.TempDir(), append(ns, argv...), args...)
				require.Equal(t, 0, res.exit, res.stderr)
				assert.Equal(t, 4.0, value(t, res.metrics, fmt.Sprintf(`consul_open_http_connections{port="%d"}`, p)), res.stderr)
				assert.NotContains(t, res.stderr, "level=WARN source=changes.go:35 msg=\"cannot tell who listens")
			})
		}
	}
}

// Where no cgroup2 file system is mounted (a cgroup v1 host: older RHEL,
// Amazon Linux 2), ss -e would read the mount table again, and warn, for
// every socket: ss runs without it there, counts the same, and says the
// table gives no user.
func TestWithoutACgroup2MountSSRunsWithoutItsUsers(t *testing.T) {
	programs.Need(t, "ss", "apt-get install iproute2")
	l := loopback.Listen(t, "127.0.0.1")
	loopback.Open(t, l, "127.0.0.98", 30)
	const noCgroup2 = `awk '$3 == "cgroup2" { print $2 }' /proc/self/mounts | sort -r | while read -r m; do umount -l "$m"; done; ! grep -q ' cgroup2 ' /proc/self/mounts`
	res := inMountNamespace(t, noCgroup2, t.TempDir(), "--once", "--source", "ss", "--port", port(l))
	require.Equal(t, 0, res.exit, res.stderr)
	assert.Equal(t, 30.0, value(t, res.metrics, `consul_open_http_connections{port="`+port(l)+`"}`))
	assert.Contains(t, res.stderr, `logged_source="ss -Htani state`)
	assert.Contains(t, res.stderr, "the socket table gives no connection's user")
	assert.NotContains(t, res.stderr, "Failed to find cgroup2", "no warning per socket")

	res = exporter(t, t.TempDir(), "--once", "--source", "ss", "--port", port(l))
	require.Equal(t, 0, res.exit, res.stderr)
	assert.Contains(t, res.stderr, `logged_source="ss -Htanei state`, "with a cgroup2 mount, as here")
}

// The agent is down (or elsewhere) where its given address says it is,
// and another user listens on its port at another address: none of that
// user's connections count, on any source, and check is UNKNOWN saying
// why; where the address is not given, a user listening on Consul's
// default port while the agent listens on another decides nothing.
func TestAnAgentNotWhereItsAddressSaysIsNeverAnotherUser(t *testing.T) {
	ns := netns(t)
	p := fmt.Sprint(loopback.Port())
	attacker(t, append(ns, asNobody(t)...), "listen", "127.0.0.2:"+p, "25", "127.0.0.1")
	for name, argv := range withEvents(t) {
		t.Run(name, func(t *testing.T) {
			res := runExporter(t, t.TempDir(), append(ns, append([]string{"env", "CONSUL_HTTP_ADDR=127.0.0.1:" + p}, argv...)...), "--once", "--port", p)
			require.Equal(t, 0, res.exit, res.stderr)
			assert.Zero(t, value(t, res.metrics, `consul_open_http_connections{port="`+p+`"}`))
			assert.Contains(t, res.stderr, "nothing listens at the agent's address (--consul.server or CONSUL_HTTP_ADDR) on port "+p)
		})
	}
	c := checkIn(t, ns, []string{"CONSUL_HTTP_ADDR=127.0.0.1:" + p}, "--port", p, "--limit", "20")
	assert.Equal(t, 3, c.exit, "%s", c.stdout)
	assert.Contains(t, lastLine(c.stdout), "UNKNOWN: nothing listens at the agent's address")

	q := fmt.Sprint(loopback.Port())
	attacker(t, ns, "listen", "127.0.0.1:"+q, "5", "127.0.0.3")                           // the agent, on a port of its own
	attacker(t, append(ns, asNobody(t)...), "listen", "127.0.0.1:8500", "0", "127.0.0.1") // Consul's default port
	res := runExporter(t, t.TempDir(), append(ns, binary), "--once", "--port", q)
	require.Equal(t, 0, res.exit, res.stderr)
	assert.Equal(t, 5.0, value(t, res.metrics, `consul_open_http_connections{port="`+q+`"}`))
}

// With no address given and two HTTP ports watched (8500 and 8501, as the
// Kubernetes values watch them), another user listening on the one the
// agent leaves free (HTTPS, off by default) is not the agent and blinds
// nothing: the agent's connections count, the other's not, and that is
// said (each port having its say made every count 0, on every source).
// An agent that serves only HTTPS, with nothing on the plain port, is
// found at its port.
func TestAnotherUserOnAWatchedPortTheAgentLeavesFreeIsNotTheAgent(t *testing.T) {
	ns := netns(t)
	plain, tls := fmt.Sprint(loopback.Port()), fmt.Sprint(loopback.Port())
	attacker(t, ns, "listen", "127.0.0.1:"+plain, "5", "127.0.0.3") // the agent
	attacker(t, append(ns, asNobody(t)...), "listen", "127.0.0.1:"+tls, "20", "127.0.0.1")
	for name, argv := range withEvents(t) {
		t.Run(name, func(t *testing.T) {
			res := runExporter(t, t.TempDir(), append(ns, argv...), "--once", "--port", plain, "--port", tls)
			require.Equal(t, 0, res.exit, res.stderr)
			assert.Equal(t, 5.0, value(t, res.metrics, `consul_open_http_connections{port="`+plain+`"}`), "the agent's")
			assert.Zero(t, value(t, res.metrics, `consul_open_http_connections{port="`+tls+`"}`), "not the other user's")
			assert.Contains(t, res.stderr, "does not listen on port "+tls+", another does: none of its connections count")
		})
	}
	c := checkIn(t, ns, nil, "--port", plain, "--port", tls, "--limit", "20")
	assert.Equal(t, 0, c.exit, "%s", c.stdout)
	assert.Contains(t, lastLine(c.stdout), "OK")

	httpsOnly := netns(t)
	attacker(t, httpsOnly, "listen", "127.0.0.1:"+tls, "7", "127.0.0.3")
	res := runExporter(t, t.TempDir(), append(httpsOnly, binary), "--once", "--port", plain, "--port", tls)
	require.Equal(t, 0, res.exit, res.stderr)
	assert.Equal(t, 7.0, value(t, res.metrics, `consul_open_http_connections{port="`+tls+`"}`))
	assert.NotContains(t, res.stderr, "guessed")
}

// With no address given, an agent listening elsewhere than 127.0.0.1 (its
// client_addr another address) cannot be told from another user's
// listener: alone, or with another user listening on a watched port too,
// at another address on the agent's port or at 127.0.0.1 on a port the
// agent leaves free, no listener is taken for the agent's. The collection
// fails, on every source, and check is UNKNOWN, never counting the
// other's (its 50 were counted, and check was CRITICAL, or it was taken
// for the agent; alone, another user's listener with the agent down was
// taken for the agent's). Pinned by --consul.user, the agent's count.
func TestAnAgentAwayFromTheDefaultAddressBesideAnotherUserFailsTheCollection(t *testing.T) {
	first, second := fmt.Sprint(loopback.Port()), fmt.Sprint(loopback.Port())
	alone := netns(t)
	attacker(t, alone, "listen", "127.0.0.2:"+first, "3", "127.0.0.4")
	res := runExporter(t, t.TempDir(), append(alone, binary), "--once", "--port", first, "--port", second)
	assert.Equal(t, 1, res.exit, res.stderr)
	assert.Contains(t, res.stderr, "127.0.0.1 reaches no listener on the watched HTTP ports while others listen on the watched ports (127.0.0.2:"+first+": uid 0)")
	res = runExporter(t, t.TempDir(), append(alone, binary), "--once", "--port", first, "--port", second, "--consul.user", "0")
	require.Equal(t, 0, res.exit, res.stderr)
	assert.Equal(t, 3.0, value(t, res.metrics, `consul_open_http_connections{port="`+first+`"}`))

	for name, squat := range map[string]string{"beside it": "127.0.0.3:" + first, "on the port it leaves free": "127.0.0.1:" + second} {
		t.Run(name, func(t *testing.T) {
			ns := netns(t)
			attacker(t, ns, "listen", "127.0.0.2:"+first, "3", "127.0.0.4")
			attacker(t, append(ns, asNobody(t)...), "listen", squat, "50", "127.0.0.66")
			for source, argv := range withEvents(t) {
				t.Run(source, func(t *testing.T) {
					res := runExporter(t, t.TempDir(), append(ns, argv...), "--once", "--port", first, "--port", second, "--limit", "20")
					assert.Equal(t, 1, res.exit, res.stderr)
					assert.Zero(t, value(t, res.metrics, "consul_conn_exporter_collect_success"))
					assert.NotContains(t, res.metrics, `consul_open_http_connections{port="`+first+`"}`)
					assert.NotContains(t, res.metrics, "consul_open_http_connections_max_per_client")
					assert.Contains(t, res.stderr, "127.0.0.1 reaches no listener on the watched HTTP ports while others listen")
				})
			}
			c := checkIn(t, ns, nil, "--port", first, "--port", second, "--limit", "20")
			assert.True(t, strings.HasPrefix(lastLine(c.stdout), "UNKNOWN: "), "%s", c.stdout)
		})
	}
}

// A name for the agent with two addresses (localhost: 127.0.0.1 and ::1)
// where another user serves a fake agent at the one the agent does not
// listen on: no listener is told for the agent's, so the collection fails
// (no count, not even 0) and no limit is read from either (the fake one
// said its limit was 1000).
func TestANameWhoseAddressesReachListenersOfSeveralUsersReadsNoLimit(t *testing.T) {
	programs.NeedRoot(t, "make a private mount namespace")
	unshare := programs.Need(t, "unshare", "apt-get install util-linux")
	ns := netns(t)
	p := fmt.Sprint(loopback.Port())
	attacker(t, ns, "listen", "127.0.0.1:"+p, "5", "127.0.0.4") // the agent
	attacker(t, append(ns, asNobody(t)...), "agent", "[::1]:"+p, "1000")
	hosts := filepath.Join(t.TempDir(), "hosts")
	require.NoError(t, os.WriteFile(hosts, []byte("::1 localhost\n127.0.0.1 localhost\n"), 0o644))
	inNs := append(ns, unshare, "--mount", "--", "sh", "-c", `mount --bind "$0" /etc/hosts && exec "$@"`, hosts,
		"env", "GODEBUG=netdns=go", "CONSUL_HTTP_ADDR=localhost:"+p)
	res := runExporter(t, t.TempDir(), append(inNs, binary), "--once", "--port", p, "--limit", "auto")
	assert.Equal(t, 1, res.exit, "the limit not read: %s", res.stderr)
	assert.NotContains(t, res.metrics, "consul_http_max_conns_per_client", "no limit from the fake agent")
	assert.Zero(t, value(t, res.metrics, "consul_conn_exporter_limits_read_success"))
	assert.NotContains(t, res.metrics, `consul_open_http_connections{port="`+p+`"}`, "no count, not even 0")
	assert.Zero(t, value(t, res.metrics, "consul_conn_exporter_collect_success"), "a failed collection")
	assert.Contains(t, res.stderr, "the agent's address reaches listeners of several users")
}

// An MPTCP client's connection to an agent (Consul built with Go 1.24 or
// later listens MPTCP) may add subflows from other addresses of its host
// (an endpoint the host's administrator configured): the agent's limiter
// counts the connection once, by its first address, and so do the events.
// (The table's sources cannot tell a subflow added: its MPTCP state is
// given only to a reader holding CAP_NET_ADMIN; they count each.)
func TestEventsCountAnMPTCPConnectionOnceWhateverItsSubflows(t *testing.T) {
	needEvents(t)
	ns := netns(t)
	out, err := exec.Command(ns[0], append(ns[1:], "ip", "mptcp", "endpoint", "add", "127.0.0.41", "dev", "lo", "subflow")...).CombinedOutput()
	require.NoError(t, err, "%s", out)
	p := fmt.Sprint(loopback.Port())
	attacker(t, ns, "listen", "127.0.0.1:"+p, "3", "127.0.0.40", "mptcp")
	require.Eventually(t, func() bool {
		out, err := exec.Command(ns[0], append(ns[1:], "ss", "-Htn", "state", "established", "( sport = :"+p+" )")...).Output()
		require.NoError(t, err)
		return strings.Count(string(out), "\n") == 6
	}, 10*time.Second, 20*time.Millisecond, "a subflow added to each connection")
	res := runExporter(t, t.TempDir(), append(ns, binary, "--source", "events"), "--once", "--port", p)
	require.Equal(t, 0, res.exit, res.stderr)
	assert.Equal(t, 3.0, value(t, res.metrics, `consul_open_http_connections{port="`+p+`"}`))
	assert.Equal(t, 3.0, value(t, res.metrics, `consul_open_http_connections_per_client{client="127.0.0.40"}`))
	assert.NotContains(t, res.metrics, `consul_open_http_connections_per_client{client="127.0.0.41"}`)
}
