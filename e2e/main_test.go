package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/consul-conn-exporter/consul-conn-exporter/internal/testkit/loopback"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/testkit/portopener"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/testkit/programs"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/textfile"
)

func TestSeedScenarioCountsOpenConnectionsThenZeroInTimeWait(t *testing.T) {
	programs.Need(t, "ss", "apt-get install iproute2")
	l := loopback.Listen(t, "127.0.0.1")
	pairs := loopback.Open(t, l, "127.0.0.1", 200)
	dir := t.TempDir()

	res := counts(t, dir, "--once", "--port", port(l))
	require.Equal(t, 0, res.exit, res.stderr)
	p := port(l)
	assert.Equal(t, 200.0, value(t, res.metrics, `consul_open_http_connections{port="`+p+`"}`))
	assert.Equal(t, 200.0, value(t, res.metrics, `consul_open_http_connections_by_state{port="`+p+`",state="established"}`))
	assert.Equal(t, 200.0, value(t, res.metrics, "consul_open_http_connections_max_per_client"))
	assert.Equal(t, 200.0, value(t, res.metrics, `consul_open_http_connections_per_client{client="127.0.0.1"}`))
	assert.Equal(t, 1.0, value(t, res.metrics, "consul_conn_exporter_collect_success"))
	assert.NotContains(t, res.metrics, "go_goroutines", "runtime metrics are for /metrics only")
	assert.NotContains(t, res.metrics, "consul_conn_exporter_build_info")

	// Half close server first (the server's socket goes to TIME-WAIT),
	// half client first (the client's does), like killing port-opener.py.
	for i, pair := range pairs {
		first, second := pair.Server, pair.Client
		if i%2 == 1 {
			first, second = pair.Client, pair.Server
		}
		require.NoError(t, first.Close())
		_, err := second.Read(make([]byte, 1))
		require.Error(t, err, "the FIN of the first close arrived")
		require.NoError(t, second.Close())
	}
	require.Eventually(t, func() bool { return timeWait(t, pairs) == 200 }, 10*time.Second, 10*time.Millisecond,
		"all 200 connections reach TIME-WAIT on one side")

	res = counts(t, dir, "--once", "--port", p)
	require.Equal(t, 0, res.exit, res.stderr)
	assert.Equal(t, 0.0, value(t, res.metrics, `consul_open_http_connections{port="`+p+`"}`))
	assert.Equal(t, 0.0, value(t, res.metrics, "consul_open_http_connections_max_per_client"))
	assert.Equal(t, 1.0, value(t, res.metrics, "consul_conn_exporter_collect_success"))
}

// timeWait counts the connections of pairs that are in TIME-WAIT on either
// side, by their addresses: other tests leave TIME-WAIT sockets too.
// ssRow is one row of `ss -Htn state X`: with one state asked for, ss
// prints no State column, only Recv-Q Send-Q Local Peer.
// ssRows asks the real ss, independently of the parser under test, for the
// TCP sockets in state that match filter.
func TestIPv6CountsTheSame(t *testing.T) {
	programs.Need(t, "ss", "apt-get install iproute2")
	l := loopback.Listen(t, "::1")
	loopback.Open(t, l, "::1", 200)
	res := counts(t, t.TempDir(), "--once", "--port", port(l), "--consul.server", "[::1]:"+port(l)) // not Consul's default address
	require.Equal(t, 0, res.exit, res.stderr)
	assert.Equal(t, 200.0, value(t, res.metrics, `consul_open_http_connections{port="`+port(l)+`"}`))
	assert.Equal(t, 200.0, value(t, res.metrics, `consul_open_http_connections_per_client{client="::1"}`))
}

func TestPerClientOverSeveralSourceAddresses(t *testing.T) {
	programs.Need(t, "ss", "apt-get install iproute2")
	l := loopback.Listen(t, "127.0.0.1")
	for _, from := range []string{"127.0.0.21", "127.0.0.22", "127.0.0.23"} {
		loopback.Open(t, l, from, 100)
	}
	res := counts(t, t.TempDir(), "--once", "--port", port(l))
	require.Equal(t, 0, res.exit, res.stderr)
	assert.Equal(t, 300.0, value(t, res.metrics, `consul_open_http_connections{port="`+port(l)+`"}`))
	assert.Equal(t, 100.0, value(t, res.metrics, "consul_open_http_connections_max_per_client"))
	for _, from := range []string{"127.0.0.21", "127.0.0.22", "127.0.0.23"} {
		assert.Equal(t, 100.0, value(t, res.metrics, `consul_open_http_connections_per_client{client="`+from+`"}`))
	}
}

