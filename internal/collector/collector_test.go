package collector_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/consul-conn-exporter/consul-conn-exporter/internal/collector"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/metrics"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/refusals"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/common/expfmt"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/consul-conn-exporter/consul-conn-exporter/internal/events"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/limits"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/listeners"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/table/runner"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/table/socket"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/table/source"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/tally"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/testkit/captures"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/whatif"
)

var defaultConfig = collector.Config{
	Groups:     []collector.Group{{Limiter: collector.HTTP, Ports: []uint16{8500, 8501}}},
	States:     []socket.State{socket.StateEstablished, socket.StateCloseWait},
	TopClients: 10,
}

var discard = slog.New(slog.DiscardHandler)

// mixed is a real ss capture; its expected counts are in the .expected.json
// beside it.
var mixed = captures.Path("ss-iproute2-6.1.0_tan_mixed.txt")

func collect(t testing.TB, config collector.Config, capture string) collector.Result {
	t.Helper()
	return collectLogged(t, config, discard, capture)
}

// collectLogged collects from a capture ("" for an empty table) with the
// default limits, without running anything.
func collectLogged(t testing.TB, config collector.Config, logger *slog.Logger, capture string) collector.Result {
	t.Helper()
	return collector.New(config, collector.Parts{Source: captured(t, capture, config.Processes), Limits: defaultLimits}, logger).Collect(context.Background())
}

func captured(t testing.TB, capture string, processes bool) source.Source {
	t.Helper()
	if capture == "" {
		return source.NewText("an empty table", "", socket.StateUnknown, processes)
	}
	text, err := os.ReadFile(capture)
	require.NoError(t, err)
	return source.NewText(capture, string(text), socket.StateUnknown, processes)
}

func defaultLimits() limits.Snapshot { return limits.Snapshot{HTTP: 200, RPC: 100, GRPC: 50} }

// failing is a source that cannot read the table.
type failing struct{ err error }

func (f failing) Read(context.Context, func(socket.Socket), func()) error { return f.err }
func (f failing) String() string                                          { return "failing" }

func TestCollectReportsEveryMetricOfACapture(t *testing.T) {
	res := collect(t, defaultConfig, mixed)
	require.NoError(t, res.Err)
	want := `
# HELP consul_open_http_connections Server-side TCP connections open on the HTTP port (ESTABLISHED and CLOSE-WAIT by default).
# TYPE consul_open_http_connections gauge
consul_open_http_connections{port="8500"} 18
consul_open_http_connections{port="8501"} 4
# HELP consul_open_http_connections_by_state Server-side TCP connections open on the HTTP port, by TCP state.
# TYPE consul_open_http_connections_by_state gauge
consul_open_http_connections_by_state{port="8500",state="close_wait"} 2
consul_open_http_connections_by_state{port="8500",state="established"} 16
consul_open_http_connections_by_state{port="8501",state="close_wait"} 1
consul_open_http_connections_by_state{port="8501",state="established"} 3
# HELP consul_open_http_connections_max_per_client Most HTTP connections any one client IP holds over the group's ports: the number Consul's http_max_conns_per_client applies to.
# TYPE consul_open_http_connections_max_per_client gauge
consul_open_http_connections_max_per_client 9
# HELP consul_open_http_connections_per_client HTTP connections one client IP holds over the group's ports, for the clients holding the most.
# TYPE consul_open_http_connections_per_client gauge
consul_open_http_connections_per_client{client="127.0.0.10"} 9
consul_open_http_connections_per_client{client="127.0.0.11"} 6
consul_open_http_connections_per_client{client="127.0.0.12"} 3
consul_open_http_connections_per_client{client="::1"} 4
# HELP consul_http_max_conns_per_client Consul's per-client HTTP connection limit (http_max_conns_per_client), as configured or read from the agent.
# TYPE consul_http_max_conns_per_client gauge
consul_http_max_conns_per_client 200
# HELP consul_conn_exporter_collect_success 1 if the socket table was read and counted, 0 if the collection failed (then no connection counts are reported).
# TYPE consul_conn_exporter_collect_success gauge
consul_conn_exporter_collect_success 1
`
	require.NoError(t, testutil.CollectAndCompare(metrics.Of(res), strings.NewReader(want),
		"consul_open_http_connections", "consul_open_http_connections_by_state",
		"consul_open_http_connections_max_per_client", "consul_open_http_connections_per_client",
		"consul_http_max_conns_per_client", "consul_conn_exporter_collect_success"))
}

func TestMetricsAreLintClean(t *testing.T) {
	assertLintClean(t, collect(t, defaultConfig, mixed))
}

func TestTopClientsBoundsPerClientSamples(t *testing.T) {
	config := defaultConfig
	config.TopClients = 2
	res := collect(t, config, mixed)
	want := `
# HELP consul_open_http_connections_per_client HTTP connections one client IP holds over the group's ports, for the clients holding the most.
# TYPE consul_open_http_connections_per_client gauge
consul_open_http_connections_per_client{client="127.0.0.10"} 9
consul_open_http_connections_per_client{client="127.0.0.11"} 6
`
	require.NoError(t, testutil.CollectAndCompare(metrics.Of(res), strings.NewReader(want), "consul_open_http_connections_per_client"))

	config.TopClients = 0
	assert.Zero(t, testutil.CollectAndCount(metrics.Of(collect(t, config, mixed)), "consul_open_http_connections_per_client"))
}

// The clients at the limit are counted over every client, with no
// sample of their own (--clients.top 0), and not said without a limit.
func TestClientsAtTheLimitAreEveryClientsNotOnlyTheTop(t *testing.T) {
	config := defaultConfig
	config.TopClients = 0
	at := func(limit int) collector.Result {
		return collector.New(config, collector.Parts{Source: captured(t, mixed, false), Limits: func() limits.Snapshot {
			return limits.Snapshot{HTTP: limit}
		}}, discard).Collect(context.Background())
	}
	want := `
# HELP consul_http_clients_at_limit Client IPs holding at least http_max_conns_per_client HTTP connections, of every client (not only the busiest): Consul refuses each its new ones.
# TYPE consul_http_clients_at_limit gauge
consul_http_clients_at_limit 2
`
	// 127.0.0.10 holds 9 and 127.0.0.11 6; 127.0.0.12 3 and ::1 4.
	require.NoError(t, testutil.CollectAndCompare(metrics.Of(at(6)), strings.NewReader(want), "consul_http_clients_at_limit"))
	assert.Zero(t, testutil.CollectAndCount(metrics.Of(at(0)), "consul_http_clients_at_limit"), "no limit")
}

