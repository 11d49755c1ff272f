package e2e

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/consul-conn-exporter/consul-conn-exporter/internal/testkit/loopback"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/testkit/programs"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/textfile"
)

// inMountNamespace runs the exporter in a private mount namespace after the
// shell commands in setup (run as root), e.g. hiding /proc.
func inMountNamespace(t *testing.T, setup, dir string, args ...string) result {
	t.Helper()
	programs.NeedRoot(t, "make a private mount namespace")
	unshare := programs.Need(t, "unshare", "apt-get install util-linux")
	return runExporter(t, dir, []string{unshare, "--mount", "--", "sh", "-c", setup + ` && exec "$@"`, "sh", binary}, args...)
}

const hideProc = "mount -t tmpfs tmpfs /proc"

func TestProcHiddenSSStillCountsAndNetstatFailsLoudly(t *testing.T) {
	programs.Need(t, "ss", "apt-get install iproute2")
	netstat := programs.Need(t, "netstat", "apt-get install net-tools")
	busybox := programs.Need(t, "busybox", "apt-get install busybox")
	l := loopback.Listen(t, "127.0.0.1")
	loopback.Open(t, l, "127.0.0.111", 25)
	p := port(l)

	res := inMountNamespace(t, hideProc, t.TempDir(), "--once", "--port", p)
	require.Equal(t, 0, res.exit, res.stderr)
	assert.Equal(t, 25.0, value(t, res.metrics, `consul_open_http_connections{port="`+p+`"}`), "ss asks netlink, not /proc")
	res = inMountNamespace(t, hideProc, t.TempDir(), "--once", "--port", p, "--source", "netlink")
	require.Equal(t, 0, res.exit, res.stderr)
	assert.Equal(t, 25.0, value(t, res.metrics, `consul_open_http_connections{port="`+p+`"}`), "nor does the built-in reader")

	for _, tc := range []struct{ name, command, err string }{
		{"net-tools", netstat + " -tan", "exited with status 1: netstat: no support for `AF INET (tcp)'"},
		// busybox exits 0, having printed only its headers.
		{"busybox", busybox + " netstat -tan", "printed no socket rows and wrote to stderr: netstat: /proc/net/tcp"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res := inMountNamespace(t, hideProc, t.TempDir(), "--once", "--port", p, "--command", tc.command)
			assert.Equal(t, 1, res.exit)
			assert.Contains(t, res.stderr, tc.err)
			failedWithNoCount(t, res.metrics)
		})
	}
}

func TestUnwritableTextfileDirectoryKeepsThePreviousFile(t *testing.T) {
	dir := t.TempDir()
	before := exporter(t, dir, "--once", "--command", "true")
	require.Equal(t, 0, before.exit, before.stderr)
	previous, err := os.ReadFile(filepath.Join(dir, textfile.FileName))
	require.NoError(t, err)

	// Read-only: a bind mount, since root writes through file modes.
	res := inMountNamespace(t, "mount --bind "+dir+" "+dir+" && mount -o remount,ro,bind "+dir, dir,
		"--once", "--command", "echo garbage")
	assert.Equal(t, 1, res.exit)
	assert.Contains(t, res.stderr, "write "+filepath.Join(dir, textfile.FileName))
	assert.Contains(t, res.stderr, "read-only file system")
	after, err := os.ReadFile(filepath.Join(dir, textfile.FileName))
	require.NoError(t, err)
	assert.Equal(t, string(previous), string(after), "the previous file is intact")
	assertOnlyOurFile(t, dir)
}

func TestTextfileDirectoryThatIsAFileIsNamed(t *testing.T) {
	path := filepath.Join(t.TempDir(), "node-exporter")
	require.NoError(t, os.WriteFile(path, []byte("not a directory"), 0o644))
	res := exporter(t, path, "--once", "--command", "true")
	assert.Equal(t, 1, res.exit)
	assert.Contains(t, res.stderr, "textfile directory "+path+" is not a directory")
	text, err := os.ReadFile(path)
	require.NoError(t, err)
	assert.Equal(t, "not a directory", string(text))
}

func TestSIGTERMBetweenBackToBackWritesLeavesAWholeFile(t *testing.T) {
	// Writes back to back, 100 ms apart (the shortest --interval); each run is stopped after a
	// different number of writes. The loop takes a signal only between
	// collections, so this proves that a stop never cuts a write short
	// and leaves no temporary file, not that a write survives a signal
	// inside it.
	for stopAfter := 1; stopAfter <= 10; stopAfter++ {
		dir := t.TempDir()
		exporter := start(t, binary, "--textfile.directory", dir, "--command", "cat ../testdata/captures/ss-iproute2-6.1.0_tan_mixed.txt",
			"--port", "8500", "--interval", "100ms", "--log.level", "debug")
		exporter.waitFor(t, "msg=collected ok=true", stopAfter)
		_, err := exporter.stop(syscall.SIGTERM)
		require.NoError(t, err, "exit 0 on SIGTERM")
		metrics := readMetrics(t, filepath.Join(dir, textfile.FileName))
		assert.Equal(t, 1.0, value(t, metrics, "consul_conn_exporter_collect_success"))
		assert.Equal(t, 18.0, value(t, metrics, `consul_open_http_connections{port="8500"}`))
		assertOnlyOurFile(t, dir)
	}
}