func TestDualStackSocketsCountIPv4ClientsAsOne(t *testing.T) {
	programs.Need(t, "ss", "apt-get install iproute2")
	// An agent on "::" sees IPv4 clients as ::ffff:a.b.c.d; one on 127.0.0.1
	// sees them bare. Both ports here hold the same client.
	v4 := loopback.Listen(t, "127.0.0.1")
	mapped := loopback.Listen(t, "::ffff:127.0.0.2")
	loopback.Open(t, v4, "127.0.0.31", 30)
	loopback.Open(t, mapped, "127.0.0.31", 20)
	loopback.Open(t, mapped, "127.0.0.32", 5)
	res := counts(t, t.TempDir(), "--once", "--port", port(v4), "--port", port(mapped))
	require.Equal(t, 0, res.exit, res.stderr)
	assert.Equal(t, 30.0, value(t, res.metrics, `consul_open_http_connections{port="`+port(v4)+`"}`))
	assert.Equal(t, 25.0, value(t, res.metrics, `consul_open_http_connections{port="`+port(mapped)+`"}`))
	assert.Equal(t, 50.0, value(t, res.metrics, `consul_open_http_connections_per_client{client="127.0.0.31"}`))
	assert.Equal(t, 5.0, value(t, res.metrics, `consul_open_http_connections_per_client{client="127.0.0.32"}`))
	assert.Equal(t, 50.0, value(t, res.metrics, "consul_open_http_connections_max_per_client"))
}

func TestCloseWaitCountsAndClientSideTwinsDoNot(t *testing.T) {
	programs.Need(t, "ss", "apt-get install iproute2")
	l := loopback.Listen(t, "127.0.0.1")
	loopback.Open(t, l, "127.0.0.41", 7)
	for _, pair := range loopback.Open(t, l, "127.0.0.42", 3) {
		require.NoError(t, pair.Client.Close())
		_, err := pair.Server.Read(make([]byte, 1))
		require.Error(t, err, "EOF: the server's socket is in CLOSE-WAIT")
	}
	// The broad table holds every connection twice (both ends on this host).
	res := exporter(t, t.TempDir(), "--once", "--port", port(l), "--command", "ss -tan")
	viaNetlink := exporter(t, t.TempDir(), "--once", "--port", port(l), "--source", "netlink")
	assert.Equal(t, comparable(res.metrics), comparable(viaNetlink.metrics), "the built-in reader gives ss's numbers")
	require.Equal(t, 0, res.exit, res.stderr)
	p := port(l)
	assert.Equal(t, 10.0, value(t, res.metrics, `consul_open_http_connections{port="`+p+`"}`))
	assert.Equal(t, 3.0, value(t, res.metrics, `consul_open_http_connections_by_state{port="`+p+`",state="close_wait"}`))
	assert.Equal(t, 7.0, value(t, res.metrics, `consul_open_http_connections_by_state{port="`+p+`",state="established"}`))

	// One state: ss drops its State column, and the state comes from the
	// command it was given.
	res = counts(t, t.TempDir(), "--once", "--port", p, "--states", "established")
	require.Equal(t, 0, res.exit, res.stderr)
	assert.Equal(t, 7.0, value(t, res.metrics, `consul_open_http_connections{port="`+p+`"}`))
	assert.Equal(t, 7.0, value(t, res.metrics, `consul_open_http_connections_by_state{port="`+p+`",state="established"}`))
	assert.NotContains(t, res.metrics, `consul_open_http_connections_by_state{port="`+p+`",state="close_wait"}`)
}

