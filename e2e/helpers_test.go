// Package e2e runs the exporter as operators run it, against the real
// programs it sits between: ss, netstat, node_exporter, a Pushgateway,
// Prometheus, a Consul agent. Each test file is one area; this file holds
// what they share.
package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/consul-conn-exporter/consul-conn-exporter/internal/testkit/exposition"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/testkit/loopback"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/testkit/portopener"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/testkit/programs"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/textfile"
)

// binary is the exporter built once for the tests, run as operators run
// it; plainBinary is the same without -race.
var binary, plainBinary string

func TestMain(m *testing.M) {
	if os.Getenv(attackEnv) != "" {
		os.Exit(attackMain(os.Args[1:]))
	}
	flag.Parse()
	if testing.Short() {
		fmt.Println("end-to-end tests skipped in -short mode: they build the exporter and run it against real programs")
		os.Exit(0)
	}
	dir, err := os.MkdirTemp("", "consul-conn-exporter-test")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	// Tests run it as nobody too.
	if err := os.Chmod(dir, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	// Built as the tests are: under -race, so that the race detector
	// watches the real process too (a race found makes it exit 66). The
	// soak measures memory, which the race detector's own would swamp:
	// it runs a plain build.
	binary, plainBinary = filepath.Join(dir, "consul_conn_exporter"), filepath.Join(dir, "consul_conn_exporter.plain")
	// The plain build is without cgo, as the release is built; the other
	// is with cgo, as a plain go build is wherever a C compiler is: both
	// load the kernel programs and drop capabilities in every thread.
	builds := map[string][]string{plainBinary: {"CGO_ENABLED=0"}}
	if raceEnabled() {
		builds[binary] = []string{"CGO_ENABLED=1", "--race"}
		// Not the race runtime's default second of sleep at every exit.
		os.Setenv("GORACE", "atexit_sleep_ms=0")
	} else {
		binary = plainBinary
	}
	for out, how := range builds {
		args := []string{"build", "-o", out}
		if len(how) > 1 {
			args = append(args, "-race")
		}
		build := exec.Command("go", append(args, "..")...)
		build.Env = append(os.Environ(), how[0])
		if text, err := build.CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "go build: %v\n%s", err, text)
			os.Exit(1)
		}
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// checked is what `check` printed and its exit status.
type checked struct {
	exit           int
	stdout, stderr string
}

func checkCommand(t *testing.T, env []string, args ...string) checked {
	t.Helper()
	return checkIn(t, nil, env, args...)
}

// checkIn is checkCommand run under prefix: the words that enter a network
// namespace, say.
func checkIn(t *testing.T, prefix, env []string, args ...string) checked {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	argv := append(slices.Clone(prefix), binary, "check")
	argv = append(argv, args...)
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	return checked{exit: exitCode(t, cmd.Run()), stdout: stdout.String(), stderr: stderr.String()}
}

func lastLine(text string) string {
	lines := strings.Split(strings.TrimRight(text, "\n"), "\n")
	return lines[len(lines)-1]
}

// dialFrom opens a raw TCP connection from a loopback address, closed at
// the end of the test.
func dialFrom(t *testing.T, from, to string) net.Conn {
	t.Helper()
	dialer := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
	conn, err := dialer.Dial("tcp", to)
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	return conn
}

// portOpener builds cmd/port-opener where every user may run it, and says
// where.
func portOpener(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(sharedDir(t), "port-opener")
	out, err := exec.Command("go", "build", "-o", bin, "../cmd/port-opener").CombinedOutput()
	require.NoError(t, err, "%s", out)
	return bin
}

func itoa(n uint64) string { return strconv.FormatUint(n, 10) }

// consulAgent is a real Consul dev agent on loopback.
type consulAgent struct {
	httpAddr, serverAddr string
	httpsAddr            string // with agentOptions.dualStackTLS
	certs                string // the directory of its CA and certificate
	config               string // its config file, for edits and reloads
	token                string // the management token, "" without ACLs
}

// agentOptions are what an agent serves beyond HTTP on 127.0.0.1.
type agentOptions struct {
	acl bool // ACLs on, deny by default, with a management token
	// dualStackTLS serves HTTP on ::1 too, and HTTPS on 127.0.0.1 with
	// certificates from consul tls ca/cert create.
	dualStackTLS bool
	// httpAddr is where it serves HTTP, a free address when "".
	httpAddr string
}

// startConsul runs a real Consul dev agent on loopback, every port of it
// free, with limits (the body of its limits block) and, with acl, ACLs on
// that deny by default; extra is more configuration, made for the agent's
// ports.
func startConsul(t *testing.T, limits string, acl bool, extra ...func(consulAgent) string) consulAgent {
	t.Helper()
	return startAgent(t, limits, agentOptions{acl: acl}, extra...)
}

func startAgent(t *testing.T, limits string, opts agentOptions, extra ...func(consulAgent) string) consulAgent {
	t.Helper()
	consul := consulAgentBinary(t)
	agent := consulAgent{httpAddr: opts.httpAddr, serverAddr: freeAddr(t), config: filepath.Join(t.TempDir(), "agent.hcl")}
	if agent.httpAddr == "" {
		agent.httpAddr = freeAddr(t)
	}
	port := func(addr string) string { _, p, _ := net.SplitHostPort(addr); return p }
	https := "-1"
	if opts.dualStackTLS {
		agent.httpsAddr, agent.certs = freeAddr(t), t.TempDir()
		https = port(agent.httpsAddr)
	}
	hcl := fmt.Sprintf(`limits { %s }
ports { http = %s, https = %s, dns = -1, grpc = -1, grpc_tls = -1, serf_lan = %s, serf_wan = %s, server = %s }
`, limits, port(agent.httpAddr), https, port(freeAddr(t)), port(freeAddr(t)), port(agent.serverAddr))
	if opts.acl {
		agent.token = rand.Text()
		hcl += `acl { enabled = true, default_policy = "deny", tokens { initial_management = "` + agent.token + `" } }` + "\n"
	}
	if opts.dualStackTLS {
		for _, args := range [][]string{{"tls", "ca", "create"}, {"tls", "cert", "create", "-server", "-dc", "dc1"}} {
			cmd := exec.Command(consul, args...)
			cmd.Dir = agent.certs
			out, err := cmd.CombinedOutput()
			require.NoError(t, err, "consul %s: %s", strings.Join(args, " "), out)
		}
		hcl += fmt.Sprintf(`addresses { http = "127.0.0.1 ::1" }
tls { defaults { ca_file = %q, cert_file = %q, key_file = %q } }
`, filepath.Join(agent.certs, "consul-agent-ca.pem"), filepath.Join(agent.certs, "dc1-server-consul-0.pem"), filepath.Join(agent.certs, "dc1-server-consul-0-key.pem"))
	}
	for _, more := range extra {
		hcl += more(agent) + "\n"
	}
	require.NoError(t, os.WriteFile(agent.config, []byte(hcl), 0o600))
	startUntil(t, "Consul agent running!", consul, "agent", "-dev", "-bind", "127.0.0.1", "-client", "127.0.0.1", "-config-file", agent.config)
	return agent
}

// consulAgentBinary is the Consul agent the tests run: consul in PATH, else
// the one .ci/run builds from tools/consul into the cache (the one place
// the README names).
func consulAgentBinary(t *testing.T) string {
	t.Helper()
	programs.NotShort(t, "runs a Consul agent")
	if path, err := exec.LookPath("consul"); err == nil {
		return path
	}
	mod, err := os.ReadFile("../tools/consul/go.mod")
	require.NoError(t, err)
	version := regexp.MustCompile(`github.com/hashicorp/consul (v\S+)`).FindSubmatch(mod)
	require.NotNil(t, version, "tools/consul/go.mod names no Consul version")
	cache, err := os.UserCacheDir()
	require.NoError(t, err)
	built := filepath.Join(cache, "consul-conn-exporter", "consul-"+string(version[1]), "consul")
	if _, err := os.Stat(built); err == nil {
		return built
	}
	return programs.Need(t, "consul", "build the Consul agent the tests pin, as .ci/run does (a few minutes, once): "+
		"(cd tools/consul && go build -o "+built+" github.com/hashicorp/consul), or put a consul in PATH")
}

func (a consulAgent) httpPort() string {
	_, p, _ := net.SplitHostPort(a.httpAddr)
	return p
}

// api is a client of the agent with its management token.
func (a consulAgent) api(t *testing.T) *api.Client {
	t.Helper()
	client, err := api.NewClient(&api.Config{Address: a.httpAddr, Token: a.token})
	require.NoError(t, err)
	return client
}

// exchange asks the agent at consulAddr from the address from, on a new
// connection it returns open; err is a reading or writing error.
func exchange(t *testing.T, consulAddr, from string) (status int, conn net.Conn, err error) {
	t.Helper()
	conn = dialFrom(t, from, consulAddr)
	if _, err = io.WriteString(conn, "GET /v1/agent/self HTTP/1.1\r\nHost: consul\r\n\r\n"); err != nil {
		return 0, conn, err
	}
	require.NoError(t, conn.SetReadDeadline(time.Now().Add(30*time.Second)))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		return 0, conn, err
	}
	defer resp.Body.Close()
	if _, err = io.Copy(io.Discard, resp.Body); err != nil {
		return 0, conn, err
	}
	return resp.StatusCode, conn, conn.SetReadDeadline(time.Time{})
}