func TestEmptyOutputIsARealZero(t *testing.T) {
	// What a narrow ss filter prints when nobody is connected.
	res := collect(t, defaultConfig, "")
	require.NoError(t, res.Err)
	want := `
# HELP consul_open_http_connections Server-side TCP connections open on the HTTP port (ESTABLISHED and CLOSE-WAIT by default).
# TYPE consul_open_http_connections gauge
consul_open_http_connections{port="8500"} 0
consul_open_http_connections{port="8501"} 0
# HELP consul_open_http_connections_max_per_client Most HTTP connections any one client IP holds over the group's ports: the number Consul's http_max_conns_per_client applies to.
# TYPE consul_open_http_connections_max_per_client gauge
consul_open_http_connections_max_per_client 0
`
	require.NoError(t, testutil.CollectAndCompare(metrics.Of(res), strings.NewReader(want),
		"consul_open_http_connections", "consul_open_http_connections_max_per_client"))
}

// assertLintClean checks that res's metrics pass Prometheus' lint.
func assertLintClean(t *testing.T, res collector.Result) {
	t.Helper()
	problems, err := testutil.CollectAndLint(metrics.Of(res))
	require.NoError(t, err)
	assert.Empty(t, problems)
}

// assertFailed checks that res says success 0, and nothing but its
// duration and each feature's success and duration besides.
func assertFailed(t *testing.T, res collector.Result) {
	t.Helper()
	n := 2 + 2*len(res.Parts) // collect_success and its duration, collector_success and its duration
	if res.Has("processes") {
		n++ // processes_success 0
	}
	if res.Limits.Auto {
		n++ // limits_read_success
	}
	assert.Equal(t, n, testutil.CollectAndCount(metrics.Of(res)), "only whether each part worked, and how long it took")
	want := `
# HELP consul_conn_exporter_collect_success 1 if the socket table was read and counted, 0 if the collection failed (then no connection counts are reported).
# TYPE consul_conn_exporter_collect_success gauge
consul_conn_exporter_collect_success 0
`
	require.NoError(t, testutil.CollectAndCompare(metrics.Of(res), strings.NewReader(want), "consul_conn_exporter_collect_success"))
}

func TestFailedCollectionReportsNoCount(t *testing.T) {
	res := collector.New(defaultConfig, collector.Parts{Source: failing{errors.New("ss exited with status 1")}, Limits: defaultLimits}, discard).Collect(context.Background())
	require.EqualError(t, res.Err, "ss exited with status 1")
	assert.Empty(t, res.Groups)
	assertFailed(t, res)
}

// On a failed collection every feature whose series go with the counts
// says it was not made, whatever it is: none says 1 over series that are
// absent. The limits' read, made apart, says how it went.
func TestAFailedCollectionSaysEveryFeatureDrawnFromItFailed(t *testing.T) {
	config := defaultConfig
	config.Processes, config.SampleInterval, config.PeakWindow = true, time.Second, time.Minute
	consulDefault, err := listeners.ParseAddress("", []uint16{8500, 8501})
	require.NoError(t, err)
	listening := func(context.Context) ([]listeners.Listener, error) {
		return []listeners.Listener{{Local: netip.MustParseAddrPort("127.0.0.1:8500")}}, nil
	}
	res := collector.New(config, collector.Parts{Source: failing{errors.New("ss exited with status 1")},
		Limits:    func() limits.Snapshot { return limits.Snapshot{Auto: true, ReadOK: true, HTTP: 200} },
		Listeners: listeners.NewWatchOf(listening, consulDefault, nil, config.Ports()),
		Events:    func(int, []int) (events.Snapshot, error) { return events.Snapshot{}, nil },
		Refusals:  func(int, refusals.Agent) (refusals.Snapshot, error) { return refusals.Snapshot{}, nil },
	}, discard).Collect(context.Background())
	require.Error(t, res.Err)
	worked := map[string]bool{}
	for _, p := range res.Parts {
		worked[p.Name] = p.Err == nil
	}
	assert.Equal(t, map[string]bool{"source": false, "listeners": false, "limits": true, "processes": false, "refusals": false, "events": false, "peaks": false}, worked)
}

func expected(t *testing.T, capture string) captures.Expected {
	t.Helper()
	want, err := captures.ReadExpected(capture)
	require.NoError(t, err)
	return want
}

// With 8501 as an RPC port, the capture's connections split into two
// groups by port, each client's in one group or the other, never summed.
func TestGroupsSplitTheCountsAndNeverSumThem(t *testing.T) {
	want := expected(t, mixed)
	config := defaultConfig
	config.Groups = []collector.Group{{Limiter: collector.HTTP, Ports: []uint16{8500}}, {Limiter: collector.RPC, Ports: []uint16{8501}}}
	res := collect(t, config, mixed)
	require.NoError(t, res.Err)
	httpCounts, rpcCounts := res.Groups[0].Counts, res.Groups[1].Counts
	assert.Equal(t, want.Total["8500"], httpCounts.Total(8500))
	assert.Equal(t, want.Total["8501"], rpcCounts.Total(8501))
	perClient := map[string]int{}
	for _, counts := range []*tally.Tally{httpCounts, rpcCounts} {
		for _, c := range counts.TopClients(100) {
			perClient[c.Client.String()] += c.Count
		}
	}
	assert.Equal(t, want.PerClient, perClient)
	assert.Less(t, httpCounts.MaxPerClient(), want.MaxPerClient+1)

	for name, n := range map[string]int{
		"consul_open_http_connections":                1,
		"consul_open_rpc_connections":                 1,
		"consul_open_rpc_connections_by_state":        2,
		"consul_open_rpc_connections_max_per_client":  1,
		"consul_open_rpc_connections_per_client":      len(rpcCounts.TopClients(10)),
		"consul_http_max_conns_per_client":            1,
		"consul_rpc_max_conns_per_client":             1,
		"consul_open_http_connections_per_process":    0,
		"consul_conn_exporter_limits_read_success":    0,
		"consul_open_http_connections_max_per_client": 1,
	} {
		assert.Equal(t, n, testutil.CollectAndCount(metrics.Of(res), name), name)
	}
	want100 := `
# HELP consul_rpc_max_conns_per_client Consul's per-client server RPC connection limit (rpc_max_conns_per_client), as configured or read from the agent.
# TYPE consul_rpc_max_conns_per_client gauge
consul_rpc_max_conns_per_client 100
`
	require.NoError(t, testutil.CollectAndCompare(metrics.Of(res), strings.NewReader(want100), "consul_rpc_max_conns_per_client"))
	assertLintClean(t, res)
}