func TestNetstatFallbackGivesSameCountsAsSS(t *testing.T) {
	programs.Need(t, "ss", "apt-get install iproute2")
	netstat := programs.Need(t, "netstat", "apt-get install net-tools")
	l := loopback.Listen(t, "127.0.0.1")
	l6 := loopback.Listen(t, "::1")
	loopback.Open(t, l, "127.0.0.51", 40)
	loopback.Open(t, l, "127.0.0.52", 2)
	loopback.Open(t, l6, "::1", 3)
	args := []string{"--once", "--port", port(l), "--port", port(l6)}

	viaSS := exporter(t, t.TempDir(), args...)
	require.Equal(t, 0, viaSS.exit, viaSS.stderr)

	// A PATH with netstat and no ss: the exporter must fall back by itself.
	bin := t.TempDir()
	require.NoError(t, os.Symlink(netstat, filepath.Join(bin, "netstat")))
	t.Setenv("PATH", bin)
	viaNetstat := exporter(t, t.TempDir(), args...)
	require.Equal(t, 0, viaNetstat.exit, viaNetstat.stderr)
	assert.Contains(t, viaNetstat.stderr, "netstat -taneW")

	assert.Equal(t, comparable(viaSS.metrics), comparable(viaNetstat.metrics))
	assert.Equal(t, 42.0, value(t, viaNetstat.metrics, `consul_open_http_connections{port="`+port(l)+`"}`))
	assert.Equal(t, 3.0, value(t, viaNetstat.metrics, `consul_open_http_connections{port="`+port(l6)+`"}`))
}

func TestWithoutSSOrNetstatTheBuiltInReaderCounts(t *testing.T) {
	l := loopback.Listen(t, "127.0.0.1")
	loopback.Open(t, l, "127.0.0.55", 6)
	t.Setenv("PATH", t.TempDir())
	res := exporter(t, t.TempDir(), "--once", "--port", port(l))
	require.Equal(t, 0, res.exit, res.stderr)
	assert.Contains(t, res.stderr, "neither ss nor netstat is in PATH: reading the kernel's socket table directly")
	assert.Equal(t, 6.0, value(t, res.metrics, `consul_open_http_connections{port="`+port(l)+`"}`))

	// Asked for by name, a missing tool is named.
	res = exporter(t, t.TempDir(), "--once", "--port", port(l), "--source", "netstat")
	assert.Equal(t, 1, res.exit)
	assert.Contains(t, res.stderr, "netstat: not in PATH (install net-tools)")

	// The built-in reader names the programs too, from /proc: this test's.
	res = exporter(t, t.TempDir(), "--once", "--port", port(l), "--clients.processes")
	require.Equal(t, 0, res.exit, res.stderr)
	assert.Equal(t, 1.0, value(t, res.metrics, "consul_conn_exporter_processes_success"))
	assert.Equal(t, 6.0, value(t, res.metrics, `consul_open_http_connections_per_process{process="`+comm(t, os.Getpid())+`"}`))
}

func TestFailedCollectionWritesSuccessZeroAndNoCount(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		err  string
	}{
		{"command exits non-zero", []string{"--command", "ss --no-such-flag"}, "exited with status"},
		{"command missing", []string{"--command", "no-such-command-for-consul-conn-exporter -tan"}, "cannot run"},
		{"command prints garbage", []string{"--command", "echo garbage"}, "that are not ss or netstat socket rows"},
		{"command hangs", []string{"--command", "sleep 30", "--command.timeout", "200ms"}, "did not finish within 200ms"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			res := exporter(t, dir, append([]string{"--once"}, tc.args...)...)
			assert.Equal(t, 1, res.exit)
			assert.Contains(t, res.stderr, tc.err)
			failedWithNoCount(t, res.metrics)
			assert.Contains(t, res.metrics, "consul_conn_exporter_collect_duration_seconds")
		})
	}
}

