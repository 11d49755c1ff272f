// Command consul_conn_exporter counts the connections Consul holds open, per
// client IP and in total, against Consul's per-client limits, from ss (or
// netstat, or the kernel's socket table), and hands them to Prometheus: in
// node_exporter's textfile collector directory, to a Pushgateway, or on its
// own /metrics.
//
// The flow: flags -> source (where sockets come from) -> collector (counts
// per limiter group, beside the limits) -> a view: check's report, or the
// metrics, delivered by the outputs and the web server.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"text/template"
	"time"

	"github.com/alecthomas/kingpin/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/promslog"
	promslogflag "github.com/prometheus/common/promslog/flag"
	"github.com/prometheus/common/version"
	"kernel.org/pub/linux/libs/security/libcap/cap"

	"github.com/consul-conn-exporter/consul-conn-exporter/check"
	"github.com/consul-conn-exporter/consul-conn-exporter/collector"
	"github.com/consul-conn-exporter/consul-conn-exporter/delivery"
	"github.com/consul-conn-exporter/consul-conn-exporter/events"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/wholenumber"
	"github.com/consul-conn-exporter/consul-conn-exporter/limits"
	"github.com/consul-conn-exporter/consul-conn-exporter/listeners"
	"github.com/consul-conn-exporter/consul-conn-exporter/pushgateway"
	"github.com/consul-conn-exporter/consul-conn-exporter/refusals"
	"github.com/consul-conn-exporter/consul-conn-exporter/source"
	"github.com/consul-conn-exporter/consul-conn-exporter/textfile"
)

const name = "consul_conn_exporter"

// minInterval is the shortest --interval: below it the exporter would only
// spin.
const minInterval = 100 * time.Millisecond

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
	s, checking, err := parse(args, stderr)
	if err != nil {
		// A typo in a health check is UNKNOWN, never read as CRITICAL.
		exit := exitBadUsage
		if checking {
			exit = int(check.Unknown)
		}
		fmt.Fprintf(stderr, "%s: error: %v; try --help\n", name, err)
		return exit
	}
	runtime.GOMAXPROCS(s.gomaxprocs)
	if err := start(s); err != nil {
		fmt.Fprintf(stderr, "%s: error: %v\n", name, err)
		if s.check != nil {
			return int(check.Unknown)
		}
		return exitBadUsage
	}
	if s.check != nil {
		return int(s.check.Print(stdout, s.collector.Collect(context.Background())))
	}
	if s.noTool != nil {
		s.logger.Error("cannot count connections", "err", s.noTool)
		return exitFailed
	}
	s.logger.Info("starting", "version", version.Info(), "source", s.source)
	if s.listenersUnread {
		s.logger.Info("the listeners on the watched ports are not read with --command (its table may be another namespace's): a port nothing listens on is not said, and every connection on them counts")
	}
	if s.textfile != "" {
		// What an exporter killed mid-write left; a refused directory is
		// said by the first write.
		if n, _ := textfile.RemoveLeftovers(s.textfile); n > 0 {
			s.logger.Info("removed temporary files an earlier run left", "dir", s.textfile, "files", n)
		}
	}
	if s.once {
		if !delivery.Once(s.collector, s.outputs, s.logger) {
			return exitFailed
		}
		return exitOK
	}

	// SIGHUP too: a hangup must not cut a write short.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer stop()
	// The listeners judged before the first read of the limits, that it
	// goes to the agent's listener, never to what else answers at its name.
	s.collector.Agent(ctx)
	go s.limits.Run(ctx)
	go s.collector.SampleEvery(ctx)
	if s.audit != nil {
		go s.audit(ctx)
	}
	var serve func(context.Context) error
	if s.serveWeb {
		serve = func(ctx context.Context) error { return delivery.Serve(ctx, s.collector, name, s.web, s.logger) }
	}
	if err := delivery.Run(ctx, s.interval, s.collector, s.outputs, serve, s.logger); err != nil {
		s.logger.Error("web server stopped", "err", err)
		return exitFailed
	}
	s.logger.Info("stopped")
	return exitOK
}

