package collector

import (
	"context"
	"strconv"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
)

// The metric names are an interface: dashboards and alerts depend on them.
var (
	connectionsDesc = prometheus.NewDesc(
		"consul_open_http_connections",
		"Server-side TCP connections open on the port (ESTABLISHED and CLOSE-WAIT by default).",
		[]string{"port"}, nil)
	maxPerClientDesc = prometheus.NewDesc(
		"consul_open_http_connections_max_per_client",
		"Most connections any one client IP holds over all watched ports: the number Consul's http_max_conns_per_client applies to.",
		nil, nil)
	perClientDesc = prometheus.NewDesc(
		"consul_open_http_connections_per_client",
		"Connections one client IP holds over all watched ports, for the clients holding the most.",
		[]string{"client"}, nil)
	byStateDesc = prometheus.NewDesc(
		"consul_open_http_connections_by_state",
		"Server-side TCP connections open on the port, by TCP state.",
		[]string{"port", "state"}, nil)
	limitDesc = prometheus.NewDesc(
		"consul_http_max_conns_per_client",
		"Consul's per-client connection limit (http_max_conns_per_client) as configured for this exporter.",
		nil, nil)
	successDesc = prometheus.NewDesc(
		"consul_conn_exporter_collect_success",
		"1 if the socket table was read and counted, 0 if the collection failed (then no connection counts are reported).",
		nil, nil)
	durationDesc = prometheus.NewDesc(
		"consul_conn_exporter_collect_duration_seconds",
		"Time the collection took, command included.",
		nil, nil)
)

// Describe sends the descriptions of every metric a Result can have.
func (r Result) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{connectionsDesc, maxPerClientDesc, perClientDesc, byStateDesc, limitDesc, successDesc, durationDesc} {
		ch <- d
	}
}

// Collect sends the result's metrics. A failed result sends only
// success 0 and the duration, so that no graph or alert can take a failure
// for an idle server.
func (r Result) Collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.MustNewConstMetric(durationDesc, prometheus.GaugeValue, r.Duration.Seconds())
	if r.Err != nil {
		ch <- prometheus.MustNewConstMetric(successDesc, prometheus.GaugeValue, 0)
		return
	}
	ch <- prometheus.MustNewConstMetric(successDesc, prometheus.GaugeValue, 1)
	for _, port := range r.counts.Ports() {
		p := strconv.Itoa(int(port))
		ch <- prometheus.MustNewConstMetric(connectionsDesc, prometheus.GaugeValue, float64(r.counts.Total(port)), p)
		for _, state := range r.counts.States() {
			ch <- prometheus.MustNewConstMetric(byStateDesc, prometheus.GaugeValue,
				float64(r.counts.ByState(port, state)), p, strings.ReplaceAll(state.String(), "-", "_"))
		}
	}
	ch <- prometheus.MustNewConstMetric(maxPerClientDesc, prometheus.GaugeValue, float64(r.counts.MaxPerClient()))
	for _, c := range r.counts.TopClients(r.config.TopClients) {
		ch <- prometheus.MustNewConstMetric(perClientDesc, prometheus.GaugeValue, float64(c.Count), c.Client.String())
	}
	ch <- prometheus.MustNewConstMetric(limitDesc, prometheus.GaugeValue, float64(r.config.Limit))
}

// OnScrape is a prometheus.Collector that collects on every scrape, for the
// exporter's own /metrics.
func (c *Collector) OnScrape() prometheus.Collector { return onScrape{c} }

type onScrape struct{ c *Collector }

func (s onScrape) Describe(ch chan<- *prometheus.Desc) { Result{}.Describe(ch) }

func (s onScrape) Collect(ch chan<- prometheus.Metric) {
	// The command timeout bounds the scrape: promhttp passes no context.
	res := s.c.Collect(context.Background())
	if res.Err != nil {
		s.c.logger.Error("collection failed", "err", res.Err)
	}
	res.Collect(ch)
}