// request asks the agent, and fails the test if no answer comes.
func request(t *testing.T, consulAddr, from string) (int, net.Conn) {
	t.Helper()
	status, conn, err := exchange(t, consulAddr, from)
	require.NoError(t, err)
	return status, conn
}

// holdServed makes n requests to the agent at consulAddr from the address
// from, each answered 200, and returns their connections, open until the
// test ends.
func holdServed(t *testing.T, consulAddr, from string, n int) []net.Conn {
	t.Helper()
	var held []net.Conn
	t.Cleanup(func() {
		for _, c := range held {
			c.Close()
		}
	})
	for i := range n {
		status, conn := request(t, consulAddr, from)
		held = append(held, conn)
		require.Equal(t, http.StatusOK, status, "request %d of %d from %s", i+1, n, from)
	}
	return held
}

// askOverTLS asks the agent's HTTPS port from the address from, on a new
// connection, trusting the agent's CA (dualStackTLS).
func (a consulAgent) askOverTLS(t *testing.T, from string) (int, error) {
	t.Helper()
	pool := x509.NewCertPool()
	ca, err := os.ReadFile(filepath.Join(a.certs, "consul-agent-ca.pem"))
	require.NoError(t, err)
	require.True(t, pool.AppendCertsFromPEM(ca))
	conn := tls.Client(dialFrom(t, from, a.httpsAddr), &tls.Config{RootCAs: pool, ServerName: "localhost"})
	defer conn.Close()
	return ask(conn)
}