func TestBadFlagsExitTwoWithOneLine(t *testing.T) {
	for _, args := range [][]string{
		{"--port", "0"},
		{"--port", "70000"},
		{"--states", "listen"},
		{"--states", "time-wait"},
		{"--states", "establishd"},
		{"--limit", "-5"},
		{"--interval", "50ms"},
		{"--limit.refresh", "10ms"},
		{"--textfile.directory", ""},
		{"--clients.top", "1e3"},
		{"--runtime.gomaxprocs", "0"},
		{"--web.telemetry-path", ""},
		{"--web.telemetry-path", "metrics"},
		{"--web.telemetry-path", "/ metrics"},
		{"--web.telemetry-path", "/-/healthy"}, // the health probe's: was a panic
		{"--web.max-connections", "0"},
		{"--limit", "abc"},
		{"--rpc.limit", "-1"},
		{"--rpc.port", "0"},
		{"--port", "8500", "--rpc.port", "8500"},
		{"--limit.refresh", "0s"},
		{"--clients.top", "-1"},
		{"--clients.processes.timeout", "0s"},
		{"--command", `ss "unclosed`},
		{"--command.timeout", "0s"},
		{"--no-such-flag"},
		{"--web.listen-address", "127.0.0.1:9855"}, // with --once: a server runs until stopped
		{"--source", "proc"},
		{"--source", "netlink", "--command", "ss -tan"},
		{"--source", "command"},
		{"--source", "events", "--states", "established,syn-recv"},
		{"--push.url", "ftp://gateway:9091"},
		{"--push.url", "http://gateway:9091/?token=s3cret"}, // would push to ...?token=s3cret/metrics/job/...
		{"--consul.server", "10.0.0.5:port"},
		{"--whatif.limit", "http"},
		{"--whatif.limit", "http=0"},
		{"--whatif.limit", "http=ten"},
		{"--whatif.limit", "rpc=50"},  // no RPC group
		{"--whatif.limit", "grpc=50"}, // no gRPC group
		{"--whatif.limit", "dns=50"},
		{"--grpc.port", "0"},
		{"--grpc.port", "8502", "--grpc.limit", "-1"},
		{"--grpc.port", "8502", "--grpc.limit", "default"},
		{"--grpc.port", "8500"}, // the HTTP port
		{"--rpc.port", "8300", "--grpc.port", "8300"},
		grpcPorts(255), // past the kernel programs' 255 groups, HTTP's besides
	} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			res := exporter(t, t.TempDir(), append([]string{"--once"}, args...)...)
			assert.Equal(t, 2, res.exit, res.stderr)
			assert.Equal(t, 1, strings.Count(strings.TrimSpace(res.stderr), "\n")+1, "one line: %q", res.stderr)
			assert.NotContains(t, res.stderr, "s3cret", "never said")
			assert.Nil(t, res.metrics)
		})
	}
}

// grpcPorts are n --grpc.port flags, a group each.
func grpcPorts(n int) []string {
	var args []string
	for p := range n {
		args = append(args, "--grpc.port", strconv.Itoa(20000+p))
	}
	return args
}

// A typo before check, with what may be its value, is check's usage error:
// exit 3 (UNKNOWN), one line.
func TestATypoBeforeCheckExitsThree(t *testing.T) {
	res := runExporter(t, "", []string{binary}, "--clients.toop", "5", "check")
	assert.Equal(t, 3, res.exit, res.stderr)
	assert.Contains(t, res.stderr, "unknown long flag '--clients.toop'")
	assert.Equal(t, 1, strings.Count(strings.TrimSpace(res.stderr), "\n")+1, "one line: %q", res.stderr)
}

func TestMissingTextfileDirectoryIsCreated(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "node-exporter")
	res := exporter(t, dir, "--once", "--command", "true")
	assert.Equal(t, 0, res.exit, res.stderr)
	assert.Equal(t, 1.0, value(t, res.metrics, "consul_conn_exporter_collect_success"))
	assertOnlyOurFile(t, dir)
}

func TestRefusedTextfileDirectoryExitsOneOnceAndIsLoggedOncePerChange(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "node-exporter")
	require.NoError(t, os.Mkdir(dir, 0o755))
	require.NoError(t, os.Chmod(dir, 0o777)) // anyone could swap our file
	res := exporter(t, dir, "--once", "--command", "true")
	assert.Equal(t, 1, res.exit)
	assert.Contains(t, res.stderr, "writable by every user without the sticky bit")
	assert.Nil(t, res.metrics)

	// Long-running: the refusal is logged once, not every interval, and so
	// is the recovery once the directory is fixed.
	exporter := start(t, binary, "--textfile.directory", dir, "--command", "true", "--interval", "100ms", "--log.level", "debug")
	exporter.waitFor(t, "msg=collected ok=false", 5)
	require.NoError(t, os.Chmod(dir, 0o755))
	exporter.waitFor(t, "msg=collected ok=true", 3)
	text, err := exporter.stop(os.Interrupt)
	require.NoError(t, err)
	assert.Equal(t, 1, strings.Count(text, `msg="output failed"`), text)
	assert.Equal(t, 1, strings.Count(text, `msg="output works again"`), text)
	assertOnlyOurFile(t, dir)
}