// Every socket of the captures was held by one program, capfx, both ends
// of every connection on this (namespaced) host: all the established
// connections are its, and the closed clients' are nobody's.
func TestProcessesOfLocalClientsFromRealCaptures(t *testing.T) {
	for _, capture := range []string{captures.Path("ss-iproute2-6.1.0_tanp_mixed.txt"), captures.Path("netstat-net-tools-2.10_tanpW_mixed.txt")} {
		t.Run(filepath.Base(capture), func(t *testing.T) {
			want := expected(t, capture)
			established := 0
			for _, byState := range want.ByState {
				established += byState["established"]
			}
			config := defaultConfig
			config.Processes = true
			res := collect(t, config, capture)
			require.NoError(t, res.Err)
			wantText := fmt.Sprintf(`
# HELP consul_open_http_connections_per_process HTTP connections whose client end is held by a program on this host, by its command name, for the programs holding the most.
# TYPE consul_open_http_connections_per_process gauge
consul_open_http_connections_per_process{process="capfx"} %d
`, established)
			require.NoError(t, testutil.CollectAndCompare(metrics.Of(res), strings.NewReader(wantText), "consul_open_http_connections_per_process"))
		})
	}
}

func TestProcessesThatCannotBeReadAreAbsentAndWarnedOnce(t *testing.T) {
	var log strings.Builder
	logger := slog.New(slog.NewTextHandler(&log, nil))
	config := defaultConfig
	config.Processes = true
	c := collector.New(config, collector.Parts{Source: captured(t, mixed, true), Limits: defaultLimits}, logger) // no -p: no program is named
	for range 3 {
		res := c.Collect(context.Background())
		require.NoError(t, res.Err)
		assert.Zero(t, testutil.CollectAndCount(metrics.Of(res), "consul_open_http_connections_per_process"))
		assert.Equal(t, 18, res.Groups[0].Counts.Total(8500), "the other counts are unaffected")
	}
	assert.Equal(t, 1, strings.Count(log.String(), "cannot tell which local programs"), log.String())
}

// BenchmarkCollect is one whole collection of a 100,000-row table: the
// command's output streamed through go-cmd, parsed and counted.
func BenchmarkCollect(b *testing.B) {
	text, err := os.ReadFile(captures.Path("ss-iproute2-6.1.0_Htan-established-close-wait-sport_mixed.txt"))
	require.NoError(b, err)
	rows := strings.SplitAfter(strings.TrimRight(string(text), "\n")+"\n", "\n")
	var table strings.Builder
	for i := 0; i < 100_000; i++ {
		table.WriteString(rows[i%(len(rows)-1)])
	}
	capture := filepath.Join(b.TempDir(), "table.txt")
	require.NoError(b, os.WriteFile(capture, []byte(table.String()), 0o644))
	r, err := runner.New(10*time.Second, []string{"cat", capture})
	require.NoError(b, err)
	c := collector.New(defaultConfig, collector.Parts{Source: source.NewCommand(r, socket.StateUnknown, false, discard), Limits: defaultLimits}, discard)
	b.ReportAllocs()
	for b.Loop() {
		if res := c.Collect(context.Background()); res.Err != nil {
			b.Fatal(res.Err)
		}
	}
}

// sockets is a source of the sockets given.
type sockets []socket.Socket

func (s sockets) Read(_ context.Context, add func(socket.Socket), _ func()) error {
	for _, sock := range s {
		add(sock)
	}
	return nil
}
func (s sockets) String() string { return "sockets" }

// A name no source should let through (the parser makes every name safe)
// costs the programs' names alone, said with why, as every view has it:
// never a label the exposition cannot take.
func TestAProgramNameThatIsNotUTF8CostsOnlyTheNames(t *testing.T) {
	server, client := netip.MustParseAddrPort("127.0.0.1:8500"), netip.MustParseAddrPort("127.0.0.7:40000")
	config := defaultConfig
	config.Processes = true
	res := collector.New(config, collector.Parts{Source: sockets{
		{State: socket.StateEstablished, Local: server, Peer: client},
		{State: socket.StateEstablished, Local: client, Peer: server, Process: "bad\xff"},
	}, Limits: defaultLimits}, discard).Collect(context.Background())
	require.NoError(t, res.Err)
	assert.False(t, res.ProcessesKnown)
	assert.Contains(t, res.ProcessesWhy, "not valid UTF-8")
	assert.Equal(t, 1, testutil.CollectAndCount(metrics.Of(res), "consul_open_http_connections_per_client"))
	assertLintClean(t, res)
}

// A table with no client end at all (a --command filtering on the source
// port alone) cannot name the programs of the connections from this
// host's loopback: said, never a success with no program.
func TestATableWithoutClientEndsCannotNameTheLocalPrograms(t *testing.T) {
	config := defaultConfig
	config.Processes = true
	server := netip.MustParseAddrPort("127.0.0.1:8500")
	res := collector.New(config, collector.Parts{Source: sockets{
		{State: socket.StateEstablished, Local: server, Peer: netip.MustParseAddrPort("127.0.0.5:40000")},
		{State: socket.StateEstablished, Local: server, Peer: netip.MustParseAddrPort("127.0.0.5:40001")},
	}, Limits: defaultLimits}, discard).Collect(context.Background())
	require.NoError(t, res.Err)
	assert.False(t, res.ProcessesKnown)
	assert.Contains(t, res.ProcessesWhy, "no client end of the 2 connections from this host's loopback")
}

