package delivery

import (
	"context"
	"errors"
	"log/slog"
	"testing"
	"time"

	"github.com/consul-conn-exporter/consul-conn-exporter/internal/collector"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/limits"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/table/socket"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/table/source"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// On a stop the server may be done before the loop looks: Run takes its
// one result whichever way it comes, and returns. Taking it twice (once in
// the loop, once to wait for the server) hung a stopping exporter forever,
// now and then (e2e's signal tests stop the real one).
func TestRunReturnsOnStopWithAServer(t *testing.T) {
	stopped, cancel := context.WithCancel(context.Background())
	cancel()
	// Done as soon as it is asked to be: both of Run's ways of seeing the
	// stop are ready at once, in either order.
	serve := func(ctx context.Context) error {
		<-ctx.Done()
		return nil
	}
	for range 1000 {
		done := make(chan error, 1)
		go func() { done <- Run(stopped, time.Hour, nil, nil, serve, slog.New(slog.DiscardHandler)) }()
		select {
		case err := <-done:
			require.NoError(t, err)
		case <-time.After(10 * time.Second):
			t.Fatal("Run did not return after the stop")
		}
	}
}

func TestRunReturnsTheErrorOfAServerThatStoppedByItself(t *testing.T) {
	failed := errors.New("listen tcp: address already in use")
	serve := func(context.Context) error { return failed }
	err := Run(context.Background(), time.Hour, nil, nil, serve, slog.New(slog.DiscardHandler))
	assert.ErrorIs(t, err, failed)
}

// Every output is given the collection and the exporter's build_info, as
// /metrics has it: a textfile or a push says which version wrote it.
func TestEveryOutputGetsTheCountsAndTheBuildInfo(t *testing.T) {
	config := collector.Config{Groups: []collector.Group{{Limiter: collector.HTTP, Ports: []uint16{8500}}},
		States: []socket.State{socket.StateEstablished}, ProcDir: "/proc", ProcessesTimeout: time.Second}
	coll := collector.New(config, collector.Parts{Source: source.NewText("an empty table", "", socket.StateUnknown, false),
		Limits: func() limits.Snapshot { return limits.Snapshot{HTTP: 200} }}, slog.New(slog.DiscardHandler))
	var written []string
	out := &Output{Name: "memory", Write: func(g prometheus.Gatherer) error {
		families, err := g.Gather()
		for _, f := range families {
			written = append(written, f.GetName())
		}
		return err
	}}
	require.True(t, Once(coll, []*Output{out}, slog.New(slog.DiscardHandler)))
	assert.Contains(t, written, "consul_conn_exporter_build_info")
	assert.Contains(t, written, "consul_open_http_connections")
	assert.Contains(t, written, "consul_conn_exporter_collector_success")
}
