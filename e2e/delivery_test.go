package e2e

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
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
	"golang.org/x/crypto/bcrypt"

	"github.com/consul-conn-exporter/consul-conn-exporter/internal/testkit/loopback"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/testkit/programs"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/textfile"
)

func TestNodeExporterReadsOurTextfile(t *testing.T) {
	nodeExporter := programs.Need(t, "prometheus-node-exporter", "apt-get install prometheus-node-exporter")
	programs.Need(t, "ss", "apt-get install iproute2")
	l := loopback.Listen(t, "127.0.0.1")
	loopback.Open(t, l, "127.0.0.61", 12)
	dir := t.TempDir()
	res := exporter(t, dir, "--once", "--port", port(l))
	require.Equal(t, 0, res.exit, res.stderr)

	addr := freeAddr(t)
	startServer(t, nodeExporter, "--web.listen-address="+addr,
		"--collector.disable-defaults", "--collector.textfile", "--collector.textfile.directory="+dir)
	metrics := scrape(t, "http://"+addr+"/metrics")
	assert.Equal(t, 0.0, value(t, metrics, "node_textfile_scrape_error"))
	assert.Equal(t, 12.0, value(t, metrics, `consul_open_http_connections{port="`+port(l)+`"}`))
	assert.Equal(t, 12.0, value(t, metrics, `consul_open_http_connections_per_client{client="127.0.0.61"}`))
	assert.Equal(t, 1.0, value(t, metrics, "consul_conn_exporter_collect_success"))
	assert.Contains(t, metrics, `node_textfile_mtime_seconds{file="`+filepath.Join(dir, "consul_open_http_connections.prom")+`"}`)
}

func TestPushgatewayPushReplacesTheGroup(t *testing.T) {
	gateway := programs.Need(t, "prometheus-pushgateway", "apt-get install prometheus-pushgateway")
	programs.Need(t, "ss", "apt-get install iproute2")
	addr := freeAddr(t)
	startServer(t, gateway, "--web.listen-address="+addr)
	l := loopback.Listen(t, "127.0.0.1")
	first := loopback.Open(t, l, "127.0.0.71", 4)
	loopback.Open(t, l, "127.0.0.72", 2)
	push := []string{"--once", "--port", port(l), "--push.url", "http://" + addr, "--push.instance", "consul-1"}

	// No --textfile.directory: the push is the only output.
	defaultFile := "/tmp/node-exporter/" + textfile.FileName
	before, _ := os.Stat(defaultFile)
	res := exporter(t, "", push...)
	require.Equal(t, 0, res.exit, res.stderr)
	after, _ := os.Stat(defaultFile)
	assert.Equal(t, before, after, "push only: no textfile written")
	group := `instance="consul-1",job="consul_conn_exporter"`
	metrics := scrape(t, "http://"+addr+"/metrics")
	assert.Equal(t, 6.0, value(t, metrics, `consul_open_http_connections{`+group+`,port="`+port(l)+`"}`))
	assert.Equal(t, 4.0, value(t, metrics, `consul_open_http_connections_per_client{client="127.0.0.71",`+group+`}`))

	// The client at .71 leaves; the second push must replace the group, so
	// its series goes rather than keeping its old value.
	for _, p := range first {
		require.NoError(t, p.Server.Close())
	}
	res = exporter(t, t.TempDir(), push...)
	require.Equal(t, 0, res.exit, res.stderr)
	metrics = scrape(t, "http://"+addr+"/metrics")
	assert.Equal(t, 2.0, value(t, metrics, `consul_open_http_connections{`+group+`,port="`+port(l)+`"}`))
	assert.NotContains(t, metrics, `consul_open_http_connections_per_client{client="127.0.0.71",`+group+`}`)
	assert.Equal(t, 2.0, value(t, metrics, `consul_open_http_connections_per_client{client="127.0.0.72",`+group+`}`))
}

