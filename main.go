// Command consul_conn_exporter counts the HTTP connections Consul holds open,
// per client IP and in total, from ss (or netstat), and writes them for
// Prometheus into node_exporter's textfile collector directory.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/alecthomas/kingpin/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/promslog"
	promslogflag "github.com/prometheus/common/promslog/flag"
	"github.com/prometheus/common/version"

	"github.com/consul-conn-exporter/consul-conn-exporter/collector"
	"github.com/consul-conn-exporter/consul-conn-exporter/parser"
	"github.com/consul-conn-exporter/consul-conn-exporter/runner"
	"github.com/consul-conn-exporter/consul-conn-exporter/textfile"
)

const name = "consul_conn_exporter"

// Exit codes, for cron and systemd.
const (
	exitOK       = 0
	exitFailed   = 1 // a collection or a write failed
	exitBadUsage = 2
)

func main() {
	os.Exit(run(os.Args[1:], os.Stderr))
}

func run(args []string, stderr io.Writer) int {
	app := kingpin.New(name, "Counts the HTTP connections Consul holds open, per client IP and in total, and writes them for Prometheus.")
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
		textfileDir = app.Flag("textfile.directory", "node_exporter's --collector.textfile.directory, where "+textfile.FileName+" is written.").
				Default("/tmp/node-exporter").String()
		once     = app.Flag("once", "Collect and write once, then exit: 0 on success, 1 on failure.").Bool()
		interval = app.Flag("interval", "Time between collections when not --once.").Default("15s").Duration()
	)
	logConfig := &promslog.Config{}
	promslogflag.AddFlags(app, logConfig)

	if _, err := app.Parse(args); err != nil {
		return usageError(stderr, err)
	}
	config, err := collectorConfig(*ports, *states, *limit, *topClients)
	if err != nil {
		return usageError(stderr, err)
	}
	if *commandTimeout <= 0 || *interval <= 0 {
		return usageError(stderr, errors.New("--command.timeout and --interval must be positive"))
	}
	logger := promslog.New(logConfig)

	var cmd *runner.Runner
	if *commandLine != "" {
		if cmd, err = runner.Parse(*commandLine, *commandTimeout); err != nil {
			return usageError(stderr, fmt.Errorf("--command: %w", err))
		}
	} else {
		stateNames := make([]string, len(config.States))
		for i, s := range config.States {
			stateNames[i] = s.String()
		}
		if cmd, err = runner.Default(config.Ports, stateNames, *commandTimeout); err != nil {
			logger.Error("cannot count connections", "err", err)
			return exitFailed
		}
	}
	coll := collector.New(config, cmd, logger)

	// collectAndWrite says whether both the collection and the write worked;
	// it logs why not.
	collectAndWrite := func() bool {
		// Not the signal context: a collection under way finishes and is
		// written on SIGTERM; the command timeout bounds how long that takes.
		res := coll.Collect(context.Background())
		reg := prometheus.NewPedanticRegistry()
		reg.MustRegister(res)
		if res.Err != nil {
			logger.Error("collection failed", "err", res.Err)
		}
		if err := textfile.Write(*textfileDir, reg); err != nil {
			logger.Error("cannot write the textfile", "err", err)
			return false
		}
		logger.Debug("collected", "ok", res.Err == nil, "duration", res.Duration)
		return res.Err == nil
	}

	logger.Info("starting", "version", version.Info(), "command", cmd.String(), "textfile.directory", *textfileDir)
	if *once {
		if !collectAndWrite() {
			return exitFailed
		}
		return exitOK
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ticker := time.NewTicker(*interval)
	defer ticker.Stop()
	for {
		collectAndWrite()
		select {
		case <-ctx.Done():
			logger.Info("stopping")
			return exitOK
		case <-ticker.C:
		}
	}
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