// setup is the command line, parsed and checked once, as the parts it
// names.
type setup struct {
	check      *check.Flags // nil unless the check command was given
	collector  *collector.Collector
	source     string
	noTool     error // no tool can print the table: only check reports on
	limits     *limits.Source
	outputs    []*delivery.Output
	textfile   string // the textfile output's directory, "" for none
	once       bool
	interval   time.Duration
	serveWeb   bool
	web        *delivery.WebFlags
	gomaxprocs int
	logger     *slog.Logger

	// For the start-up step.
	config      collector.Config
	refusals    bool          // --refusals: load the counter
	events      *events.Flags // with --source events: load the programs
	audit       func(context.Context)
	commandCaps []cap.Value // kept for --command
	// listenersUnread: a --command's table may be another namespace's.
	listenersUnread bool
}

// parse reads the command line; checking says whether it chose the check
// command, a usage error included.
func parse(args []string, stderr io.Writer) (s *setup, checking bool, err error) {
	app := kingpin.New(name, "Counts the connections Consul holds open, per client IP and in total, against its per-client limits, and hands them to Prometheus.")
	app.UsageWriter(stderr).ErrorWriter(stderr)
	s, err = parseWith(app, args)
	if err != nil {
		return nil, checkChosen(app, args), err
	}
	return s, s.check != nil, nil
}

// checkChosen says whether args choose the check command as the parser
// reads them: the command's word where a command stands, not a flag's
// value, past a flag the parser did not know.
func checkChosen(app *kingpin.Application, args []string) bool {
	if ctx, _ := app.ParseContext(args); ctx != nil && ctx.SelectedCommand != nil && ctx.SelectedCommand.FullCommand() == "check" {
		return true
	}
	takesValue, known := map[string]bool{}, map[string]bool{}
	flags := app.Model().Flags
	for _, cmd := range app.Model().Commands {
		flags = append(flags, cmd.Flags...)
	}
	for _, f := range flags {
		known["--"+f.Name], known["--no-"+f.Name] = true, true
		if !f.IsBoolFlag() {
			takesValue["--"+f.Name] = true
			if f.Short != 0 {
				takesValue["-"+string(f.Short)] = true
			}
		}
	}
	for i := 0; i < len(args); i++ {
		switch arg := args[i]; {
		case arg == "check":
			return true
		case takesValue[arg]:
			i++ // its value: --textfile.directory check names a directory
		case strings.HasPrefix(arg, "--") && !strings.Contains(arg, "=") && !known[arg] &&
			i+1 < len(args) && args[i+1] != "check" && !strings.HasPrefix(args[i+1], "-"):
			i++ // a flag the parser does not know (a typo), and what may be its value
		case !strings.HasPrefix(arg, "-") || arg == "--":
			return false // another command, or an argument
		}
	}
	return false
}

