package main

import (
	"errors"
	"fmt"
	"html/template"
	"io"
	"log/slog"
	"strings"
	"time"

	promslogflag "github.com/prometheus/common/promslog/flag"

	"kernel.org/pub/linux/libs/security/libcap/cap"

	"github.com/alecthomas/kingpin/v2"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/check"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/collector"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/delivery"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/events"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/limits"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/listeners"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/pushgateway"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/refusals"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/table/source"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/textfile"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/wholenumber"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/promslog"
	"github.com/prometheus/common/version"
)

// name is the exporter's, in its messages and metrics.
const name = "consul_conn_exporter"

// minInterval is the shortest --interval: below it the exporter would only
// spin.
const minInterval = 100 * time.Millisecond

// config is the command line, parsed and checked once: every usage error
// is found here, before anything is loaded or run.
type config struct {
	check      *check.Flags // nil unless the check command was given
	outputs    []*delivery.Output
	textfile   string // the textfile output's directory, "" for none
	once       bool
	interval   time.Duration
	serveWeb   bool
	web        *delivery.WebFlags
	gomaxprocs int
	logger     *slog.Logger

	counting collector.Config
	source   *source.Flags
	limits   limits.Config
	// agentAddr and agentUser judge the listeners; agentAddr is nil where
	// they are not read (a --command's table may be another namespace's).
	agentAddr   *listeners.Address
	agentUser   *uint32
	refusals    bool          // --refusals: load the counter
	events      *events.Flags // with --source events: load the programs
	commandCaps []cap.Value   // kept for --command
}

// parse reads the command line; checking says whether it chose the check
// command, a usage error included.
func parse(args []string, stderr io.Writer) (cfg *config, checking bool, err error) {
	app := kingpin.New(name, "Counts the connections Consul holds open, per client IP and in total, against its per-client limits, and hands them to Prometheus.")
	app.UsageWriter(stderr).ErrorWriter(stderr)
	cfg, err = parseWith(app, args)
	if err != nil {
		return nil, checkChosen(app, args), err
	}
	return cfg, cfg.check != nil, nil
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

func parseWith(app *kingpin.Application, args []string) (*config, error) {
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
	cfg := &config{web: delivery.AddWebFlags(app), source: sourceFlags}
	app.Flag("once", "Collect, write or push once, then exit: 0 on success, 1 on failure.").BoolVar(&cfg.once)
	app.Flag("interval", "Time between collections for the textfile and the Pushgateway.").Default("15s").DurationVar(&cfg.interval)
	app.Flag("runtime.gomaxprocs", "The target number of CPUs Go will run on (GOMAXPROCS): one is enough, a collection is one pipeline from the table to a count.").
		Default("1").SetValue(wholenumber.Of(&cfg.gomaxprocs))
	logConfig := &promslog.Config{}
	promslogflag.AddFlags(app, logConfig)

	command, err := app.Parse(args)
	if err != nil {
		return nil, err
	}
	cfg.logger = promslog.New(logConfig)
	if command == checkCmd.FullCommand() {
		if err := checkFlags.Validate(); err != nil {
			return nil, err
		}
		// Consul shows a check's stdout and stderr as one: the report
		// says everything, logs would only come before it.
		cfg.check, cfg.logger = checkFlags, slog.New(slog.DiscardHandler)
	}
	counting, err := countFlags.Config()
	if err != nil {
		return nil, err
	}
	if cfg.check != nil || cfg.once {
		counting.SampleInterval = 0 // one collection: nothing between collections
		counting.Once = true
	}
	cfg.counting = counting
	cfg.serveWeb = cfg.web.Enabled()
	if err := cfg.web.Validate(); err != nil {
		return nil, err
	}
	switch {
	case cfg.interval < minInterval:
		return nil, fmt.Errorf("--interval must be %s or more: each collection runs ss, or reads the kernel's table", minInterval)
	case cfg.once && cfg.serveWeb:
		return nil, errors.New("--once cannot serve --web.listen-address: a server runs until stopped")
	case cfg.gomaxprocs < 1:
		return nil, errors.New("--runtime.gomaxprocs must be 1 or more")
	case refusalFlags.Enabled && (cfg.once || cfg.check != nil):
		return nil, errors.New("--refusals counts from the exporter's start: it needs the long-running mode, not --once or check")
	}
	if cfg.limits, err = limitFlags.Config(counting.GroupPorts(collector.HTTP), counting.GroupPorts(collector.RPC), counting.GroupPorts(collector.GRPC)); err != nil {
		return nil, err
	}
	if textfileFlags.Set || (!cfg.serveWeb && !pushFlags.Enabled()) {
		dir := textfileFlags.Dir
		if dir == "" {
			return nil, errors.New("--textfile.directory must not be empty")
		}
		cfg.textfile = dir
		cfg.outputs = append(cfg.outputs, &delivery.Output{Name: "textfile " + dir, Write: func(g prometheus.Gatherer) error { return textfile.Write(dir, g) }})
	}
	pusher, err := pushFlags.Pusher(cfg.logger)
	if err != nil {
		return nil, err
	}
	if pusher != nil {
		cfg.outputs = append(cfg.outputs, &delivery.Output{Name: "pushgateway " + pusher.String(), Write: pusher.Push})
	}
	if err := sourceFlags.Validate(counting.Want()); err != nil {
		return nil, err
	}
	if cfg.agentUser, err = listenerFlags.User(); err != nil {
		return nil, err
	}
	if sourceFlags.OwnNamespace() {
		if cfg.agentAddr, err = listeners.ParseAddress(limitFlags.Server(), counting.GroupPorts(collector.HTTP)); err != nil {
			return nil, err
		}
	}
	cfg.refusals = refusalFlags.Enabled
	if sourceFlags.Events() {
		if err := eventFlags.Validate(counting.States); err != nil {
			return nil, err
		}
		cfg.events = eventFlags
	}
	if cfg.commandCaps, err = sourceFlags.Capabilities(); err != nil {
		return nil, err
	}
	return cfg, nil
}
