package e2e

import (
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/consul-conn-exporter/consul-conn-exporter/internal/testkit/programs"
)

// deploy/consul/check.hcl run by a real agent as its own script check:
// passing, warning at 80% of the limit, critical at it, passing again, each
// read from the agent's /v1/agent/checks. The load comes from 127.0.0.5, so
// that the test's own reads of the agent are not the ones refused.
func TestConsulScriptCheckWarnsBeforeThe429s(t *testing.T) {
	programs.Need(t, "ss", "apt-get install iproute2")
	definition, err := os.ReadFile("../deploy/consul/check.hcl")
	require.NoError(t, err)
	agent := startConsul(t, "http_max_conns_per_client = 30", false, func(a consulAgent) string {
		check := strings.NewReplacer(
			"127.0.0.1:8500", a.httpAddr,
			`"--port", "8500"`, `"--port", "`+a.httpPort()+`"`,
			"/usr/bin/consul_conn_exporter", binary,
			`interval = "30s"`, `interval = "1s"`,
			`timeout  = "10s"`, `timeout  = "900ms"`,
		).Replace(string(definition))
		return "enable_local_script_checks = true\n" + check
	})
	client := agent.api(t)
	// state polls the agent for the check's status until it is want.
	state := func(want string) string {
		var output string
		require.Eventually(t, func() bool {
			checks, err := client.Agent().Checks()
			require.NoError(t, err)
			c, ok := checks["consul-conn-exporter"]
			if !ok {
				return false
			}
			output = c.Output
			return c.Status == want
		}, 30*time.Second, 50*time.Millisecond, "check not %s; last output:\n%s", want, output)
		return output
	}
	state("passing")

	const busy = "127.0.0.5"
	held := holdServed(t, agent.httpAddr, busy, 24) // 80%
	output := state("warning")
	assert.Contains(t, output, "WARNING: 127.0.0.5 holds 24 of the 30 HTTP connections http_max_conns_per_client allows (80%)")
	held = append(held, holdServed(t, agent.httpAddr, busy, 6)...) // 100%
	output = state("critical")
	assert.Contains(t, output, "CRITICAL: 127.0.0.5 holds 30 of the 30 HTTP connections http_max_conns_per_client allows (100%)")
	for _, conn := range held {
		conn.Close()
	}
	state("passing")

	// When this host's own address is the one at the limit, the check's
	// read of the limit is refused: that 429 is itself the verdict.
	for range 40 {
		if status, _ := request(t, agent.httpAddr, "127.0.0.1"); status == http.StatusTooManyRequests {
			break
		}
	}
	res := checkCommand(t, []string{"CONSUL_HTTP_ADDR=" + agent.httpAddr}, "--port", agent.httpPort(), "--limit", "auto")
	assert.Equal(t, 2, res.exit, res.stdout)
	assert.Equal(t, "CRITICAL: the Consul agent answered 429 Too Many Requests to this host: its address holds every connection http_max_conns_per_client allows", lastLine(res.stdout))
	assert.Contains(t, res.stdout, "  127.0.0.1  30 ")
}