// fakeProc lays out a /proc where process 100, named comm, holds the
// socket inode.
func fakeProc(t *testing.T, comm string, inode uint64) string {
	t.Helper()
	proc := t.TempDir()
	require.NoError(t, os.MkdirAll(filepath.Join(proc, "100", "fd"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(proc, "100", "comm"), []byte(comm+"\n"), 0o644))
	require.NoError(t, os.Symlink(fmt.Sprintf("socket:[%d]", inode), filepath.Join(proc, "100", "fd", "3")))
	return proc
}

// Three connections from 127.0.0.7, one of them held by a local program
// whose client end's inode is 4242.
var localClient = sockets{
	{State: socket.StateEstablished, Local: netip.MustParseAddrPort("127.0.0.1:8500"), Peer: netip.MustParseAddrPort("127.0.0.7:40000")},
	{State: socket.StateEstablished, Local: netip.MustParseAddrPort("127.0.0.7:40000"), Peer: netip.MustParseAddrPort("127.0.0.1:8500"), Inode: 4242},
	{State: socket.StateEstablished, Local: netip.MustParseAddrPort("127.0.0.1:8500"), Peer: netip.MustParseAddrPort("10.0.0.9:40001")},
	{State: socket.StateEstablished, Local: netip.MustParseAddrPort("127.0.0.1:8500"), Peer: netip.MustParseAddrPort("10.0.0.9:40002")},
}

func TestProgramsAreNamedByInodeFromProc(t *testing.T) {
	config := defaultConfig
	config.Processes, config.ProcDir, config.ProcessesTimeout = true, fakeProc(t, "nomad", 4242), 5*time.Second
	res := collector.New(config, collector.Parts{Source: localClient, Limits: defaultLimits}, discard).Collect(context.Background())
	require.NoError(t, res.Err)
	want := `
# HELP consul_conn_exporter_processes_success 1 if the programs holding the connections were named (--clients.processes), 0 if not (then the per-process counts are absent; the other counts are not affected).
# TYPE consul_conn_exporter_processes_success gauge
consul_conn_exporter_processes_success 1
# HELP consul_open_http_connections_per_process HTTP connections whose client end is held by a program on this host, by its command name, for the programs holding the most.
# TYPE consul_open_http_connections_per_process gauge
consul_open_http_connections_per_process{process="nomad"} 1
`
	require.NoError(t, testutil.CollectAndCompare(metrics.Of(res), strings.NewReader(want), "consul_conn_exporter_processes_success", "consul_open_http_connections_per_process"))
}

// A lookup that fails or runs out of time costs the names, never the counts.
func TestAFailedProgramLookupLeavesTheCountsExact(t *testing.T) {
	for name, config := range map[string]collector.Config{
		"no /proc":                       {ProcDir: filepath.Join(t.TempDir(), "absent"), ProcessesTimeout: 5 * time.Second},
		"budget":                         {ProcDir: fakeProc(t, "nomad", 4242), ProcessesTimeout: time.Nanosecond},
		"a /proc that is not the host's": {ProcDir: fakeProc(t, "nomad", 1), ProcessesTimeout: 5 * time.Second},
	} {
		t.Run(name, func(t *testing.T) {
			var log strings.Builder
			config.Groups, config.States, config.TopClients, config.Processes = defaultConfig.Groups, defaultConfig.States, 10, true
			c := collector.New(config, collector.Parts{Source: localClient, Limits: defaultLimits}, slog.New(slog.NewTextHandler(&log, nil)))
			for range 2 {
				res := c.Collect(context.Background())
				require.NoError(t, res.Err)
				assert.Equal(t, 3, res.Groups[0].Counts.Total(8500))
				want := `
# HELP consul_conn_exporter_collect_success 1 if the socket table was read and counted, 0 if the collection failed (then no connection counts are reported).
# TYPE consul_conn_exporter_collect_success gauge
consul_conn_exporter_collect_success 1
# HELP consul_conn_exporter_processes_success 1 if the programs holding the connections were named (--clients.processes), 0 if not (then the per-process counts are absent; the other counts are not affected).
# TYPE consul_conn_exporter_processes_success gauge
consul_conn_exporter_processes_success 0
# HELP consul_open_http_connections_max_per_client Most HTTP connections any one client IP holds over the group's ports: the number Consul's http_max_conns_per_client applies to.
# TYPE consul_open_http_connections_max_per_client gauge
consul_open_http_connections_max_per_client 2
`
				require.NoError(t, testutil.CollectAndCompare(metrics.Of(res), strings.NewReader(want), "consul_conn_exporter_collect_success",
					"consul_conn_exporter_processes_success", "consul_open_http_connections_max_per_client"))
				assert.Zero(t, testutil.CollectAndCount(metrics.Of(res), "consul_open_http_connections_per_process"))
			}
			assert.Equal(t, 1, strings.Count(log.String(), "cannot tell which local programs"), "once per change: %s", log.String())
		})
	}
}

// switching is a source whose table the test sets, or fails.
type switching struct {
	table sockets
	err   error
}

func (s *switching) Read(ctx context.Context, add func(socket.Socket), reset func()) error {
	if s.err != nil {
		return s.err
	}
	return s.table.Read(ctx, add, reset)
}
func (s *switching) String() string { return "switching" }

// fromClient is n connections from client to 8500.
func fromClient(client string, n int) sockets {
	var table sockets
	for i := range n {
		table = append(table, socket.Socket{State: socket.StateEstablished, Local: netip.MustParseAddrPort("127.0.0.1:8500"),
			Peer: netip.AddrPortFrom(netip.MustParseAddr(client), uint16(40000+i))})
	}
	return table
}

// A burst that a sample saw between two collections shows in the second
// collection's peaks, not in its snapshot; a failed sample is counted and
// is no zero.
func TestSamplesBetweenCollectionsShowTheBurst(t *testing.T) {
	src := &switching{}
	config := defaultConfig
	config.SampleInterval, config.PeakWindow = time.Second, time.Minute
	c := collector.New(config, collector.Parts{Source: src, Limits: func() limits.Snapshot { return limits.Snapshot{HTTP: 40} }}, discard)
	c.Collect(context.Background())
	src.table = fromClient("127.0.0.9", 45)
	c.Sample(context.Background())
	src.err = errors.New("ss exited with status 1")
	c.Sample(context.Background())
	src.table, src.err = nil, nil
	res := c.Collect(context.Background())
	require.NoError(t, res.Err)
	want := `
# HELP consul_conn_exporter_samples_failed_total Reads of the socket table for the peaks that failed: they count in no peak.
# TYPE consul_conn_exporter_samples_failed_total counter
consul_conn_exporter_samples_failed_total 1
# HELP consul_conn_exporter_samples_total Reads of the socket table for the peaks (--sample.interval), collections included.
# TYPE consul_conn_exporter_samples_total counter
consul_conn_exporter_samples_total 4
# HELP consul_open_http_connections_max_per_client Most HTTP connections any one client IP holds over the group's ports: the number Consul's http_max_conns_per_client applies to.
# TYPE consul_open_http_connections_max_per_client gauge
consul_open_http_connections_max_per_client 0
# HELP consul_open_http_connections_max_per_client_peak Most HTTP connections any one client IP held at any sample over the peak window: the burst a snapshot misses.
# TYPE consul_open_http_connections_max_per_client_peak gauge
consul_open_http_connections_max_per_client_peak 45
# HELP consul_open_http_connections_peak_per_client Most HTTP connections one client IP held at any sample over the peak window, for the clients with the highest peaks.
# TYPE consul_open_http_connections_peak_per_client gauge
consul_open_http_connections_peak_per_client{client="127.0.0.9"} 45
`
	require.NoError(t, testutil.CollectAndCompare(metrics.Of(res), strings.NewReader(want),
		"consul_conn_exporter_samples_failed_total", "consul_conn_exporter_samples_total",
		"consul_open_http_connections_max_per_client", "consul_open_http_connections_max_per_client_peak", "consul_open_http_connections_peak_per_client"))
	assert.Equal(t, 1, testutil.CollectAndCount(metrics.Of(res), "consul_http_client_at_limit_seconds_total"), "the time since the sample before, the peaks' own test measures it")
	assertLintClean(t, res)
}

func TestWithoutSamplingThereAreNoPeaks(t *testing.T) {
	res := collect(t, defaultConfig, mixed)
	for _, name := range []string{"consul_conn_exporter_samples_total", "consul_open_http_connections_max_per_client_peak", "consul_http_client_at_limit_seconds_total"} {
		assert.Zero(t, testutil.CollectAndCount(metrics.Of(res), name), name)
	}
}

// What the kernel's events keep is rendered beside the counts, lint-clean:
// the churn of each group under its own names, the lifetimes as a
// histogram, the exact time at the limit in place of the sampled one, and
// the peaks from each client's peak between reads, not from the reads.
func TestTheEventsChurnLifetimesAndPeaksAreRendered(t *testing.T) {
	config := defaultConfig
	config.Groups = append(config.Groups, collector.Group{Limiter: collector.RPC, Ports: []uint16{8300}})
	config.SampleInterval, config.PeakWindow = time.Second, time.Minute
	burst := map[netip.Addr]int{netip.MustParseAddr("127.0.0.9"): 45}
	var asked [][]int
	read := func(top int, limits []int) (events.Snapshot, error) {
		asked = append(asked, limits)
		http := events.Group{Opened: 3045, Closed: [3]uint64{3000, 40, 5}, Lost: 0, AtLimit: 1500 * time.Millisecond,
			Lifetimes: []uint64{3000, 3040, 3040, 3040, 3040, 3040, 3040, 3040, 3040, 3040, 3040, 3040}, LifetimeCount: 3045, LifetimeSum: 4.5,
			TopOpened: []tally.ClientCount{{Client: netip.MustParseAddr("127.0.0.9"), Count: 3045}}, Peaks: tally.OfClients(burst)}
		rpc := events.Group{Lifetimes: make([]uint64, len(events.LifetimeBounds)), Peaks: tally.OfClients(nil)}
		return events.Snapshot{Groups: []events.Group{http, rpc}, Audits: 2, Audit: events.Census{Stale: 1}}, nil
	}
	c := collector.New(config, collector.Parts{Source: captured(t, "", false), Limits: defaultLimits, Events: read}, discard)
	res := c.Collect(context.Background())
	require.NoError(t, res.Err)
	assert.Equal(t, [][]int{{200, 100}}, asked, "each group's limit, for the time at it")
	want := `
# HELP consul_closed_http_connections_total HTTP connections closed (left the watched states) since the exporter started, by who ended them: the agent's FIN first, the client's, or a reset either way.
# TYPE consul_closed_http_connections_total counter
consul_closed_http_connections_total{by="agent"} 3000
consul_closed_http_connections_total{by="client"} 40
consul_closed_http_connections_total{by="reset"} 5
# HELP consul_conn_exporter_events_drift Connections the last audit (--events.audit-interval) found the kernel's events had counted wrong, one way or the other, and corrected: 0 when all is well.
# TYPE consul_conn_exporter_events_drift gauge
consul_conn_exporter_events_drift 1
# HELP consul_http_client_at_limit_seconds_total Time during which some client held at least http_max_conns_per_client HTTP connections: sampled every --sample.interval, or exact from the kernel's events (--source events).
# TYPE consul_http_client_at_limit_seconds_total counter
consul_http_client_at_limit_seconds_total 1.5
# HELP consul_http_connection_duration_seconds How long the HTTP connections closed since the exporter started were open (those open before it are not in it).
# TYPE consul_http_connection_duration_seconds histogram
consul_http_connection_duration_seconds_bucket{le="0.001"} 3000
consul_http_connection_duration_seconds_bucket{le="0.005"} 3040
consul_http_connection_duration_seconds_bucket{le="0.025"} 3040
consul_http_connection_duration_seconds_bucket{le="0.1"} 3040
consul_http_connection_duration_seconds_bucket{le="0.5"} 3040
consul_http_connection_duration_seconds_bucket{le="2.5"} 3040
consul_http_connection_duration_seconds_bucket{le="10"} 3040
consul_http_connection_duration_seconds_bucket{le="60"} 3040
consul_http_connection_duration_seconds_bucket{le="330"} 3040
consul_http_connection_duration_seconds_bucket{le="900"} 3040
consul_http_connection_duration_seconds_bucket{le="1800"} 3040
consul_http_connection_duration_seconds_bucket{le="3600"} 3040
consul_http_connection_duration_seconds_bucket{le="+Inf"} 3045
consul_http_connection_duration_seconds_sum 4.5
consul_http_connection_duration_seconds_count 3045
# HELP consul_open_http_connections_max_per_client_peak Most HTTP connections any one client IP held at any sample over the peak window: the burst a snapshot misses.
# TYPE consul_open_http_connections_max_per_client_peak gauge
consul_open_http_connections_max_per_client_peak 45
# HELP consul_opened_http_connections_per_client_total HTTP connections one client IP opened since the exporter started, for the clients that opened the most.
# TYPE consul_opened_http_connections_per_client_total counter
consul_opened_http_connections_per_client_total{client="127.0.0.9"} 3045
# HELP consul_opened_http_connections_total HTTP connections opened (entered the watched states) since the exporter started, from the kernel's events.
# TYPE consul_opened_http_connections_total counter
consul_opened_http_connections_total 3045
# HELP consul_opened_rpc_connections_total server RPC connections opened (entered the watched states) since the exporter started, from the kernel's events.
# TYPE consul_opened_rpc_connections_total counter
consul_opened_rpc_connections_total 0
`
	require.NoError(t, testutil.CollectAndCompare(metrics.Of(res), strings.NewReader(want),
		"consul_closed_http_connections_total", "consul_conn_exporter_events_drift", "consul_http_client_at_limit_seconds_total",
		"consul_http_connection_duration_seconds", "consul_open_http_connections_max_per_client_peak",
		"consul_opened_http_connections_per_client_total", "consul_opened_http_connections_total", "consul_opened_rpc_connections_total"))
	assertLintClean(t, res)
}

// A failed read of the events costs what they keep besides the counts,
// said as collector_success{collector="events"} 0: the counts stand, and
// no sample of the peaks is taken from the events it could not read.
func TestAFailedReadOfTheEventsFailsTheEventsAlone(t *testing.T) {
	config := defaultConfig
	config.SampleInterval, config.PeakWindow = time.Second, time.Minute
	c := collector.New(config, collector.Parts{Source: captured(t, mixed, false), Limits: defaultLimits,
		Events: func(int, []int) (events.Snapshot, error) {
			return events.Snapshot{}, errors.New("reading the kernel's totals: bad file descriptor")
		}}, discard)
	res := c.Collect(context.Background())
	require.NoError(t, res.Err)
	require.ErrorContains(t, res.EventsErr, "reading the kernel's events: reading the kernel's totals")
	assert.Positive(t, testutil.CollectAndCount(metrics.Of(res), "consul_open_http_connections"))
	assert.Zero(t, testutil.CollectAndCount(metrics.Of(res), "consul_opened_http_connections_total"))
	assert.Zero(t, testutil.CollectAndCount(metrics.Of(res), "consul_open_http_connections_max_per_client_peak"), "no peak from a failed read")
	want := `
# HELP consul_conn_exporter_collector_success 1 if the feature worked in the last collection, 0 if not (the log says why): one series per feature enabled, the source's the counts'.
# TYPE consul_conn_exporter_collector_success gauge
consul_conn_exporter_collector_success{collector="events"} 0
consul_conn_exporter_collector_success{collector="peaks"} 0
consul_conn_exporter_collector_success{collector="source"} 1
`
	require.NoError(t, testutil.CollectAndCompare(metrics.Of(res), strings.NewReader(want), "consul_conn_exporter_collector_success"))
}

// Where the events' read fails after one that worked, the time at the
// limit goes absent with the rest of what they keep: the samples' count
// of it never stands in for the events', which would make the counter
// jump, then go back.
func TestTheSampledTimeAtTheLimitNeverStandsInForTheEvents(t *testing.T) {
	config := defaultConfig
	config.SampleInterval, config.PeakWindow = time.Second, time.Minute
	reads := 0
	c := collector.New(config, collector.Parts{Source: captured(t, mixed, false), Limits: defaultLimits,
		Events: func(int, []int) (events.Snapshot, error) {
			if reads++; reads > 1 {
				return events.Snapshot{}, errors.New("reading the kernel's totals: bad file descriptor")
			}
			group := events.Group{Lifetimes: make([]uint64, len(events.LifetimeBounds)), AtLimit: time.Millisecond,
				Peaks: tally.OfClients(map[netip.Addr]int{netip.MustParseAddr("127.0.0.9"): 250})}
			return events.Snapshot{Groups: []events.Group{group}}, nil
		}}, discard)
	first := c.Collect(context.Background())
	require.NoError(t, first.EventsErr)
	require.Equal(t, 1, testutil.CollectAndCount(metrics.Of(first), "consul_http_client_at_limit_seconds_total"))
	second := c.Collect(context.Background())
	require.Error(t, second.EventsErr)
	require.True(t, second.Peaks.Known, "the window holds the first read's sample")
	assert.Zero(t, testutil.CollectAndCount(metrics.Of(second), "consul_http_client_at_limit_seconds_total"))
}

// Where which listener is the agent's cannot be told (listeners of several
// users, none where the agent's address goes) the collection fails: no
// count of 0 stands in for connections that may be the agent's. Where the
// agent is down (nothing at its given address) it holds nothing: 0, said.
func TestAnAgentThatCannotBeToldFailsTheCollectionOneDownCountsNothing(t *testing.T) {
	config := collector.Config{Groups: []collector.Group{{Limiter: collector.HTTP, Ports: []uint16{8500, 8501, 8502}}}, States: defaultConfig.States, TopClients: 10}
	listening := func(ls ...listeners.Listener) func(context.Context) ([]listeners.Listener, error) {
		return func(context.Context) ([]listeners.Listener, error) { return ls, nil }
	}
	at := func(addr string, uid uint32) listeners.Listener {
		return listeners.Listener{Local: netip.MustParseAddrPort(addr), UID: uid}
	}

	consulDefault, err := listeners.ParseAddress("", []uint16{8500, 8501, 8502})
	require.NoError(t, err)
	c := collector.New(config, collector.Parts{Source: captured(t, mixed, false), Limits: defaultLimits,
		Listeners: listeners.NewWatchOf(listening(at("127.0.0.1:8501", 65534), at("127.0.0.1:8502", 100)), consulDefault, nil, config.Ports())}, discard)
	res := c.Collect(context.Background())
	require.ErrorContains(t, res.Err, "listeners of several users do on the others")
	assert.Empty(t, res.Groups, "no count")

	given, err := listeners.ParseAddress("127.0.0.1:8500", []uint16{8500, 8501, 8502})
	require.NoError(t, err)
	c = collector.New(config, collector.Parts{Source: captured(t, mixed, false), Limits: defaultLimits,
		Listeners: listeners.NewWatchOf(listening(at("127.0.0.2:8500", 65534)), given, nil, config.Ports())}, discard)
	res = c.Collect(context.Background())
	require.NoError(t, res.Err)
	assert.Contains(t, res.Listeners.QuietReason(), "nothing listens at the agent's address")
	require.Len(t, res.Groups, 1)
	assert.Zero(t, res.Groups[0].Counts.Total(8500)+res.Groups[0].Counts.Total(8501), "the capture's connections are no listener's of the agent's")
	assert.Positive(t, collect(t, config, mixed).Groups[0].Counts.Total(8500), "the capture's, where the listeners are not read")
}

// A failed read of the refusals costs their counters alone, said as
// collector_success{collector="refusals"} 0: every count of the others
// stands.
func TestAFailedReadOfTheRefusalsFailsTheRefusalsAlone(t *testing.T) {
	failed := collector.New(defaultConfig, collector.Parts{Source: captured(t, mixed, false), Limits: defaultLimits,
		Refusals: func(int, refusals.Agent) (refusals.Snapshot, error) {
			return refusals.Snapshot{}, errors.New("reading the kernel's refusals: bad file descriptor")
		}}, discard).Collect(context.Background())
	require.NoError(t, failed.Err)
	require.ErrorContains(t, failed.RefusalsErr, "bad file descriptor")
	assert.Zero(t, testutil.CollectAndCount(metrics.Of(failed), "consul_refused_http_connections_total"))
	want := `
# HELP consul_conn_exporter_collector_success 1 if the feature worked in the last collection, 0 if not (the log says why): one series per feature enabled, the source's the counts'.
# TYPE consul_conn_exporter_collector_success gauge
consul_conn_exporter_collector_success{collector="refusals"} 0
consul_conn_exporter_collector_success{collector="source"} 1
`
	require.NoError(t, testutil.CollectAndCompare(metrics.Of(failed), strings.NewReader(want), "consul_conn_exporter_collector_success"))

	others := []string{"consul_open_http_connections", "consul_open_http_connections_by_state", "consul_open_http_connections_per_client",
		"consul_open_http_connections_max_per_client", "consul_http_max_conns_per_client", "consul_conn_exporter_collect_success"}
	without, err := testutil.CollectAndFormat(metrics.Of(collect(t, defaultConfig, mixed)), expfmt.TypeTextPlain, others...)
	require.NoError(t, err)
	require.NoError(t, testutil.CollectAndCompare(metrics.Of(failed), bytes.NewReader(without), others...))
	assert.Contains(t, string(without), `consul_open_http_connections{port="8500"}`)
}

// The uses a source tells are rendered per group and per client, with how
// long the oldest request has waited and the longest idle has been so,
// lint-clean; a source that tells none has every connection unknown.
func TestUsesAreRenderedPerGroupAndPerClient(t *testing.T) {
	server := netip.MustParseAddrPort("127.0.0.1:8500")
	peer := func(port uint16) netip.AddrPort { return netip.AddrPortFrom(netip.MustParseAddr("127.0.0.7"), port) }
	res := collector.New(defaultConfig, collector.Parts{Source: sockets{
		{State: socket.StateEstablished, Local: server, Peer: peer(1), Use: socket.UseWaiting, Traffic: socket.Traffic{BytesReceived: 90, SinceReceived: 30_000, SinceSent: 30_000}},
		{State: socket.StateEstablished, Local: server, Peer: peer(2), Use: socket.UseIdle, Traffic: socket.Traffic{BytesReceived: 90, BytesSent: 40, SinceReceived: 3_600_008, SinceSent: 3_600_000}},
		{State: socket.StateCloseWait, Local: server, Peer: peer(3), Use: socket.UseHalfClosed},
		{State: socket.StateEstablished, Local: server, Peer: peer(4)},
	}, Limits: defaultLimits}, discard).Collect(context.Background())
	want := `
# HELP consul_open_http_connections_by_use HTTP connections by what each does with its slot: waiting (a request in, not answered), idle (answered last: kept in the client's pool), silent (nothing received yet), half_closed (the client shut its side), unknown (not told by the source, or both last in one tick).
# TYPE consul_open_http_connections_by_use gauge
consul_open_http_connections_by_use{use="half_closed"} 1
consul_open_http_connections_by_use{use="idle"} 1
consul_open_http_connections_by_use{use="silent"} 0
consul_open_http_connections_by_use{use="unknown"} 1
consul_open_http_connections_by_use{use="waiting"} 1
# HELP consul_open_http_connections_longest_by_use_seconds How long the HTTP connection so the longest has been so: waiting since its request, idle since its answer (where any is); with --source events, as the last census found it (at start, each --events.audit-interval, each change of the listeners or limits).
# TYPE consul_open_http_connections_longest_by_use_seconds gauge
consul_open_http_connections_longest_by_use_seconds{use="idle"} 3600
consul_open_http_connections_longest_by_use_seconds{use="waiting"} 30
# HELP consul_open_http_connections_per_client_by_use HTTP connections one client IP holds, by use, for the clients holding the most (uses it holds none in are absent).
# TYPE consul_open_http_connections_per_client_by_use gauge
consul_open_http_connections_per_client_by_use{client="127.0.0.7",use="half_closed"} 1
consul_open_http_connections_per_client_by_use{client="127.0.0.7",use="idle"} 1
consul_open_http_connections_per_client_by_use{client="127.0.0.7",use="unknown"} 1
consul_open_http_connections_per_client_by_use{client="127.0.0.7",use="waiting"} 1
`
	names := []string{"consul_open_http_connections_by_use", "consul_open_http_connections_longest_by_use_seconds", "consul_open_http_connections_per_client_by_use"}
	require.NoError(t, testutil.CollectAndCompare(metrics.Of(res), strings.NewReader(want), names...))
	assertLintClean(t, res)
}

// The programs holding the slots are counted by use too, where the table
// tells the server end's use: each local program's connections, by what
// each is doing.
func TestEachProgramsConnectionsAreCountedByUse(t *testing.T) {
	config := defaultConfig
	config.Processes = true
	server := netip.MustParseAddrPort("127.0.0.1:8500")
	var table sockets
	for i, use := range []socket.Use{socket.UseIdle, socket.UseIdle, socket.UseWaiting, socket.UseUnknown} {
		client := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.7"), uint16(40000+i))
		table = append(table,
			socket.Socket{State: socket.StateEstablished, Local: server, Peer: client, Use: use},
			socket.Socket{State: socket.StateEstablished, Local: client, Peer: server, Process: "nomad"})
	}
	res := collector.New(config, collector.Parts{Source: table, Limits: defaultLimits}, discard).Collect(context.Background())
	require.True(t, res.ProcessesKnown, res.ProcessesWhy)
	want := `
# HELP consul_open_http_connections_per_process_by_use HTTP connections whose client end a program on this host holds, by command name and by what each does with its slot, for the programs holding the most (uses it holds none in are absent).
# TYPE consul_open_http_connections_per_process_by_use gauge
consul_open_http_connections_per_process_by_use{process="nomad",use="idle"} 2
consul_open_http_connections_per_process_by_use{process="nomad",use="unknown"} 1
consul_open_http_connections_per_process_by_use{process="nomad",use="waiting"} 1
`
	require.NoError(t, testutil.CollectAndCompare(metrics.Of(res), strings.NewReader(want), "consul_open_http_connections_per_process_by_use"))
	assertLintClean(t, res)
}

// opened is a source that reads an empty table first, then capture's: its
// connections all open after the first read.
type opened struct {
	source.Source
	read bool
}

func (o *opened) Read(ctx context.Context, add func(socket.Socket), reset func()) error {
	if !o.read {
		o.read = true
		return nil
	}
	return o.Source.Read(ctx, add, reset)
}

// collectOpened collects twice: an empty table, then capture's.
func collectOpened(t *testing.T, config collector.Config, capture string) collector.Result {
	t.Helper()
	c := collector.New(config, collector.Parts{Source: &opened{Source: captured(t, capture, false)}, Limits: defaultLimits}, discard)
	c.Collect(context.Background())
	return c.Collect(context.Background())
}

// A limit not set yet, judged from a collection after one that saw none of
// the connections: the clients holding more than it would have been
// refused what they hold past it (the capture's 127.0.0.10 holds 9,
// 127.0.0.11 6: at 5, 4 and 1), named, lint-clean. What the first read
// finds held opened before it: no refusal predicted.
func TestWhatIfLimitsPredictWhoWouldBeRefused(t *testing.T) {
	config := defaultConfig
	config.Groups = []collector.Group{{Limiter: collector.HTTP, Ports: []uint16{8500, 8501}, WhatIf: []int{5, 100}}}
	first := collect(t, config, mixed)
	assert.Zero(t, first.WhatIf[0][0].Refused, "held before the first read")
	config.Once = true // check, --once: who holds past it now
	assert.Equal(t, uint64(5), collect(t, config, mixed).WhatIf[0][0].Refused)
	config.Once = false
	res := collectOpened(t, config, mixed)
	require.NoError(t, res.Err)
	want := `
# HELP consul_http_whatif_refused_total HTTP connections a http_max_conns_per_client of limit would have refused since the exporter started (--whatif.limit): each opening while its client held limit or more, judged at each open with --source events, else from the samples (never more than were).
# TYPE consul_http_whatif_refused_total counter
consul_http_whatif_refused_total{limit="100"} 0
consul_http_whatif_refused_total{limit="5"} 5
# HELP consul_http_whatif_refused_per_client_total HTTP connections a http_max_conns_per_client of limit would have refused one client IP since the exporter started, for the clients it would refuse most.
# TYPE consul_http_whatif_refused_per_client_total counter
consul_http_whatif_refused_per_client_total{client="127.0.0.10",limit="5"} 4
consul_http_whatif_refused_per_client_total{client="127.0.0.11",limit="5"} 1
`
	require.NoError(t, testutil.CollectAndCompare(metrics.Of(res), strings.NewReader(want),
		"consul_http_whatif_refused_total", "consul_http_whatif_refused_per_client_total"))
	assertLintClean(t, res)
}

// Each gRPC port is a group of its own: the capture's 8500 and 8501 as two
// gRPC ports give two groups, every one of their metrics keyed by its port
// (the limit and the busiest client's too), never summed, no connection
// told waiting or idle; a candidate limit judges each port apart;
// lint-clean.
func TestEachGRPCPortIsAGroupKeyedByItsPort(t *testing.T) {
	config := defaultConfig
	config.Groups = []collector.Group{{Limiter: collector.HTTP, Ports: []uint16{8499}},
		{Limiter: collector.GRPC, Ports: []uint16{8500}, WhatIf: []int{5}}, {Limiter: collector.GRPC, Ports: []uint16{8501}, WhatIf: []int{5}}}
	res := collectOpened(t, config, mixed)
	require.NoError(t, res.Err)
	want := expected(t, mixed)
	on8500, on8501 := res.Groups[1].Counts, res.Groups[2].Counts
	assert.Equal(t, want.Total["8500"], on8500.Total(8500))
	assert.Equal(t, want.Total["8501"], on8501.Total(8501))
	assert.Zero(t, on8500.Total(8501))
	assert.Equal(t, "gRPC port 8501", res.Groups[2].Title())
	// A capture with each use: its waiting and idle connections are
	// neither on gRPC's multiplexed connections; silent and half-closed
	// stand.
	withUses := captures.Path("ss-iproute2-6.1.0_tanoei_mixed.txt")
	uses := expected(t, withUses).ByUse
	require.Positive(t, uses["waiting"]+uses["idle"], "the capture has some")
	told := collect(t, config, withUses)
	require.NoError(t, told.Err)
	byUse := map[string]int{}
	for _, g := range told.Groups[1:] {
		for _, u := range socket.Uses {
			byUse[u.Label()] += g.Counts.ByUse(u)
		}
	}
	assert.Equal(t, map[string]int{"waiting": 0, "idle": 0, "silent": uses["silent"], "half_closed": uses["half_closed"],
		"unknown": uses["waiting"] + uses["idle"]}, byUse)

	compare := fmt.Sprintf(`
# HELP consul_grpc_max_conns_per_client Consul's per-client gRPC connection limit (grpc_max_conns_per_client), as configured or read from the agent.
# TYPE consul_grpc_max_conns_per_client gauge
consul_grpc_max_conns_per_client{port="8500"} 50
consul_grpc_max_conns_per_client{port="8501"} 50
# HELP consul_open_grpc_connections Server-side TCP connections open on the gRPC port (ESTABLISHED and CLOSE-WAIT by default).
# TYPE consul_open_grpc_connections gauge
consul_open_grpc_connections{port="8500"} %d
consul_open_grpc_connections{port="8501"} %d
# HELP consul_open_grpc_connections_max_per_client Most gRPC connections any one client IP holds over the group's ports: the number Consul's grpc_max_conns_per_client applies to.
# TYPE consul_open_grpc_connections_max_per_client gauge
consul_open_grpc_connections_max_per_client{port="8500"} %d
consul_open_grpc_connections_max_per_client{port="8501"} %d
`, on8500.Total(8500), on8501.Total(8501), on8500.MaxPerClient(), on8501.MaxPerClient())
	require.NoError(t, testutil.CollectAndCompare(metrics.Of(res), strings.NewReader(compare),
		"consul_grpc_max_conns_per_client", "consul_open_grpc_connections", "consul_open_grpc_connections_max_per_client"))
	for name, n := range map[string]int{
		"consul_open_grpc_connections_per_client": len(on8500.TopClients(10)) + len(on8501.TopClients(10)),
		"consul_grpc_whatif_refused_total":        2,
		"consul_open_http_connections":            1,
		"consul_http_max_conns_per_client":        1,
	} {
		assert.Equal(t, n, testutil.CollectAndCount(metrics.Of(res), name), name)
	}
	assertLintClean(t, res)
}

// A single collection (check, --once) with the kernel's events asks who
// holds past a limit not set yet now, as with any source: the events'
// counters, from their start, would say none.
func TestOnceWithTheEventsTheWhatIfJudgesWhatIsHeld(t *testing.T) {
	config := defaultConfig
	config.Groups = []collector.Group{{Limiter: collector.HTTP, Ports: []uint16{8500, 8501}, WhatIf: []int{5}}}
	config.Once = true
	read := func(int, []int) (events.Snapshot, error) {
		return events.Snapshot{Groups: []events.Group{{Lifetimes: make([]uint64, len(events.LifetimeBounds)), Peaks: tally.OfClients(nil),
			WhatIf: []whatif.Limit{{Limit: 5}}}}}, nil
	}
	res := collector.New(config, collector.Parts{Source: captured(t, mixed, false), Limits: defaultLimits, Events: read}, discard).Collect(context.Background())
	require.NoError(t, res.Err)
	assert.Equal(t, uint64(5), res.WhatIf[0][0].Refused, "127.0.0.10's 9 and 127.0.0.11's 6, past 5")
}
