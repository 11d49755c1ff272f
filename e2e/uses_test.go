package e2e

import (
	"fmt"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/consul-conn-exporter/consul-conn-exporter/internal/testkit/programs"
)

// What each of a client's slots is doing, on a real Consul agent, as the
// built-in reader reads it from each connection's tcp_info: blocking
// queries on fresh connections wait on the agent, connections that sent
// nothing are silent, and blocking queries whose clients shut their
// sending side are half-closed, all certain; requests answered and kept
// open are idle, or unknown where the answer came in the request's tick,
// never another use. When the queries' key is written, the agent answers
// them, and they are idle by the next collection. ss tells no use.
func TestEachSlotsUseOnARealAgent(t *testing.T) {
	programs.Need(t, "ss", "apt-get install iproute2")
	agent := startConsul(t, "http_max_conns_per_client = 200", false)
	kv := agent.api(t).KV()
	_, err := kv.Put(&api.KVPair{Key: "watched", Value: []byte("1")}, nil)
	require.NoError(t, err)
	_, meta, err := kv.Get("watched", nil)
	require.NoError(t, err)
	const from = "127.0.0.61"
	blocking := fmt.Sprintf("GET /v1/kv/watched?index=%d&wait=5m HTTP/1.1\r\nHost: consul\r\n\r\n", meta.LastIndex)
	query := func(n int, then func(net.Conn)) []net.Conn {
		var conns []net.Conn
		for range n {
			conn := dialFrom(t, from, agent.httpAddr)
			_, err := io.WriteString(conn, blocking)
			require.NoError(t, err)
			then(conn)
			conns = append(conns, conn)
		}
		return conns
	}
	waiting := query(6, func(net.Conn) {})
	for range 4 {
		dialFrom(t, from, agent.httpAddr) // silent
	}
	query(3, func(c net.Conn) { require.NoError(t, c.(*net.TCPConn).CloseWrite()) })
	holdServed(t, agent.httpAddr, from, 5)

	uses := func(args ...string) map[string]float64 {
		res := exporter(t, t.TempDir(), append([]string{"--once", "--port", agent.httpPort()}, args...)...)
		require.Equal(t, 0, res.exit, res.stderr)
		got := map[string]float64{}
		for _, use := range []string{"waiting", "idle", "silent", "half_closed", "unknown"} {
			got[use] = res.metrics[fmt.Sprintf(`consul_open_http_connections_per_client_by_use{client="%s",use="%s"}`, from, use)]
		}
		return got
	}
	var got map[string]float64
	require.Eventually(t, func() bool {
		got = uses("--source", "netlink")
		return got["waiting"] == 6 && got["half_closed"] == 3
	}, 20*time.Second, 100*time.Millisecond, "the queries are in, the FINs come: %v", got)
	assert.Equal(t, 4.0, got["silent"])
	assert.Equal(t, 5.0, got["idle"]+got["unknown"], "answered and kept: idle, or unknown within a tick, never another use")

	assert.Equal(t, map[string]float64{"unknown": 18, "waiting": 0, "idle": 0, "silent": 0, "half_closed": 0}, uses("--source", "ss"), "ss tells no use")

	// The programs holding them, by use: this test's, which holds every
	// connection (the api client's own are idle or unknown). A client end
	// that shut its side is in FIN-WAIT-2, which the table is not read in:
	// the half-closed ones name no program yet.
	named := exporter(t, t.TempDir(), "--once", "--port", agent.httpPort(), "--source", "netlink", "--clients.processes")
	require.Equal(t, 0, named.exit, named.stderr)
	program := comm(t, os.Getpid())
	for use, n := range map[string]float64{"waiting": 6, "silent": 4} {
		assert.Equal(t, n, named.metrics[fmt.Sprintf(`consul_open_http_connections_per_process_by_use{process="%s",use="%s"}`, program, use)], use)
	}

	// The write answers every blocking query: those connections are idle
	// (their answer came long after their request).
	_, err = kv.Put(&api.KVPair{Key: "watched", Value: []byte("2")}, nil)
	require.NoError(t, err)
	for _, conn := range waiting {
		require.NoError(t, conn.SetReadDeadline(time.Now().Add(30*time.Second)))
		_, err := conn.Read(make([]byte, 1))
		require.NoError(t, err, "the query's answer")
	}
	got = uses("--source", "netlink")
	assert.Zero(t, got["waiting"])
	assert.GreaterOrEqual(t, got["idle"], 6.0, "the answered queries: %v", got)
	assert.Equal(t, 4.0, got["silent"])
}