// closedByPeer is an error of a connection the other end closed or reset.
func closedByPeer(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// freeAddr is a loopback address with a port nobody listens on, below the
// ephemeral range (loopback.Port).
func freeAddr(t *testing.T) string {
	t.Helper()
	l := loopback.Listen(t, "127.0.0.1")
	require.NoError(t, l.Close())
	return l.Addr().String()
}

// startServer starts argv, an exporter or another Prometheus program, and
// returns once it listens.
func startServer(t *testing.T, argv ...string) *process {
	t.Helper()
	return startUntil(t, "Listening on", argv...)
}

// startUntil starts argv and returns once it prints ready.
func startUntil(t *testing.T, ready string, argv ...string) *process {
	t.Helper()
	p := start(t, argv...)
	p.waitFor(t, ready, 1)
	return p
}

// process is a program a test started. Its output (stderr, and stdout with
// it) is read line by line as it comes, so that a test waits for a line
// rather than for some time.
type process struct {
	cmd     *exec.Cmd
	mu      sync.Mutex
	changed *sync.Cond // a line came, or the output ended
	lines   []string
	done    bool // the output ended
	stopped sync.Once
	err     error // of Wait
}

// start starts argv; whatever still runs when the test ends is stopped
// with SIGTERM.
func start(t *testing.T, argv ...string) *process {
	t.Helper()
	p := &process{cmd: exec.Command(argv[0], argv[1:]...)}
	p.changed = sync.NewCond(&p.mu)
	out, err := p.cmd.StderrPipe()
	require.NoError(t, err)
	p.cmd.Stdout = p.cmd.Stderr
	require.NoError(t, p.cmd.Start())
	go func() {
		lines := bufio.NewScanner(out)
		for lines.Scan() {
			p.mu.Lock()
			p.lines = append(p.lines, lines.Text())
			p.changed.Broadcast()
			p.mu.Unlock()
		}
		p.mu.Lock()
		p.done = true
		p.changed.Broadcast()
		p.mu.Unlock()
	}()
	t.Cleanup(func() { p.stop(syscall.SIGTERM) })
	return p
}

// waitFor waits until n lines with text have come; the test fails if the
// output ends first.
func (p *process) waitFor(t *testing.T, text string, n int) {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	for {
		count := 0
		for _, line := range p.lines {
			if strings.Contains(line, text) {
				count++
			}
		}
		if count >= n {
			return
		}
		if p.done {
			t.Fatalf("%s ended before %d lines with %q:\n%s", p.cmd.Path, n, text, strings.Join(p.lines, "\n"))
		}
		p.changed.Wait()
	}
}

// output is every line so far.
func (p *process) output() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.lines)
}

