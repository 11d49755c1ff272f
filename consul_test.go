package main

import (
	"bufio"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/hashicorp/consul/api"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/consul-conn-exporter/consul-conn-exporter/internal/programs"
)

// consulAgent is a real Consul dev agent on loopback.
type consulAgent struct {
	httpAddr, serverAddr string
	config               string // its config file, for edits and reloads
	token                string // the management token, "" without ACLs
}

// startConsul runs a real Consul dev agent on loopback, every port of it
// free, with limits (the body of its limits block) and, with acl, ACLs on
// that deny by default; extra is more configuration, made for the agent's
// ports.
func startConsul(t *testing.T, limits string, acl bool, extra ...func(consulAgent) string) consulAgent {
	t.Helper()
	consul := programs.Need(t, "consul",
		"build Consul v1.20.1 with: (cd tools/consul && go build -o \"$(go env GOPATH)/bin/consul\" github.com/hashicorp/consul), and put it in PATH")
	agent := consulAgent{httpAddr: freeAddr(t), serverAddr: freeAddr(t), config: filepath.Join(t.TempDir(), "agent.hcl")}
	port := func(addr string) string { _, p, _ := net.SplitHostPort(addr); return p }
	hcl := fmt.Sprintf(`limits { %s }
ports { http = %s, dns = -1, grpc = -1, grpc_tls = -1, serf_lan = %s, serf_wan = %s, server = %s }
`, limits, port(agent.httpAddr), port(freeAddr(t)), port(freeAddr(t)), port(agent.serverAddr))
	if acl {
		agent.token = rand.Text()
		hcl += `acl { enabled = true, default_policy = "deny", tokens { initial_management = "` + agent.token + `" } }` + "\n"
	}
	for _, more := range extra {
		hcl += more(agent) + "\n"
	}
	require.NoError(t, os.WriteFile(agent.config, []byte(hcl), 0o600))
	startUntil(t, "Consul agent running!", consul, "agent", "-dev", "-bind", "127.0.0.1", "-client", "127.0.0.1", "-config-file", agent.config)
	return agent
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

// request opens a connection from the source address, makes one request on
// it and leaves it open (keep-alive), returning the status Consul answered.
func request(t *testing.T, consulAddr, from string) (int, net.Conn) {
	t.Helper()
	conn := dialFrom(t, from, consulAddr)
	_, err := io.WriteString(conn, "GET /v1/agent/self HTTP/1.1\r\nHost: consul\r\n\r\n")
	require.NoError(t, err)
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	require.NoError(t, err)
	_, err = io.Copy(io.Discard, resp.Body)
	require.NoError(t, err)
	resp.Body.Close()
	return resp.StatusCode, conn
}

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
		require.Equal(t, float64(held), count()["consul_open_http_connections_max_per_client"])
		status, _ := request(t, consulAddr, busy)
		require.Equal(t, http.StatusOK, status, "connection %d of %d from %s", held+1, limit, busy)
	}
	metrics := count()
	require.Equal(t, float64(limit), metrics["consul_open_http_connections_max_per_client"])
	require.Equal(t, float64(limit), metrics["consul_http_max_conns_per_client"])

	// Our metric is at the limit: Consul must refuse the next one...
	status, conn := request(t, consulAddr, busy)
	assert.Equal(t, http.StatusTooManyRequests, status, "connection %d from %s", limit+1, busy)
	// Closed without reading our request: EOF, or a reset for the unread bytes.
	_, err := conn.Read(make([]byte, 1))
	assert.True(t, errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET),
		"Consul closes the refused connection, got %v", err)

	// ...while another client, under its own count, still gets in.
	for range 5 {
		status, _ := request(t, consulAddr, quiet)
		require.Equal(t, http.StatusOK, status, "from %s", quiet)
	}
	metrics = count()
	assert.Equal(t, float64(limit), metrics[`consul_open_http_connections_per_client{client="`+busy+`"}`])
	assert.Equal(t, 5.0, metrics[`consul_open_http_connections_per_client{client="`+quiet+`"}`])
	assert.Equal(t, float64(limit+5), metrics[`consul_open_http_connections{port="`+consulPort+`"}`],
		"every connection Consul served and holds, none it refused")
}
