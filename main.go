// Command consul_conn_exporter counts the HTTP connections Consul holds open,
// per client IP and in total, from ss (or netstat), and hands them to
// Prometheus: in node_exporter's textfile collector directory, to a
// Pushgateway, or on its own /metrics.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/alecthomas/kingpin/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	versioncollector "github.com/prometheus/client_golang/prometheus/collectors/version"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/common/promslog"
	promslogflag "github.com/prometheus/common/promslog/flag"
	"github.com/prometheus/common/version"
	"github.com/prometheus/exporter-toolkit/web"
	"github.com/prometheus/exporter-toolkit/web/kingpinflag"

	"github.com/consul-conn-exporter/consul-conn-exporter/collector"
	"github.com/consul-conn-exporter/consul-conn-exporter/parser"
	"github.com/consul-conn-exporter/consul-conn-exporter/pushgateway"
	"github.com/consul-conn-exporter/consul-conn-exporter/runner"
	"github.com/consul-conn-exporter/consul-conn-exporter/textfile"
)

const name = "consul_conn_exporter"

// Exit codes, for cron and systemd.
const (
	exitOK       = 0
	exitFailed   = 1 // a collection, a write or a push failed
	exitBadUsage = 2
)

func main() {
	// One core is enough: the work is one pipeline from ss's output to a
	// count. On a small host a second busy thread would only take CPU from
	// ss, which the collection waits on, and from Consul.
	if os.Getenv("GOMAXPROCS") == "" {
		runtime.GOMAXPROCS(1)
	}
	os.Exit(run(os.Args[1:], os.Stderr))
}

func run(args []string, stderr io.Writer) int {
	app := kingpin.New(name, "Counts the HTTP connections Consul holds open, per client IP and in total, and hands them to Prometheus.")
	app.UsageWriter(stderr).ErrorWriter(stderr)
	app.Version(version.Print(name))
	app.HelpFlag.Short('h')
	var (
		ports = app.Flag("port", "Consul port whose server-side connections are counted; repeat for several (e.g. 8501 for HTTPS).").
			Default("8500").Strings()
		states = app.Flag("states", "Comma-separated TCP states that hold one of Consul's per-client slots.").
			Default("established,close-wait").String()
		limit = app.Flag("limit", "Consul's http_max_conns_per_client, reported as consul_http_max_conns_per_client.").
			Default("200").Int()
		topClients = app.Flag("clients.top", "How many of the busiest clients get a per-client sample (0: none).").
				Default("10").Int()
		commandLine = app.Flag("command", "Command that prints the socket table, instead of ss (or netstat); split like a shell would, run without one.").
				String()
		commandTimeout = app.Flag("command.timeout", "Kill the command, and fail the collection, after this long.").
				Default("10s").Duration()
		textfileFlag = app.Flag("textfile.directory", "node_exporter's --collector.textfile.directory, where "+textfile.FileName+" is written (the output when no other is named).").
				Default("/tmp/node-exporter")
		textfileDir = textfileFlag.String()
		pushURL     = app.Flag("push.url", "Pushgateway to push to, e.g. http://pushgateway:9091 (user:password@ for basic auth).").String()
		pushJob     = app.Flag("push.job", "Pushgateway job label.").Default(name).String()
		pushInst    = app.Flag("push.instance", "Pushgateway instance label (default: the hostname).").String()
		pushTimeout = app.Flag("push.timeout", "Give up a push after this long.").Default("10s").Duration()
		webFlags    = kingpinflag.AddFlags(app, "")
		metricsPath = app.Flag("web.telemetry-path", "Path under which to expose metrics.").Default("/metrics").String()
		once        = app.Flag("once", "Collect, write or push once, then exit: 0 on success, 1 on failure.").Bool()
		interval    = app.Flag("interval", "Time between collections for the textfile and the Pushgateway.").Default("15s").Duration()
	)
	logConfig := &promslog.Config{}
	promslogflag.AddFlags(app, logConfig)
	var textfileSet bool
	textfileFlag.IsSetByUser(&textfileSet) // before Parse, which sets it

	if _, err := app.Parse(args); err != nil {
		return usageError(stderr, err)
	}
	config, err := collectorConfig(*ports, *states, *limit, *topClients)
	if err != nil {
		return usageError(stderr, err)
	}
	if *commandTimeout <= 0 || *interval <= 0 || *pushTimeout <= 0 {
		return usageError(stderr, errors.New("--command.timeout, --push.timeout and --interval must be positive"))
	}
	*webFlags.WebListenAddresses = slices.DeleteFunc(*webFlags.WebListenAddresses, func(a string) bool { return a == "" })
	serveWeb := len(*webFlags.WebListenAddresses) > 0 || *webFlags.WebSystemdSocket
	if *once && serveWeb {
		return usageError(stderr, errors.New("--once cannot serve --web.listen-address: a server runs until stopped"))
	}
	logger := promslog.New(logConfig)

	// Outputs: each takes the metrics of one collection.
	var outputs []*output
	if textfileSet || (*pushURL == "" && !serveWeb) {
		dir := *textfileDir
		outputs = append(outputs, &output{name: "textfile " + dir, write: func(g prometheus.Gatherer) error { return textfile.Write(dir, g) }})
	}
	if *pushURL != "" {
		instance := *pushInst
		if instance == "" {
			if instance, err = os.Hostname(); err != nil {
				return usageError(stderr, fmt.Errorf("no hostname for the push instance (%v): pass --push.instance", err))
			}
		}
		pusher, err := pushgateway.New(*pushURL, *pushJob, instance, *pushTimeout)
		if err != nil {
			return usageError(stderr, err)
		}
		outputs = append(outputs, &output{name: "pushgateway " + pusher.String(), write: pusher.Push})
	}

	cmd, err := commandRunner(*commandLine, config, *commandTimeout)
	if errors.Is(err, errNoTool) {
		logger.Error("cannot count connections", "err", err)
		return exitFailed
	}
	if err != nil {
		return usageError(stderr, err)
	}
	coll := collector.New(config, cmd, logger)
	logger.Info("starting", "version", version.Info(), "command", cmd.String())

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	serverDone := make(chan error, 1)
	if serveWeb {
		server, err := newServer(coll, *metricsPath)
		if err != nil {
			logger.Error("cannot serve", "err", err)
			return exitFailed
		}
		go func() { serverDone <- web.ListenAndServe(server, webFlags, logger) }()
		defer server.Shutdown(context.Background())
	}

	if *once {
		if !collectAndOutput(coll, outputs, logger) {
			return exitFailed
		}
		return exitOK
	}
	var tick <-chan time.Time
	if len(outputs) > 0 {
		ticker := time.NewTicker(*interval)
		defer ticker.Stop()
		tick = ticker.C
		collectAndOutput(coll, outputs, logger)
	}
	for {
		select {
		case <-ctx.Done():
			logger.Info("stopping")
			return exitOK
		case err := <-serverDone:
			logger.Error("web server stopped", "err", err)
			return exitFailed
		case <-tick:
			collectAndOutput(coll, outputs, logger)
		}
	}
}