// SIGINT, SIGTERM and SIGHUP each stop the loop between writes, and the web
// server beside it: exit 0, one log line, a whole file and no temporary one.
func TestLoopWritesUntilASignalThenExitsZero(t *testing.T) {
	for _, sig := range []os.Signal{os.Interrupt, syscall.SIGTERM, syscall.SIGHUP} {
		t.Run(sig.String(), func(t *testing.T) {
			dir := t.TempDir()
			exporter := start(t, binary, "--textfile.directory", dir, "--command", "true", "--interval", "100ms", "--log.level", "debug",
				"--web.listen-address", freeAddr(t))
			// The second collection's log line: the loop goes on by itself.
			exporter.waitFor(t, "msg=collected ok=true", 2)
			log, err := exporter.stop(sig)
			require.NoError(t, err, "exit 0 on %s", sig)
			assert.Equal(t, 1, strings.Count(log, "msg=stopped"))
			assert.Equal(t, 1.0, value(t, readMetrics(t, filepath.Join(dir, textfile.FileName)), "consul_conn_exporter_collect_success"))
			assertOnlyOurFile(t, dir)
		})
	}
}

// A stop that comes while a collection is under way, with the web server
// beside the loop: the server is done first, and the exporter must still
// exit (it hung, half the time, when it waited for the server's result
// that the loop had already taken). Ten stops, each with a collection of
// 300 ms under way.
func TestAStopDuringACollectionWithTheWebServerExits(t *testing.T) {
	for i := range 10 {
		exporter := start(t, binary, "--textfile.directory", t.TempDir(), "--command", "sleep 0.3", "--interval", "100ms",
			"--web.listen-address", freeAddr(t))
		exporter.waitFor(t, "Listening on", 1)
		_, err := exporter.stop(syscall.SIGTERM)
		require.NoError(t, err, "stop %d", i+1)
	}
}

func TestTemporaryFilesAnEarlierRunLeftAreRemovedAtStart(t *testing.T) {
	dir := t.TempDir()
	leftover := filepath.Join(dir, "."+textfile.FileName+".KILLED9.tmp")
	require.NoError(t, os.WriteFile(leftover, []byte("consul_open_http_conn"), 0o644))
	res := exporter(t, dir, "--once", "--command", "true")
	assert.Equal(t, 0, res.exit, res.stderr)
	assert.Contains(t, res.stderr, "removed temporary files an earlier run left")
	assertOnlyOurFile(t, dir)
}

func TestPortOpenerCommandHoldsConnectionsUntilStopped(t *testing.T) {
	programs.Need(t, "ss", "apt-get install iproute2")
	p := fmt.Sprint(loopback.Port())
	opener := startUntil(t, "client connections", portOpener(t), "--port", p, "-n", "30", "--clients", "3")
	assert.Equal(t, []string{"started server on 127.0.0.1:" + p, "opened 30 client connections"}, opener.output())

	dir := t.TempDir()
	res := counts(t, dir, "--once", "--port", p)
	require.Equal(t, 0, res.exit, res.stderr)
	assert.Equal(t, 30.0, value(t, res.metrics, `consul_open_http_connections{port="`+p+`"}`))
	assert.Equal(t, 10.0, value(t, res.metrics, "consul_open_http_connections_max_per_client"))
	assert.Equal(t, 10.0, value(t, res.metrics, `consul_open_http_connections_per_client{client="127.0.0.3"}`))

	_, err := opener.stop(os.Interrupt)
	require.NoError(t, err, "port-opener exits 0 on interrupt")
	res = counts(t, dir, "--once", "--port", p)
	require.Equal(t, 0, res.exit, res.stderr)
	assert.Equal(t, 0.0, value(t, res.metrics, `consul_open_http_connections{port="`+p+`"}`))
}

func timeWait(t *testing.T, pairs []portopener.Pair) int {
	ours := map[string]bool{}
	for _, p := range pairs {
		ours[p.Client.LocalAddr().String()+" "+p.Client.RemoteAddr().String()] = true
		ours[p.Client.RemoteAddr().String()+" "+p.Client.LocalAddr().String()] = true
	}
	n := 0
	for _, row := range ssRows(t, "time-wait") {
		if ours[row.local+" "+row.peer] {
			n++
		}
	}
	return n
}

type ssRow struct{ recvQ, local, peer string }

func ssRows(t *testing.T, state string, filter ...string) []ssRow {
	t.Helper()
	out, err := exec.Command("ss", append([]string{"-Htn", "state", state}, filter...)...).Output()
	require.NoError(t, err)
	var rows []ssRow
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) >= 4 {
			rows = append(rows, ssRow{recvQ: f[0], local: f[2], peer: f[3]})
		}
	}
	return rows
}
