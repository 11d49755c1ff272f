// Command consul_conn_exporter counts the connections Consul holds open, per
// client IP and in total, against Consul's per-client limits, from ss (or
// netstat), and hands them to Prometheus: in node_exporter's textfile
// collector directory, to a Pushgateway, or on its own /metrics.
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

	"github.com/consul-conn-exporter/consul-conn-exporter/check"
	"github.com/consul-conn-exporter/consul-conn-exporter/collector"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/changes"
	"github.com/consul-conn-exporter/consul-conn-exporter/limits"
	"github.com/consul-conn-exporter/consul-conn-exporter/pushgateway"
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
	fillVersion()
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	app := kingpin.New(name, "Counts the connections Consul holds open, per client IP and in total, against its per-client limits, and hands them to Prometheus.")
	app.UsageWriter(stderr).ErrorWriter(stderr)
	app.Version(version.Print(name))
	app.HelpFlag.Short('h')
	app.Command("run", "Collect every --interval (or --once) for the textfile, a Pushgateway or /metrics (the default).").Default()
	checkCmd := app.Command("check", "Collect once and print a verdict on the busiest client against its limit; exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (Nagios, Consul script checks).")
	checkFlags := check.AddFlags(checkCmd)
	countFlags := collector.AddFlags(app)
	limitFlags := limits.AddFlags(app)
	textfileFlags := textfile.AddFlags(app)
	pushFlags := pushgateway.AddFlags(app, name)
	webFlags := kingpinflag.AddFlags(app, "")
	metricsPath := app.Flag("web.telemetry-path", "Path under which to expose metrics.").Default("/metrics").String()
	once := app.Flag("once", "Collect, write or push once, then exit: 0 on success, 1 on failure.").Bool()
	interval := app.Flag("interval", "Time between collections for the textfile and the Pushgateway.").Default("15s").Duration()
	logConfig := &promslog.Config{}
	promslogflag.AddFlags(app, logConfig)

	// A usage error is exit 2, but 3 (UNKNOWN) for check, so that a typo
	// in a health check is never read as CRITICAL.
	usageError := func(err error) int { return usage(stderr, err, exitBadUsage) }
	if ctx, _ := app.ParseContext(args); ctx != nil && ctx.SelectedCommand == checkCmd {
		usageError = func(err error) int { return usage(stderr, err, int(check.Unknown)) }
	}
	command, err := app.Parse(args)
	if err != nil {
		return usageError(err)
	}
	isCheck := command == checkCmd.FullCommand()
	if err := checkFlags.Validate(); isCheck && err != nil {
		return usageError(err)
	}
	config, err := countFlags.Config()
	if err != nil {
		return usageError(err)
	}
	if *interval <= 0 {
		return usageError(errors.New("--interval must be positive"))
	}
	*webFlags.WebListenAddresses = slices.DeleteFunc(*webFlags.WebListenAddresses, func(a string) bool { return a == "" })
	serveWeb := len(*webFlags.WebListenAddresses) > 0 || *webFlags.WebSystemdSocket
	if *once && serveWeb {
		return usageError(errors.New("--once cannot serve --web.listen-address: a server runs until stopped"))
	}
	logger := promslog.New(logConfig)
	if isCheck {
		// Consul shows a check's stdout and stderr as one: the report
		// says everything, logs would only come before it.
		logger = slog.New(slog.DiscardHandler)
	}
	lim, err := limitFlags.Source(config.GroupPorts(collector.HTTP), config.GroupPorts(collector.RPC), logger)
	if err != nil {
		return usageError(err)
	}

	// Outputs: each takes the metrics of one collection.
	var outputs []*output
	if textfileFlags.Set || (!serveWeb && !pushFlags.Enabled()) {
		dir := textfileFlags.Dir
		outputs = append(outputs, &output{name: "textfile " + dir, write: func(g prometheus.Gatherer) error { return textfile.Write(dir, g) }})
	}
	pusher, err := pushFlags.Pusher(logger)
	if err != nil {
		return usageError(err)
	}
	if pusher != nil {
		outputs = append(outputs, &output{name: "pushgateway " + pusher.String(), write: pusher.Push})
	}

	source, err := countFlags.Source(config, logger)
	if errors.Is(err, collector.ErrNoTool) && isCheck {
		// No way to count is a failed collection: check's own verdict.
		return int(checkFlags.Print(stdout, collector.Result{Err: err}))
	}
	if errors.Is(err, collector.ErrNoTool) {
		logger.Error("cannot count connections", "err", err)
		return exitFailed
	}
	if err != nil {
		return usageError(err)
	}
	// One core is enough: a collection is one pipeline from the table to a
	// count, and a second busy thread would only take CPU from ss, which
	// the collection waits on, and from Consul. One exception, measured: a
	// scrape of /metrics with the built-in reader, whose other collectors
	// then run beside its walk of the kernel's table instead of after it.
	if _, command := source.(*collector.Command); (command || !serveWeb) && os.Getenv("GOMAXPROCS") == "" {
		runtime.GOMAXPROCS(1)
	}
	coll := collector.New(config, source, lim, logger)
	coll.ReadLimitsAfterCount = *once || isCheck
	if isCheck {
		return int(checkFlags.Print(stdout, coll.Collect(context.Background())))
	}
	logger.Info("starting", "version", version.Info(), "source", source.String())

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if !*once {
		go lim.Run(ctx)
	}
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
	name  string
	write func(prometheus.Gatherer) error
	state changes.Tracker
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
	// The limits source logs its own failures, once per change.
	ok = ok && (!res.Limits.Auto || res.Limits.ReadOK)
	for _, out := range outputs {
		err := out.write(reg)
		state := ""
		if err != nil {
			state, ok = err.Error(), false
		}
		switch {
		case !out.state.Changed(state):
		case err != nil:
			logger.Error("output failed", "output", out.name, "err", err)
		default:
			logger.Info("output works again", "output", out.name)
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

func usage(stderr io.Writer, err error, exit int) int {
	fmt.Fprintf(stderr, "%s: error: %v; try --help\n", name, err)
	return exit
}