// output is one place a collection's metrics go. It remembers its last
// error so that a long-running exporter logs each change of state once, not
// the same refusal every interval.
type output struct {
	name    string
	write   func(prometheus.Gatherer) error
	lastErr string
}

// collectAndOutput collects once and hands the result to every output, a
// failed result included (it says success 0 and has no count). It says
// whether the collection and every output worked, and logs why not.
func collectAndOutput(coll *collector.Collector, outputs []*output, logger *slog.Logger) bool {
	// Not the signal context: a collection under way finishes and is
	// written on SIGTERM; the command timeout bounds how long that takes.
	res := coll.Collect(context.Background())
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(res)
	ok := res.Err == nil
	if !ok {
		logger.Error("collection failed", "err", res.Err)
	}
	for _, out := range outputs {
		err := out.write(reg)
		switch {
		case err != nil && err.Error() != out.lastErr:
			logger.Error("output failed", "output", out.name, "err", err)
		case err == nil && out.lastErr != "":
			logger.Info("output works again", "output", out.name)
		}
		out.lastErr = ""
		if err != nil {
			out.lastErr = err.Error()
			ok = false
		}
	}
	logger.Debug("collected", "ok", ok, "duration", res.Duration)
	return ok
}

func newServer(coll *collector.Collector, metricsPath string) (*http.Server, error) {
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

var errNoTool = errors.New("no socket table tool")

func commandRunner(commandLine string, config collector.Config, timeout time.Duration) (*runner.Runner, error) {
	if commandLine != "" {
		r, err := runner.Parse(commandLine, timeout)
		if err != nil {
			return nil, fmt.Errorf("--command: %w", err)
		}
		return r, nil
	}
	stateNames := make([]string, len(config.States))
	for i, s := range config.States {
		stateNames[i] = s.String()
	}
	r, err := runner.Default(config.Ports, stateNames, timeout)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errNoTool, err)
	}
	return r, nil
}

func collectorConfig(ports []string, states string, limit, topClients int) (collector.Config, error) {
	config := collector.Config{Limit: limit, TopClients: topClients}
	for _, word := range ports {
		n, err := strconv.ParseUint(word, 10, 16)
		if err != nil || n == 0 {
			return config, fmt.Errorf("--port %s: not a TCP port (1-65535)", word)
		}
		if p := uint16(n); !slices.Contains(config.Ports, p) {
			config.Ports = append(config.Ports, p)
		}
	}
	for _, word := range strings.Split(states, ",") {
		s, ok := parser.ParseState(strings.TrimSpace(word))
		if !ok {
			return config, fmt.Errorf("--states: unknown TCP state %q (use ss names, e.g. established,close-wait)", word)
		}
		// A listening socket is no connection, and Consul has let go of a
		// TIME-WAIT one: neither holds a per-client slot.
		if s == parser.StateListen || s == parser.StateTimeWait || s == parser.StateClose {
			return config, fmt.Errorf("--states: %s sockets never count toward Consul's limit", s)
		}
		if !slices.Contains(config.States, s) {
			config.States = append(config.States, s)
		}
	}
	if limit <= 0 {
		return config, errors.New("--limit must be positive (Consul's http_max_conns_per_client)")
	}
	if topClients < 0 {
		return config, errors.New("--clients.top must be 0 or more")
	}
	return config, nil
}

func usageError(stderr io.Writer, err error) int {
	fmt.Fprintf(stderr, "%s: error: %v; try --help\n", name, err)
	return exitBadUsage
}
