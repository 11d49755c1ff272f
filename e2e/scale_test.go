package e2e

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/consul-conn-exporter/consul-conn-exporter/internal/testkit/loopback"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/testkit/programs"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/textfile"
)

// At 100,000 connections one collection counts every one and names the
// program holding every client end, through ss and through the built-in
// reader, from the kernel's list of open files and by walking /proc, within
// the lookup's default budget. One process holds about
// 20,000 descriptors here and a connection takes two, so the connections
// are held by port-openers of 8,000 each, each listening on its own
// address at one port, from 50 client addresses.
func TestAHundredThousandConnectionsAreCountedAndTheirProgramsNamed(t *testing.T) {
	programs.Need(t, "ss", "apt-get install iproute2")
	const total, each, clients = 100_000, 8_000, 50
	bin, p := portOpener(t), strconv.Itoa(int(loopback.Port()))
	var openers []*process
	for i := 0; i*each < total; i++ {
		n := min(each, total-i*each)
		openers = append(openers, start(t, bin, "--address", fmt.Sprintf("127.0.2.%d", i+1), "--port", p,
			"-n", strconv.Itoa(n), "--clients", strconv.Itoa(clients)))
	}
	for _, opener := range openers {
		opener.waitFor(t, "client connections", 1)
	}

	for _, source := range []string{"ss", "netlink"} {
		for _, lookup := range []string{"--clients.processes.bpf", "--no-clients.processes.bpf"} {
			t.Run(source+" "+lookup, func(t *testing.T) {
				dir := t.TempDir()
				// The plain build: the race detector's cost is not the
				// exporter's, and it can keep a kernel program.
				out, err := exec.Command(plainBinary, "--once", "--textfile.directory", dir, "--port", p, "--source", source,
					"--clients.processes", lookup, "--consul.server", "127.0.2.1:"+p).CombinedOutput()
				require.NoError(t, err, "%s", out)
				assert.Equal(t, lookup == "--clients.processes.bpf", strings.Contains(string(out), fromKernel), "%s", out)
				metrics := readMetrics(t, filepath.Join(dir, textfile.FileName))
				assert.Equal(t, float64(total), value(t, metrics, `consul_open_http_connections{port="`+p+`"}`))
				assert.Equal(t, float64(total/clients), value(t, metrics, "consul_open_http_connections_max_per_client"))
				assert.Equal(t, 1.0, value(t, metrics, "consul_conn_exporter_processes_success"))
				assert.Equal(t, float64(total), value(t, metrics, `consul_open_http_connections_per_process{process="port-opener"}`))
			})
		}
	}
}
