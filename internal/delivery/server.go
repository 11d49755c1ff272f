package delivery

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/common/version"
	"github.com/prometheus/exporter-toolkit/web"

	"github.com/consul-conn-exporter/consul-conn-exporter/internal/collector"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/metrics"
)

// probePaths are the health and readiness probes, served beside the
// metrics: --web.telemetry-path may be neither.
var probePaths = []string{"/-/healthy", "/-/ready"}

// shutdownGrace bounds how long a stop waits for scrapes under way, even
// for a client that never reads its answer.
const shutdownGrace = 5 * time.Second

// Serve serves the metrics path, collecting on every scrape, a landing page
// at / (unless the path is /), and, as Prometheus does, /-/healthy (the
// exporter answers) and /-/ready (a collection has been made, whatever its
// result; one is made at start): probes that run no collection. Until ctx
// is done; then it stops within shutdownGrace.
func Serve(ctx context.Context, coll *collector.Collector, f *WebFlags, logger *slog.Logger) error {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		metrics.OnScrape(coll, logger),
		metrics.BuildInfo(),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	mux := http.NewServeMux()
	mux.Handle(f.metricsPath, promhttp.HandlerFor(reg, promhttp.HandlerOpts{MaxRequestsInFlight: f.maxRequests}))
	mux.HandleFunc(probePaths[0], func(w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, "Healthy.\n")
	})
	mux.HandleFunc(probePaths[1], func(w http.ResponseWriter, _ *http.Request) {
		if !coll.Tried() {
			http.Error(w, "Not ready: no collection made yet.", http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, "Ready.\n")
	})
	if !coll.Tried() {
		go coll.Collect(ctx) // ready once it is made; a failure is the scrapes' to say
	}
	if f.metricsPath != "/" {
		landing, err := web.NewLandingPage(web.LandingConfig{
			Name:        "Consul connection exporter",
			Description: "Open HTTP connections to Consul, per client IP and in total",
			Version:     version.Info(),
			Links:       []web.LandingLinks{{Address: f.metricsPath, Text: "Metrics"}},
		})
		if err != nil {
			return err
		}
		mux.Handle("/", landing)
	}
	connections := connectionCap{max: f.maxConnections, since: map[net.Conn]time.Time{}}
	server := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		// A scrape waits for at most one collection, which the command
		// timeout bounds; a client slower than this to read is dropped.
		WriteTimeout: time.Minute,
		IdleTimeout:  time.Minute,
		ConnState:    connections.track,
	}
	served := make(chan error, 1)
	go func() { served <- web.ListenAndServe(server, f.Toolkit, logger) }()
	select {
	case err := <-served:
		return err
	case <-ctx.Done():
	}
	stop, cancel := context.WithTimeout(context.Background(), shutdownGrace)
	defer cancel()
	if err := server.Shutdown(stop); err != nil {
		return server.Close()
	}
	return nil
}

// connectionCap keeps at most max connections open: past it, the one
// waiting longest without a request under way (idle keep-alive, or never
// sent one) is closed. Idle connections cannot pile up until the exporter
// has no file descriptor left to run ss with, nor keep a new scrape out.
type connectionCap struct {
	max   int
	mu    sync.Mutex
	since map[net.Conn]time.Time // the waiting ones; active ones are absent
	open  int
}

func (c *connectionCap) track(conn net.Conn, state http.ConnState) {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch state {
	case http.StateNew:
		c.open++
		c.since[conn] = time.Now()
		if c.open > c.max {
			c.closeLongestWaiting()
		}
	case http.StateIdle:
		c.since[conn] = time.Now()
	case http.StateActive:
		delete(c.since, conn)
	case http.StateClosed, http.StateHijacked:
		c.open--
		delete(c.since, conn)
	}
}

func (c *connectionCap) closeLongestWaiting() {
	var oldest net.Conn
	for conn, since := range c.since {
		if oldest == nil || since.Before(c.since[oldest]) {
			oldest = conn
		}
	}
	if oldest != nil {
		oldest.Close() // its StateClosed follows
		delete(c.since, oldest)
	}
}
