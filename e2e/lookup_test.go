package e2e

import (
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/consul-conn-exporter/consul-conn-exporter/internal/testkit/loopback"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/testkit/programs"
)

// As root, the release build names the programs from the kernel's list of
// open files, read by a kernel program it loads at start; then it keeps no
// capability at all, as it needs none to read the list (Linux 6.5 or later)
// and no walk of /proc is left to do.
func TestTheKernelsListOfOpenFilesLeavesNoCapability(t *testing.T) {
	programs.NeedRoot(t, "load the kernel program that lists open files")
	programs.Need(t, "ss", "apt-get install iproute2")
	l := loopback.Listen(t, "127.0.0.1")
	loopback.Open(t, l, "127.0.0.113", 4)
	addr := freeAddr(t)
	p := startServer(t, plainBinary, "--web.listen-address="+addr, "--port", port(l), "--clients.processes", "--sample.interval=0")
	assert.Contains(t, strings.Join(p.output(), "\n"), fromKernel)
	status, err := os.ReadFile("/proc/" + strconv.Itoa(p.cmd.Process.Pid) + "/status")
	require.NoError(t, err)
	assert.Contains(t, string(status), "\nCapEff:\t0000000000000000\n")
	assert.Contains(t, string(status), "\nCapPrm:\t0000000000000000\n")

	metrics := scrape(t, "http://"+addr+"/metrics")
	assert.Equal(t, 1.0, value(t, metrics, "consul_conn_exporter_processes_success"))
	assert.Equal(t, 4.0, value(t, metrics, `consul_open_http_connections_per_process{process="`+comm(t, os.Getpid())+`"}`))
}

// A build with cgo (a plain go build, go install or go run wherever a C
// compiler is) drops its capabilities in every thread as the release build
// does, so it names the programs from the kernel's list too.
func TestABuildWithCgoNamesTheProgramsFromTheKernelsList(t *testing.T) {
	programs.NeedRoot(t, "load the kernel program that lists open files")
	programs.Need(t, "ss", "apt-get install iproute2")
	if !raceEnabled() {
		t.Skip("the build with cgo is the one under -race: run the tests with -race, as the README's command does")
	}
	l := loopback.Listen(t, "127.0.0.1")
	loopback.Open(t, l, "127.0.0.114", 2)
	res := exporter(t, t.TempDir(), "--once", "--port", port(l), "--clients.processes")
	require.Equal(t, 0, res.exit, res.stderr)
	assert.Contains(t, res.stderr, fromKernel)
	assert.Equal(t, 2.0, value(t, res.metrics, `consul_open_http_connections_per_process{process="`+comm(t, os.Getpid())+`"}`))
}
