// Command consul_conn_exporter counts the connections Consul holds open, per
// client IP and in total, against Consul's per-client limits, from ss (or
// netstat, or the kernel's socket table), and hands them to Prometheus: in
// node_exporter's textfile collector directory, to a Pushgateway, or on its
// own /metrics.
//
// The flow, one way: flags (flags.go) -> a checked config -> the start-up
// (start.go: the listeners judged, the kernel programs loaded, the process
// confined, the collector built once) -> collections (counts per limiter
// group, beside the limits) -> a view: check's report, or the metrics,
// delivered by the outputs and the web server.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"syscall"

	"github.com/prometheus/common/version"

	"github.com/consul-conn-exporter/consul-conn-exporter/internal/check"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/delivery"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/textfile"
)

// Exit codes, for cron and systemd; check's are its verdicts.
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
	cfg, checking, err := parse(args, stderr)
	if err != nil {
		// A typo in a health check is UNKNOWN, never read as CRITICAL.
		exit := exitBadUsage
		if checking {
			exit = int(check.Unknown)
		}
		fmt.Fprintf(stderr, "%s: error: %v; try --help\n", name, err)
		return exit
	}
	runtime.GOMAXPROCS(cfg.gomaxprocs)
	ex, err := start(cfg)
	if err != nil {
		fmt.Fprintf(stderr, "%s: error: %v\n", name, err)
		if cfg.check != nil {
			return int(check.Unknown)
		}
		return exitBadUsage
	}
	if cfg.check != nil {
		return int(cfg.check.Print(stdout, ex.collector.Collect(context.Background())))
	}
	logger := cfg.logger
	if ex.noTool != nil {
		logger.Error("cannot count connections", "err", ex.noTool)
		return exitFailed
	}
	logger.Info("starting", "version", version.Info(), "source", ex.collector.String())
	if cfg.agentAddr == nil {
		logger.Info("the listeners on the watched ports are not read with --command (its table may be another namespace's): a port nothing listens on is not said, and every connection on them counts")
	}
	if cfg.textfile != "" {
		// What an exporter killed mid-write left; a refused directory is
		// said by the first write.
		if n, _ := textfile.RemoveLeftovers(cfg.textfile); n > 0 {
			logger.Info("removed temporary files an earlier run left", "dir", cfg.textfile, "files", n)
		}
	}
	if cfg.once {
		if !delivery.Once(ex.collector, cfg.outputs, logger) {
			return exitFailed
		}
		return exitOK
	}

	// SIGHUP too: a hangup must not cut a write short.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer stop()
	go ex.limits.Run(ctx)
	go ex.collector.SampleEvery(ctx)
	if ex.audit != nil {
		go ex.audit(ctx)
	}
	var serve func(context.Context) error
	if cfg.serveWeb {
		serve = func(ctx context.Context) error { return delivery.Serve(ctx, ex.collector, cfg.web, logger) }
	}
	if err := delivery.Run(ctx, cfg.interval, ex.collector, cfg.outputs, serve, logger); err != nil {
		logger.Error("web server stopped", "err", err)
		return exitFailed
	}
	logger.Info("stopped")
	return exitOK
}