func TestRunsUnprivilegedWithTheSameCounts(t *testing.T) {
	programs.Need(t, "ss", "apt-get install iproute2")
	l := loopback.Listen(t, "127.0.0.1")
	loopback.Open(t, l, "127.0.0.121", 9)
	loopback.Open(t, l, "127.0.0.122", 4)

	asRoot := exporter(t, t.TempDir(), "--once", "--port", port(l))
	require.Equal(t, 0, asRoot.exit, asRoot.stderr)
	for _, source := range []string{"ss", "netlink"} {
		asNobody := runAsNobody(t, nil, "--once", "--port", port(l), "--source", source)
		require.Equal(t, 0, asNobody.exit, asNobody.stderr)
		assert.Equal(t, comparable(asRoot.metrics), comparable(asNobody.metrics), source)
		assert.Equal(t, 13.0, value(t, asNobody.metrics, `consul_open_http_connections{port="`+port(l)+`"}`), source)
	}
}

// A program's name is chosen by whoever runs it (prctl(PR_SET_NAME), any
// bytes but NUL). One that is not UTF-8, held by nobody against the watched
// port, is named safely, and every count stays.
func TestAHostileProgramNameCannotBlindTheExporter(t *testing.T) {
	programs.Need(t, "ss", "apt-get install iproute2")
	// Debian's, which nobody can run (not one in root's home).
	python := programs.Need(t, "/usr/bin/python3", "apt-get install python3")
	l := loopback.Listen(t, "127.0.0.1")
	loopback.Open(t, l, "127.0.0.41", 3)
	argv := append(programs.AsNobody(t), python, "-c", `
import ctypes, os, signal, socket, sys
ctypes.CDLL(None).prctl(15, os.fsencode(sys.argv[1]), 0, 0, 0)
s = socket.create_connection(("127.0.0.1", int(sys.argv[2])))
print("ready", flush=True)
signal.pause()
`, "bad\xff", port(l))
	py := startUntil(t, "ready", argv...)
	require.Equal(t, "bad\xff", comm(t, py.cmd.Process.Pid))

	for _, res := range []result{
		exporter(t, t.TempDir(), "--once", "--clients.processes", "--port", port(l), "--no-clients.processes.bpf"),
		plainExporter(t, t.TempDir(), "--once", "--clients.processes", "--port", port(l)), // the kernel's list
	} {
		require.Equal(t, 0, res.exit, res.stderr)
		assert.Equal(t, 1.0, value(t, res.metrics, "consul_conn_exporter_collect_success"))
		assert.Equal(t, 4.0, value(t, res.metrics, `consul_open_http_connections{port="`+port(l)+`"}`))
		assert.Equal(t, 1.0, value(t, res.metrics, `consul_open_http_connections_per_process{process="bad`+"\uFFFD"+`"}`))
	}
}

// Naming the programs is a second step: when /proc is hidden from its walk,
// or the lookup runs past its budget, the counts are exact and the
// collection works; only the per-process series are absent, and
// processes_success says 0.
func TestAProgramLookupThatFailsLeavesTheCountsExact(t *testing.T) {
	programs.Need(t, "ss", "apt-get install iproute2")
	l := loopback.Listen(t, "127.0.0.1")
	loopback.Open(t, l, "127.0.0.112", 7)
	p := port(l)
	programs.Need(t, "netstat", "apt-get install net-tools")
	for _, source := range []string{"ss", "netstat", "netlink"} {
		for name, run := range map[string]func() result{
			"proc hidden": func() result {
				return inMountNamespace(t, hideProc, t.TempDir(), "--once", "--port", p, "--source", source, "--clients.processes", "--no-clients.processes.bpf")
			},
			"budget of 1ns": func() result {
				return exporter(t, t.TempDir(), "--once", "--port", p, "--source", source, "--clients.processes", "--no-clients.processes.bpf", "--clients.processes.timeout", "1ns")
			},
			"budget of 1ns, the kernel's list": func() result {
				return plainExporter(t, t.TempDir(), "--once", "--port", p, "--source", source, "--clients.processes", "--clients.processes.timeout", "1ns")
			},
		} {
			if source == "netstat" && name == "proc hidden" {
				continue // netstat reads the table itself from /proc/net
			}
			t.Run(source+", "+name, func(t *testing.T) {
				res := run()
				require.Equal(t, 0, res.exit, res.stderr)
				assert.Equal(t, 1.0, value(t, res.metrics, "consul_conn_exporter_collect_success"))
				assert.Equal(t, 7.0, value(t, res.metrics, `consul_open_http_connections{port="`+p+`"}`))
				assert.Equal(t, 0.0, value(t, res.metrics, "consul_conn_exporter_processes_success"))
				deprecatedAsTheirNew(t, res.metrics)
				for key := range res.metrics {
					assert.NotContains(t, key, "per_process")
				}
				assert.Contains(t, res.stderr, "cannot tell which local programs")
			})
		}
	}
	// And where it works, the same connections are named: this test holds them.
	res := exporter(t, t.TempDir(), "--once", "--port", p, "--clients.processes")
	require.Equal(t, 0, res.exit, res.stderr)
	assert.Equal(t, 1.0, value(t, res.metrics, "consul_conn_exporter_processes_success"))
	assert.Equal(t, 7.0, value(t, res.metrics, `consul_open_http_connections_per_process{process="`+comm(t, os.Getpid())+`"}`))
}