// stopWithin is more than a stop may take: a collection under way (the
// command timeout) and the web server's grace.
const stopWithin = 30 * time.Second

// stop sends sig, reads the output to its end and waits for the program:
// the whole output, and how it exited.
func (p *process) stop(sig os.Signal) (string, error) {
	p.stopped.Do(func() {
		p.cmd.Process.Signal(sig)
		// One that does not stop is killed and said to have hung, rather
		// than every test after it waiting for the package's timeout.
		hung := time.AfterFunc(stopWithin, func() { p.cmd.Process.Kill() })
		p.mu.Lock()
		for !p.done {
			p.changed.Wait()
		}
		p.mu.Unlock()
		p.err = p.cmd.Wait()
		if !hung.Stop() {
			p.err = fmt.Errorf("still running %s after %s: killed", stopWithin, sig)
		}
	})
	return strings.Join(p.output(), "\n"), p.err
}

// scrape gets url and parses the exposition format into "name{labels}" ->
// value, labels sorted as readMetrics sorts them.
func scrape(t *testing.T, url string) map[string]float64 {
	t.Helper()
	resp, err := http.Get(url)
	require.NoError(t, err)
	return parseBody(t, resp)
}

// scrapedNever scrapes url every 50 ms for d and fails t where one scrape
// is wrong, as bad says; in the test's own goroutine (a condition of
// require.Never's may still run as the test ends and stops the exporter,
// and fail a test already over).
func scrapedNever(t *testing.T, url string, d time.Duration, bad func(map[string]float64) bool, msgAndArgs ...any) {
	t.Helper()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for end := time.Now().Add(d); time.Now().Before(end); <-tick.C {
		require.False(t, bad(scrape(t, url)), msgAndArgs...)
	}
}

func parseBody(t *testing.T, resp *http.Response) map[string]float64 {
	t.Helper()
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	return parseMetrics(t, resp.Body, "the scraped body")
}

func assertOnlyOurFile(t *testing.T, dir string) {
	t.Helper()
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	assert.Equal(t, []string{textfile.FileName}, names, "no temporary file left behind")
	info, err := os.Stat(filepath.Join(dir, textfile.FileName))
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o644), info.Mode().Perm())
}

// runAsNobody runs the exporter as the nobody user with no capabilities
// but caps, writing its textfile into a directory of its own.
func runAsNobody(t *testing.T, caps []string, args ...string) result {
	t.Helper()
	// nobody must own the directory it writes (TestMain lets it reach the
	// binary).
	shared, err := os.MkdirTemp("", "consul-conn-exporter-nobody")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(shared) })
	require.NoError(t, os.Chown(shared, 65534, 65534))
	return runExporter(t, shared, append(programs.AsNobody(t, caps...), binary), args...)
}

type result struct {
	exit    int
	stderr  string
	metrics map[string]float64 // "name{label="value",...}" -> value; nil if no file
}

// exporter runs the binary with args and reads the file it wrote in dir.
// Under -race it is built with cgo.
func exporter(t *testing.T, dir string, args ...string) result {
	t.Helper()
	return runExporter(t, dir, []string{binary}, args...)
}

// plainExporter is exporter with the plain build, as released.
func plainExporter(t *testing.T, dir string, args ...string) result {
	t.Helper()
	return runExporter(t, dir, []string{plainBinary}, args...)
}

// fromKernel is what the exporter logs when it names the programs from the
// kernel's list of open files.
const fromKernel = "naming the programs from the kernel's list of open files"

// runExporter runs argv (the binary, behind the words of a wrapper if any:
// unshare ...) with args and the textfile directory dir ("": none given).
func runExporter(t *testing.T, dir string, argv []string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	argv = slices.Clone(argv)
	if dir != "" {
		argv = append(argv, "--textfile.directory", dir)
	}
	argv = append(argv, args...)
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	res := result{exit: exitCode(t, cmd.Run()), stderr: stderr.String()}
	if dir != "" {
		res.metrics = readMetrics(t, filepath.Join(dir, textfile.FileName))
	}
	return res
}

// exitCode is the exit status of a command that ran; err must be nil or
// its exit.
func exitCode(t *testing.T, err error) int {
	t.Helper()
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		return exit.ExitCode()
	}
	require.NoError(t, err)
	return 0
}

// readMetrics reads the file at path, nil if there is none.
func readMetrics(t *testing.T, path string) map[string]float64 {
	t.Helper()
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
		return nil
	}
	require.NoError(t, err)
	defer f.Close()
	return parseMetrics(t, f, path)
}