func parseWith(app *kingpin.Application, args []string) (*setup, error) {
	app.Version(version.Print(name) + "\n  license:          " + license)
	app.HelpFlag.Short('h')
	// check --help fits a screen: its flags and those that change its verdict.
	app.UsageFuncs(template.FuncMap{"HelpFlags": check.HelpFlags})
	app.UsageTemplate(strings.Replace(kingpin.DefaultUsageTemplate, "{{.Context.Flags|FlagsToTwoColumns|FormatTwoColumns}}",
		"{{.Context.Flags|HelpFlags .Context.SelectedCommand|FlagsToTwoColumns|FormatTwoColumns}}", 1))
	app.Command("run", "Collect every --interval (or --once) for the textfile, a Pushgateway or /metrics (the default).").Default()
	checkCmd := app.Command("check", "Collect once and print a verdict on the busiest client against its limit; exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (Nagios, Consul script checks). check --help lists the flags that change the verdict, --help-long every flag.")
	checkFlags := check.AddFlags(checkCmd)
	countFlags := collector.AddFlags(app)
	sourceFlags := source.AddFlags(app)
	limitFlags := limits.AddFlags(app)
	textfileFlags := textfile.AddFlags(app)
	pushFlags := pushgateway.AddFlags(app, name)
	refusalFlags := refusals.AddFlags(app)
	eventFlags := events.AddFlags(app)
	listenerFlags := listeners.AddFlags(app)
	s := &setup{web: delivery.AddWebFlags(app)}
	app.Flag("once", "Collect, write or push once, then exit: 0 on success, 1 on failure.").BoolVar(&s.once)
	app.Flag("interval", "Time between collections for the textfile and the Pushgateway.").Default("15s").DurationVar(&s.interval)
	app.Flag("runtime.gomaxprocs", "The target number of CPUs Go will run on (GOMAXPROCS): one is enough, a collection is one pipeline from the table to a count.").
		Default("1").SetValue(wholenumber.Of(&s.gomaxprocs))
	logConfig := &promslog.Config{}
	promslogflag.AddFlags(app, logConfig)

	command, err := app.Parse(args)
	if err != nil {
		return nil, err
	}
	s.logger = promslog.New(logConfig)
	if command == checkCmd.FullCommand() {
		if err := checkFlags.Validate(); err != nil {
			return nil, err
		}
		// Consul shows a check's stdout and stderr as one: the report
		// says everything, logs would only come before it.
		s.check, s.logger = checkFlags, slog.New(slog.DiscardHandler)
	}
	config, err := countFlags.Config()
	if err != nil {
		return nil, err
	}
	if s.check != nil || s.once {
		config.SampleInterval = 0 // one collection: nothing between collections
	}
	s.serveWeb = s.web.Enabled()
	if err := s.web.Validate(); err != nil {
		return nil, err
	}
	switch {
	case s.interval < minInterval:
		return nil, fmt.Errorf("--interval must be %s or more: each collection runs ss, or reads the kernel's table", minInterval)
	case s.once && s.serveWeb:
		return nil, errors.New("--once cannot serve --web.listen-address: a server runs until stopped")
	case s.gomaxprocs < 1:
		return nil, errors.New("--runtime.gomaxprocs must be 1 or more")
	case refusalFlags.Enabled && (s.once || s.check != nil):
		return nil, errors.New("--refusals counts from the exporter's start: it needs the long-running mode, not --once or check")
	}
	if s.limits, err = limitFlags.Source(config.GroupPorts(collector.HTTP), config.GroupPorts(collector.RPC), s.logger); err != nil {
		return nil, err
	}
	if textfileFlags.Set || (!s.serveWeb && !pushFlags.Enabled()) {
		dir := textfileFlags.Dir
		if dir == "" {
			return nil, errors.New("--textfile.directory must not be empty")
		}
		s.textfile = dir
		s.outputs = append(s.outputs, &delivery.Output{Name: "textfile " + dir, Write: func(g prometheus.Gatherer) error { return textfile.Write(dir, g) }})
	}
	pusher, err := pushFlags.Pusher(s.logger)
	if err != nil {
		return nil, err
	}
	if pusher != nil {
		s.outputs = append(s.outputs, &delivery.Output{Name: "pushgateway " + pusher.String(), Write: pusher.Push})
	}
	src, err := sourceFlags.New(config.Want(), s.logger)
	if errors.Is(err, source.ErrNoTool) {
		s.noTool = err
	} else if err != nil {
		return nil, err
	}
	s.source = src.String()
	s.collector = collector.New(config, src, s.limits.Snapshot, s.logger)
	agentUser, err := listenerFlags.User()
	if err != nil {
		return nil, err
	}
	if sourceFlags.OwnNamespace() {
		agentAddr, err := listeners.ParseAddress(limitFlags.Server(), config.GroupPorts(collector.HTTP))
		if err != nil {
			return nil, err
		}
		ports := config.Ports()
		if !slices.Contains(ports, agentAddr.Port()) {
			ports = append(ports, agentAddr.Port()) // where the agent's own listener is
		}
		timeout := sourceFlags.Timeout()
		s.collector.WatchListeners(func(ctx context.Context) ([]listeners.Listener, error) {
			return listeners.Read(ctx, ports, timeout)
		}, agentAddr, agentUser)
		s.limits.ReadAt(agentAddr.Agent) // where the listeners say the agent is
	} else {
		s.listenersUnread = true
	}
	s.config, s.refusals = config, refusalFlags.Enabled
	if sourceFlags.Events() {
		if err := eventFlags.Validate(config.States); err != nil {
			return nil, err
		}
		s.events = eventFlags
	}
	if s.commandCaps, err = sourceFlags.Capabilities(); err != nil {
		return nil, err
	}
	return s, nil
}