func TestPushToDeadOrSilentGatewayFailsWithinTimeoutWithoutCredentials(t *testing.T) {
	silent, err := net.Listen("tcp", "127.0.0.1:0") // accepts, never answers
	require.NoError(t, err)
	t.Cleanup(func() { silent.Close() })
	for name, addr := range map[string]string{"dead": freeAddr(t), "silent": silent.Addr().String()} {
		t.Run(name, func(t *testing.T) {
			res := exporter(t, t.TempDir(), "--once", "--command", "true",
				"--push.url", "http://ops:hunter2@"+addr, "--push.timeout", "500ms")
			assert.Equal(t, 1, res.exit)
			assert.Contains(t, res.stderr, "push to http://"+addr)
			assert.NotContains(t, res.stderr, "hunter2")
			assert.NotContains(t, res.stderr, "ops:")
		})
	}
}

// Twenty scrapes at once share collections: the table is read by one
// command at a time, far fewer times than it is scraped, and every scrape
// gets the whole result.
func TestOwnMetricsArePromtoolCleanAndScrapesShareOneCollection(t *testing.T) {
	promtool := programs.Need(t, "promtool", "apt-get install prometheus")
	dir := t.TempDir()
	file := func(name string) string { return filepath.Join(dir, name) }
	// Each run notes itself (and any run still under way: the lock is
	// there), then waits until the test opens the gate of the round, so the
	// test decides when the collection it holds ends. A handler that reads
	// its request but comes to the collection only after that one ended
	// (on a loaded machine, some do) starts a run of its own, through the
	// open gate.
	command := fmt.Sprintf("sh -c 'mkdir %[1]s 2>/dev/null || echo overlap >> %[2]s; echo run >> %[2]s; "+
		"until [ -e %[3]s.$(cat %[4]s) ]; do sleep 0.01; done; cat ../testdata/captures/ss-iproute2-6.1.0_tan_mixed.txt; rmdir %[1]s'",
		file("lock"), file("runs"), file("gate"), file("round"))
	addr := freeAddr(t)
	// No samples between the collections: each would be a run of its own.
	startServer(t, binary, "--web.listen-address="+addr, "--port", "8500", "--port", "8501", "--command", command, "--command.timeout", "5s",
		"--sample.interval", "0")
	runs := func() int {
		text, err := os.ReadFile(file("runs"))
		if errors.Is(err, fs.ErrNotExist) {
			return 0
		}
		require.NoError(t, err)
		assert.NotContains(t, string(text), "overlap", "one command at a time")
		return strings.Count(string(text), "run")
	}
	open := func(round int) {
		require.NoError(t, os.WriteFile(file("gate."+strconv.Itoa(round)), nil, 0o644))
	}

	// The collection made at start, for readiness, goes through round 0's
	// gate, and is over before the rounds.
	require.NoError(t, os.WriteFile(file("round"), []byte("0"), 0o644))
	open(0)
	require.Eventually(t, func() bool {
		resp, err := http.Get("http://" + addr + "/-/ready")
		require.NoError(t, err)
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}, 10*time.Second, 10*time.Millisecond)
	for round := 1; round <= 2; round++ {
		require.NoError(t, os.WriteFile(file("round"), []byte(strconv.Itoa(round)), 0o644))
		before := runs()
		const scrapers = 20
		conns := make([]net.Conn, scrapers)
		for i := range conns {
			conn, err := net.Dial("tcp", addr)
			require.NoError(t, err)
			defer conn.Close()
			_, err = io.WriteString(conn, "GET /metrics HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
			require.NoError(t, err)
			conns[i] = conn
		}
		// Every request is sent; once the server has read them all (its
		// receive queues are empty) their handlers are on their way into
		// the collection that the first one started, held at the gate.
		require.Eventually(t, func() bool { return requestsRead(t, addr, conns) == scrapers }, 10*time.Second, 5*time.Millisecond)
		open(round)
		for _, conn := range conns {
			resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
			require.NoError(t, err)
			body := parseBody(t, resp)
			assert.Equal(t, 18.0, value(t, body, `consul_open_http_connections{port="8500"}`))
			assert.Equal(t, 9.0, value(t, body, "consul_open_http_connections_max_per_client"))
			assert.Equal(t, 1.0, value(t, body, "consul_conn_exporter_collect_success"))
		}
		n := runs() - before
		t.Logf("round %d: %d scrapes, %d runs of the command", round, scrapers, n)
		assert.Positive(t, n)
		assert.Less(t, n, scrapers/2, "scrapes share collections")
	}

	require.NoError(t, os.WriteFile(file("round"), []byte("3"), 0o644))
	open(3)
	resp, err := http.Get("http://" + addr + "/metrics")
	require.NoError(t, err)
	defer resp.Body.Close()
	check := exec.Command(promtool, "check", "metrics")
	check.Stdin = resp.Body
	out, err := check.CombinedOutput()
	assert.NoError(t, err, "promtool check metrics: %s", out)
	assert.Empty(t, strings.TrimSpace(string(out)))
}

// requestsRead counts the connections of conns whose request the server at
// addr has read: its end of them is established with an empty receive queue.
func requestsRead(t *testing.T, addr string, conns []net.Conn) int {
	ours := map[string]bool{}
	for _, c := range conns {
		ours[c.LocalAddr().String()] = true
	}
	_, p, _ := net.SplitHostPort(addr)
	read := 0
	for _, row := range ssRows(t, "established", "( sport = :"+p+" )") {
		if row.recvQ == "0" && ours[row.peer] {
			read++
		}
	}
	return read
}

func TestPushFailuresAreLoggedOnceAndTheLoopGoesOn(t *testing.T) {
	exporter := start(t, binary, "--command", "true", "--push.url", "http://"+freeAddr(t),
		"--interval", "100ms", "--push.timeout", "1s", "--log.level", "debug")
	exporter.waitFor(t, "msg=collected ok=false", 3)
	log, err := exporter.stop(syscall.SIGTERM)
	assert.NoError(t, err, "exit 0 on SIGTERM after failed pushes")
	assert.Equal(t, 1, strings.Count(log, `msg="output failed"`), "the same failure is logged once")
}

func TestWebConfigFileGivesBasicAuth(t *testing.T) {
	hash, err := bcrypt.GenerateFromPassword([]byte("s3cret"), bcrypt.MinCost)
	require.NoError(t, err)
	config := filepath.Join(t.TempDir(), "web.yml")
	require.NoError(t, os.WriteFile(config, []byte("basic_auth_users:\n  prometheus: "+string(hash)+"\n"), 0o600))
	addr := freeAddr(t)
	startServer(t, binary, "--web.listen-address="+addr, "--web.config.file="+config, "--command", "true")

	resp, err := http.Get("http://" + addr + "/metrics")
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusUnauthorized, resp.StatusCode)

	req, err := http.NewRequest(http.MethodGet, "http://"+addr+"/metrics", nil)
	require.NoError(t, err)
	req.SetBasicAuth("prometheus", "s3cret")
	resp, err = http.DefaultClient.Do(req)
	require.NoError(t, err)
	assert.Equal(t, 1.0, value(t, parseBody(t, resp), "consul_conn_exporter_collect_success"))
}

