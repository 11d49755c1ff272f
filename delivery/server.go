package delivery

import (
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	versioncollector "github.com/prometheus/client_golang/prometheus/collectors/version"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/common/version"
	"github.com/prometheus/exporter-toolkit/web"

	"github.com/consul-conn-exporter/consul-conn-exporter/collector"
)

// Server serves metricsPath, collecting on every scrape, and a landing page
// at / (unless metricsPath is /). name is the exporter's, for its version
// metric.
func Server(coll *collector.Collector, name, metricsPath string) (*http.Server, error) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		coll.OnScrape(),
		versioncollector.NewCollector(name),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	mux := http.NewServeMux()
	mux.Handle(metricsPath, promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	if metricsPath != "/" {
		landing, err := web.NewLandingPage(web.LandingConfig{
			Name:        "Consul connection exporter",
			Description: "Open HTTP connections to Consul, per client IP and in total",
			Version:     version.Info(),
			Links:       []web.LandingLinks{{Address: metricsPath, Text: "Metrics"}},
		})
		if err != nil {
			return nil, err
		}
		mux.Handle("/", landing)
	}
	return &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}, nil
}