// parseMetrics reads the exposition format from r (named by source) into
// "name{label="value",...}" -> value, labels sorted by name.
func parseMetrics(t *testing.T, r io.Reader, source string) map[string]float64 {
	t.Helper()
	metrics, err := exposition.Parse(r)
	require.NoError(t, err, "%s is not valid exposition format", source)
	return metrics
}

func port(l *portopener.Listener) string { return fmt.Sprint(l.Port()) }

// counts runs the exporter with ss (into dir) and again with the built-in
// netlink reader: both must give the same numbers. It returns ss's run.
func counts(t *testing.T, dir string, args ...string) result {
	t.Helper()
	viaSS := exporter(t, dir, args...)
	viaNetlink := exporter(t, t.TempDir(), append([]string{"--source", "netlink"}, args...)...)
	assert.Equal(t, viaSS.exit, viaNetlink.exit, viaNetlink.stderr)
	assert.Equal(t, comparable(viaSS.metrics), comparable(viaNetlink.metrics), "the built-in reader gives ss's numbers")
	deprecatedAsTheirNew(t, viaSS.metrics)
	return viaSS
}

// comparable is metrics less those that differ from run to run (how long
// the collection and each of its parts took), the listeners' series,
// which a --command's table does not give, and the uses, which only the
// built-in reader tells (TestEachSlotsUseOnARealAgent).
func comparable(metrics map[string]float64) map[string]float64 {
	m := maps.Clone(metrics)
	maps.DeleteFunc(m, func(key string, _ float64) bool {
		return strings.Contains(key, "_by_use") ||
			strings.HasPrefix(key, "consul_conn_exporter_collect_duration_seconds") ||
			strings.HasPrefix(key, "consul_conn_exporter_collector_duration_seconds") ||
			strings.HasPrefix(key, "consul_conn_exporter_port_listen") ||
			strings.HasPrefix(key, `consul_conn_exporter_collector_success{collector="listeners"}`)
	})
	return m
}

// deprecatedAsTheirNew checks that each deprecated success series is equal
// to the collector_success series that replaces it, where it is written.
func deprecatedAsTheirNew(t *testing.T, metrics map[string]float64) {
	t.Helper()
	for old, collector := range map[string]string{
		"consul_conn_exporter_collect_success":     "source",
		"consul_conn_exporter_limits_read_success": "limits",
		"consul_conn_exporter_processes_success":   "processes",
	} {
		if v, ok := metrics[old]; ok {
			assert.Equal(t, v, value(t, metrics, `consul_conn_exporter_collector_success{collector="`+collector+`"}`), old)
		}
	}
}

// failedWithNoCount checks that metrics say the collection failed, with
// no count: only the exporter's own series, collect_success 0 and the
// source's collector_success 0 among them.
func failedWithNoCount(t *testing.T, metrics map[string]float64) {
	t.Helper()
	assert.Equal(t, 0.0, value(t, metrics, "consul_conn_exporter_collect_success"))
	deprecatedAsTheirNew(t, metrics)
	for name := range metrics {
		assert.True(t, strings.HasPrefix(name, "consul_conn_exporter_"), "only the exporter's own series, no count: %s", name)
	}
}

// raceEnabled is this test binary built with -race.
func raceEnabled() bool {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return false
	}
	for _, s := range info.Settings {
		if s.Key == "-race" {
			return s.Value == "true"
		}
	}
	return false
}

// value is the sample key ("name{label=\"value\"}") of metrics; the test
// fails if there is no such sample, so that a missing series is never read
// as 0.
func value(t *testing.T, metrics map[string]float64, key string) float64 {
	t.Helper()
	v, ok := metrics[key]
	require.True(t, ok, "no sample %s", key)
	return v
}

// comm is the name of process pid, as the kernel has it.
func comm(t *testing.T, pid int) string {
	t.Helper()
	text, err := os.ReadFile("/proc/" + itoa(uint64(pid)) + "/comm")
	require.NoError(t, err)
	return strings.TrimSpace(string(text))
}

// assertVerdict asserts check's last line is want, with or without the
// busiest client's biggest use after it (", 2 idle in the client's pool"):
// whether answered connections read idle or unknown depends on the
// kernel's clock tick they fell in.
func assertVerdict(t *testing.T, want, line string) {
	t.Helper()
	if line != want && !strings.HasPrefix(line, want+", ") {
		assert.Equal(t, want, line, "the verdict, with or without a use after it")
	}
}