func TestABrokenWebConfigFileIsAUsageError(t *testing.T) {
	config := filepath.Join(t.TempDir(), "web.yml")
	require.NoError(t, os.WriteFile(config, []byte("basic_auth_users: [not, a, map]\n"), 0o600))
	res := exporter(t, "", "--web.listen-address="+freeAddr(t), "--web.config.file="+config, "--command", "true")
	assert.Equal(t, 2, res.exit, res.stderr)
	assert.Equal(t, 1, strings.Count(strings.TrimSpace(res.stderr), "\n")+1, "one line: %q", res.stderr)
	assert.NotContains(t, res.stderr, "Listening on")
}

// Idle keep-alive connections past --web.max-connections are closed as
// they come: under a limit of 150 open files, 300 of them cannot stop the
// collections, the textfile or a new scrape.
func TestIdleConnectionsCannotStarveTheExporter(t *testing.T) {
	prlimit := programs.Need(t, "prlimit", "apt-get install util-linux")
	programs.Need(t, "ss", "apt-get install iproute2")
	dir, addr := t.TempDir(), freeAddr(t)
	startServer(t, prlimit, "--nofile=150", binary, "--web.listen-address="+addr, "--textfile.directory", dir,
		"--interval", "100ms", "--web.max-connections", "50", "--port", "1")
	var idle []net.Conn
	t.Cleanup(func() {
		for _, c := range idle {
			c.Close()
		}
	})
	for range 300 {
		c, err := net.Dial("tcp", addr)
		require.NoError(t, err)
		idle = append(idle, c)
	}
	file := filepath.Join(dir, textfile.FileName)
	var before os.FileInfo
	require.Eventually(t, func() bool {
		var err error
		before, err = os.Stat(file)
		return err == nil
	}, 10*time.Second, 50*time.Millisecond, "the textfile is written")
	require.Eventually(t, func() bool {
		after, err := os.Stat(file)
		return err == nil && after.ModTime().After(before.ModTime())
	}, 10*time.Second, 50*time.Millisecond, "the textfile is still written")
	assert.Equal(t, 1.0, value(t, readMetrics(t, file), "consul_conn_exporter_collect_success"))
	assert.Equal(t, 1.0, value(t, scrape(t, "http://"+addr+"/metrics"), "consul_conn_exporter_collect_success"), "a new scrape is served")
}

