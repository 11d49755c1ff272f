package delivery

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/alecthomas/kingpin/v2"
	"github.com/prometheus/exporter-toolkit/web"
	"github.com/prometheus/exporter-toolkit/web/kingpinflag"

	"github.com/consul-conn-exporter/consul-conn-exporter/internal/say"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/wholenumber"
)

// WebFlags say whether and how /metrics is served.
type WebFlags struct {
	Toolkit        *web.FlagConfig
	metricsPath    string
	maxRequests    int
	maxConnections int
}

// AddWebFlags declares the web server's flags on app.
func AddWebFlags(app *kingpin.Application) *WebFlags {
	f := &WebFlags{Toolkit: kingpinflag.AddFlags(app, "")}
	app.Flag("web.telemetry-path", "Path under which to expose metrics.").Default("/metrics").StringVar(&f.metricsPath)
	app.Flag("web.max-requests", "Maximum number of parallel scrape requests (0: no limit); they share one collection.").
		Default("40").SetValue(wholenumber.Of(&f.maxRequests))
	app.Flag("web.max-connections", "Maximum number of open connections to the web server; past it the one idle longest is closed, so that clients cannot take the file descriptors a collection needs.").
		Default("100").SetValue(wholenumber.Of(&f.maxConnections))
	return f
}

// Enabled is an address (or systemd's socket) to serve on.
func (f *WebFlags) Enabled() bool {
	*f.Toolkit.WebListenAddresses = slices.DeleteFunc(*f.Toolkit.WebListenAddresses, func(a string) bool { return a == "" })
	return len(*f.Toolkit.WebListenAddresses) > 0 || *f.Toolkit.WebSystemdSocket
}

// Validate says what is wrong with the flags, before anything is served.
func (f *WebFlags) Validate() error {
	switch {
	case !strings.HasPrefix(f.metricsPath, "/") || strings.ContainsAny(f.metricsPath, " \t\n{}"):
		return fmt.Errorf("--web.telemetry-path %q: want a path starting with /, e.g. /metrics", f.metricsPath)
	case slices.Contains(probePaths, f.metricsPath):
		return fmt.Errorf("--web.telemetry-path %q is the exporter's own health probe: choose another, e.g. /metrics", f.metricsPath)
	case f.maxRequests < 0:
		return errors.New("--web.max-requests must be 0 or more")
	case f.maxConnections < 1:
		return errors.New("--web.max-connections must be 1 or more")
	}
	if file := *f.Toolkit.WebConfigFile; file != "" {
		if err := web.Validate(file); err != nil {
			return fmt.Errorf("--web.config.file %s: %s", file, say.Fold(err.Error()))
		}
	}
	return nil
}
