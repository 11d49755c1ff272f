package e2e

import (
	"fmt"
	"net"
	"net/http"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/consul-conn-exporter/consul-conn-exporter/internal/testkit/programs"
)

func TestConsulRefusesTheConnectionOurMetricSaidWasPastTheLimit(t *testing.T) {
	programs.Need(t, "ss", "apt-get install iproute2")
	const limit = 20
	consulAddr := startConsul(t, fmt.Sprintf("http_max_conns_per_client = %d", limit), false).httpAddr
	_, consulPort, _ := net.SplitHostPort(consulAddr)
	dir := t.TempDir()
	count := func() map[string]float64 {
		res := counts(t, dir, "--once", "--port", consulPort, "--limit", fmt.Sprint(limit))
		require.Equal(t, 0, res.exit, res.stderr)
		return res.metrics
	}
	const busy, quiet = "127.0.0.101", "127.0.0.102"

	// Before each new connection from the busy client, our metric says how
	// many it holds; Consul serves it while that is below the limit.
	for held := 0; held < limit; held++ {
		before := count()
		require.Equal(t, float64(held), before["consul_open_http_connections_max_per_client"])
		require.Equal(t, 0.0, value(t, before, "consul_http_clients_at_limit"), "below the limit")
		status, _ := request(t, consulAddr, busy)
		require.Equal(t, http.StatusOK, status, "connection %d of %d from %s", held+1, limit, busy)
	}
	metrics := count()
	require.Equal(t, float64(limit), value(t, metrics, "consul_open_http_connections_max_per_client"))
	require.Equal(t, float64(limit), value(t, metrics, "consul_http_max_conns_per_client"))

	// Our metric is at the limit: Consul must refuse the next one...
	status, conn := request(t, consulAddr, busy)
	assert.Equal(t, http.StatusTooManyRequests, status, "connection %d from %s", limit+1, busy)
	// Closed without reading our request: EOF, or a reset for the unread bytes.
	_, err := conn.Read(make([]byte, 1))
	assert.True(t, closedByPeer(err), "Consul closes the refused connection, got %v", err)

	// ...while another client, under its own count, still gets in.
	for range 5 {
		status, _ := request(t, consulAddr, quiet)
		require.Equal(t, http.StatusOK, status, "from %s", quiet)
	}
	metrics = count()
	assert.Equal(t, float64(limit), value(t, metrics, `consul_open_http_connections_per_client{client="`+busy+`"}`))
	assert.Equal(t, 5.0, value(t, metrics, `consul_open_http_connections_per_client{client="`+quiet+`"}`))
	assert.Equal(t, 1.0, value(t, metrics, "consul_http_clients_at_limit"), "the busy client, refused; not the quiet one")
	assert.Equal(t, float64(limit+5), value(t, metrics, `consul_open_http_connections{port="`+consulPort+`"}`),
		"every connection Consul served and holds, none it refused")
}