// A client that never finishes its request holds a connection open; a
// stop still ends the exporter within the grace of a few seconds.
func TestStopIsBoundedByAClientThatNeverFinishes(t *testing.T) {
	addr := freeAddr(t)
	exporter := startServer(t, binary, "--web.listen-address="+addr, "--command", "true")
	conn, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer conn.Close()
	_, err = io.WriteString(conn, "GET /metrics HTTP/1.1\r\nHost: x\r\n") // no blank line: never done
	require.NoError(t, err)

	stopped := time.Now()
	_, err = exporter.stop(syscall.SIGTERM)
	require.NoError(t, err)
	assert.Less(t, time.Since(stopped), 8*time.Second)
}

// /-/healthy answers at once and /-/ready once a collection has been made
// (one is made at start, a slow one held here at a gate): probes that run
// no collection of their own.
func TestProbesAnswerWithoutACollection(t *testing.T) {
	dir := t.TempDir()
	file := func(name string) string { return filepath.Join(dir, name) }
	command := fmt.Sprintf("sh -c 'echo run >> %s; until [ -e %s ]; do sleep 0.01; done; cat ../testdata/captures/ss-iproute2-6.1.0_tan_mixed.txt'", file("runs"), file("gate"))
	addr := freeAddr(t)
	startServer(t, binary, "--web.listen-address="+addr, "--port", "8500", "--command", command, "--sample.interval", "0")
	get := func(path string) int {
		resp, err := http.Get("http://" + addr + path)
		require.NoError(t, err)
		resp.Body.Close()
		return resp.StatusCode
	}
	runs := func() int {
		text, _ := os.ReadFile(file("runs"))
		return strings.Count(string(text), "run")
	}
	require.Eventually(t, func() bool { return runs() == 1 }, 10*time.Second, 10*time.Millisecond, "the collection made at start")
	for range 5 {
		assert.Equal(t, http.StatusOK, get("/-/healthy"))
		assert.Equal(t, http.StatusServiceUnavailable, get("/-/ready"), "the first collection is still under way")
	}
	require.NoError(t, os.WriteFile(file("gate"), nil, 0o644))
	require.Eventually(t, func() bool { return get("/-/ready") == http.StatusOK }, 10*time.Second, 10*time.Millisecond)
	for range 5 {
		get("/-/ready")
		get("/-/healthy")
	}
	assert.Equal(t, 1, runs(), "no probe ran a collection")
}
