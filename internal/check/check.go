// Package check turns one collection into a verdict on how close the
// busiest client is to Consul's limit, for a person on the host or for a
// Consul script check (Nagios plugin exit codes: 0 OK, 1 WARNING,
// 2 CRITICAL, 3 UNKNOWN), as a table or as JSON.
package check

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"

	"github.com/alecthomas/kingpin/v2"

	"github.com/consul-conn-exporter/consul-conn-exporter/internal/collector"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/table/socket"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/tally"
)

// Status is a verdict, ordered from best to worst; its value is the exit
// code.
type Status int

// The statuses, as Nagios plugins and Consul script checks read them.
const (
	OK Status = iota
	Warning
	Critical
	Unknown
)

func (s Status) String() string {
	return [...]string{"OK", "WARNING", "CRITICAL", "UNKNOWN"}[s]
}

// MarshalText writes the status by name in JSON.
func (s Status) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// UnmarshalText reads a status by name, for scripts reading the JSON.
func (s *Status) UnmarshalText(text []byte) error {
	for status := OK; status <= Unknown; status++ {
		if status.String() == string(text) {
			*s = status
			return nil
		}
	}
	return fmt.Errorf("unknown status %q", text)
}

// Flags are the thresholds and the format.
type Flags struct {
	warning, critical float64
	format            string
}

// AddFlags declares the check's flags on its command.
func AddFlags(cmd *kingpin.CmdClause) *Flags {
	f := &Flags{}
	cmd.Flag("warning", "WARNING (exit 1) when a client holds this share of its group's limit.").Default("0.8").Float64Var(&f.warning)
	cmd.Flag("critical", "CRITICAL (exit 2) when a client holds this share of its group's limit.").Default("1.0").Float64Var(&f.critical)
	cmd.Flag("format", "text (a table per limiter group, then the verdict) or json.").Default("text").EnumVar(&f.format, "text", "json")
	return f
}

// Validate says what is wrong with the thresholds, before any collection.
func (f *Flags) Validate() error {
	switch {
	case math.IsNaN(f.warning) || math.IsNaN(f.critical) || math.IsInf(f.warning, 0) || math.IsInf(f.critical, 0):
		return errors.New("--warning and --critical must be numbers (shares of the limit, e.g. 0.8 and 1.0)")
	case f.warning < 0 || f.critical <= 0:
		return errors.New("--warning must be 0 or more and --critical more than 0 (shares of the limit, e.g. 0.8 and 1.0)")
	case f.warning > f.critical:
		return fmt.Errorf("--warning %g is above --critical %g", f.warning, f.critical)
	}
	return nil
}

// JSON is the JSON format asked for.
func (f *Flags) JSON() bool { return f.format == "json" }

// Report is the verdict and what it is drawn from.
type Report struct {
	Status Status `json:"status"`
	// Reason is the verdict's one line: the worst client, its group and
	// limit, or why there is no verdict.
	Reason string       `json:"reason"`
	Groups []Group      `json:"groups,omitempty"`
	Notes  []string     `json:"notes,omitempty"`
	Error  string       `json:"error,omitempty"`
	worst  *worstClient // nil when no client holds a connection
	states []string     // the watched states, in the order given
}

// Group is one limiter group's counts.
type Group struct {
	Name         string   `json:"name"`               // http, rpc or grpc
	Title        string   `json:"title"`              // its words: "HTTP", "gRPC port 8502"
	LimitName    string   `json:"limit_name"`         // Consul's setting
	Limit        int      `json:"limit"`              // 0 when none, or not known
	NoLimit      bool     `json:"no_limit,omitempty"` // Consul's 0: no per-client limit
	MaxPerClient int      `json:"max_per_client"`
	Ports        []Port   `json:"ports"`
	Clients      []Client `json:"clients"`
	// Processes are the programs on this host holding its connections, the
	// busiest first, where known.
	Processes []Process `json:"processes,omitempty"`
	// WhatIf are the limits not set yet (--whatif.limit), and whom each
	// would refuse.
	WhatIf []WhatIf `json:"whatif,omitempty"`
}

// at is where the group's limit applies, in a line naming the limit:
// "grpc_max_conns_per_client 5 on gRPC port 8502", "http_max_conns_per_client 5".
func (g Group) at(limit int) string {
	if g.Title == strings.ToUpper(g.Name) {
		return fmt.Sprintf("%s %d", g.LimitName, limit)
	}
	return fmt.Sprintf("%s %d on %s", g.LimitName, limit, g.Title)
}

// WhatIf is what a limit not set yet would refuse: as of this one
// collection, each client's connections past it.
type WhatIf struct {
	Limit   int            `json:"limit"`
	Refused int            `json:"refused"`
	Clients []WhatIfClient `json:"clients"`
}

// WhatIfClient is one client a limit not set yet would refuse.
type WhatIfClient struct {
	Client  string `json:"client"`
	Refused int    `json:"refused"`
}

// Port is one port's open connections, by state.
type Port struct {
	Port    uint16         `json:"port"`
	Open    int            `json:"open"`
	ByState map[string]int `json:"states"`
}

// Client is one of the busiest clients of a group.
type Client struct {
	Client      string `json:"client"`
	Connections int    `json:"connections"`
	// Share is of the group's limit, 0 when the limit is not known.
	Share float64 `json:"share"`
	// Processes are the programs on this host holding its connections,
	// where known.
	Processes []Process `json:"processes,omitempty"`
	// Uses are its connections by what each does with its slot, where
	// the source tells it (socket.Use's labels; unknown for the rest).
	Uses map[string]int `json:"uses,omitempty"`
}

// Process is a program on this host and the connections it holds.
type Process struct {
	Process     string `json:"process"`
	Connections int    `json:"connections"`
}

type worstClient struct {
	group  *Group
	client Client
}

// Evaluate draws the verdict from res.
func (f *Flags) Evaluate(res collector.Result) Report {
	var r Report
	if res.Err != nil {
		r.Error = res.Err.Error()
		r.Status, r.Reason = Unknown, "cannot count the connections: "+res.Err.Error()
		return r
	}
	for _, state := range res.States {
		r.states = append(r.states, state.Label())
	}
	for i, g := range res.Groups {
		group := Group{Name: g.Name, LimitName: g.Setting, Limit: g.Limit, MaxPerClient: g.Counts.MaxPerClient(), Clients: []Client{}, Title: g.Title()}
		group.NoLimit = g.Limit == 0 && res.Limits.Err() == nil
		for _, port := range g.Counts.Ports() {
			p := Port{Port: port, Open: g.Counts.Total(port), ByState: map[string]int{}}
			for _, state := range g.Counts.States() {
				p.ByState[state.Label()] = g.Counts.ByState(port, state)
			}
			group.Ports = append(group.Ports, p)
		}
		for _, c := range g.Counts.TopClients(max(res.TopClients, 1)) {
			client := Client{Client: c.Client.String(), Connections: c.Count, Share: share(c.Count, group.Limit)}
			for _, u := range socket.Uses {
				// Unknown only beside a use told: a source that tells
				// none says nothing of it.
				if n := g.Counts.ClientByUse(c.Client, u); n > 0 && (u != socket.UseUnknown || n < c.Count) {
					if client.Uses == nil {
						client.Uses = map[string]int{}
					}
					client.Uses[u.Label()] = n
				}
			}
			if res.ProcessesKnown {
				for _, h := range g.Processes {
					if h.Client == c.Client {
						client.Processes = append(client.Processes, Process{h.Process, h.Count})
					}
				}
			}
			group.Clients = append(group.Clients, client)
		}
		if i < len(res.WhatIf) {
			for _, l := range res.WhatIf[i] {
				w := WhatIf{Limit: l.Limit, Refused: int(l.Refused), Clients: []WhatIfClient{}}
				for _, c := range l.Clients {
					w.Clients = append(w.Clients, WhatIfClient{c.Client.String(), c.Count})
				}
				group.WhatIf = append(group.WhatIf, w)
			}
		}
		if res.ProcessesKnown {
			for _, p := range tally.ByProcess(g.Processes, max(res.TopClients, 1)) {
				group.Processes = append(group.Processes, Process{p.Process, p.Count})
			}
		}
		r.Groups = append(r.Groups, group)
	}
	if !res.ProcessesKnown && res.Has("processes") {
		r.Notes = append(r.Notes, "the programs holding the connections cannot be named: "+res.ProcessesWhy)
	}
	r.Notes = append(r.Notes, res.Limits.Notes...)
	if res.Listeners != nil && res.Listeners.SharedReason() != "" {
		r.Notes = append(r.Notes, res.Listeners.SharedReason())
	}
	if res.ListenersErr != nil {
		r.Notes = append(r.Notes, "cannot tell who listens on the watched ports: "+res.ListenersErr.Error())
	}
	for _, p := range res.Parts {
		// The source's failure is the verdict; the listeners', the
		// limits' and the processes' have their own words above.
		if p.Err != nil && (p.Name == "events" || p.Name == "refusals" || p.Name == "peaks") {
			r.Notes = append(r.Notes, fmt.Sprintf("%s failed: %v", p.Name, p.Err))
		}
	}
	f.judge(&r, res)
	return r
}

// severity orders the verdicts: the worst one wins, CRITICAL over WARNING
// over UNKNOWN over OK.
var severity = map[Status]int{OK: 0, Unknown: 1, Warning: 2, Critical: 3}

// judge sets the status: the worst of the busiest client's verdict (of the
// groups whose limit is known) and of what cannot be judged (a limit not
// read, a watched port nothing listens on). What the verdict does not say
// goes in the notes, so that one output tells it all.
func (f *Flags) judge(r *Report, res collector.Result) {
	lim := res.Limits
	if lim.Auto && !lim.ReadOK && lim.TooManyConnections {
		// The read of the limit was itself refused: this host's address
		// is at the agent's HTTP limit, the very thing to warn of.
		r.Status, r.Reason = Critical, "the Consul agent answered 429 Too Many Requests to this host: its address holds every connection http_max_conns_per_client allows"
		return
	}
	status, reason := f.clientsVerdict(r)
	var unknown []string
	if err := lim.Err(); err != nil {
		unknown = append(unknown, err.Error())
	}
	if res.Listeners != nil && res.Listeners.QuietReason() != "" {
		unknown = append(unknown, res.Listeners.QuietReason())
	}
	if whatIf := whatIfVerdict(r); whatIf != "" {
		// What a limit not set yet would do is a WARNING: worse than OK,
		// never worse than the limit that is set.
		if severity[status] < severity[Warning] {
			r.Notes = append(r.Notes, reason)
			status, reason = Warning, whatIf
		} else {
			r.Notes = append(r.Notes, whatIf)
		}
	}
	switch {
	case len(unknown) == 0:
		r.Status, r.Reason = status, reason
	case severity[status] > severity[Unknown]:
		r.Status, r.Reason = status, reason
		r.Notes = append(r.Notes, unknown...)
	default:
		r.Status, r.Reason = Unknown, strings.Join(unknown, "; ")
		r.Notes = append(r.Notes, reason)
	}
}

// whatIfVerdict says whom the limits not set yet would refuse, each group's
// and limit's in turn: "at http_max_conns_per_client 5, 127.0.0.10 would
// be refused 4 connections, 127.0.0.11 1"; "" where none would refuse any.
func whatIfVerdict(r *Report) string {
	var lines []string
	for _, g := range r.Groups {
		for _, w := range g.WhatIf {
			if w.Refused == 0 {
				continue
			}
			line := fmt.Sprintf("at %s, %d %s connections would be refused", g.at(w.Limit), w.Refused, g.Title)
			for i, c := range w.Clients {
				if i == 0 {
					line = fmt.Sprintf("at %s, %s would be refused %d connections", g.at(w.Limit), c.Client, c.Refused)
				} else {
					line += fmt.Sprintf(", %s %d", c.Client, c.Refused)
				}
			}
			lines = append(lines, line)
		}
	}
	return strings.Join(lines, "; ")
}

// clientsVerdict is the verdict on the busiest client of any group whose
// limit is known.
func (f *Flags) clientsVerdict(r *Report) (Status, string) {
	for i := range r.Groups {
		g := &r.Groups[i]
		if len(g.Clients) == 0 || g.Limit == 0 {
			continue
		}
		if r.worst == nil || g.Clients[0].Share > r.worst.client.Share {
			r.worst = &worstClient{group: g, client: g.Clients[0]}
		}
	}
	if r.worst == nil {
		held, unknown := false, false
		for _, g := range r.Groups {
			held = held || len(g.Clients) > 0
			unknown = unknown || len(g.Clients) > 0 && !g.NoLimit
		}
		switch {
		case unknown:
			return OK, "the per-client limit of the connections held is unknown: none judged"
		case held:
			return OK, "no per-client limit applies to the connections held"
		}
		return OK, "no client holds a connection"
	}
	w := r.worst
	status := OK
	if w.client.Share >= f.critical {
		status = Critical
	} else if w.client.Share >= f.warning {
		status = Warning
	}
	reason := fmt.Sprintf("%s holds %d of the %d %s connections %s allows (%s)",
		w.client.Client, w.client.Connections, w.group.Limit, w.group.Title, w.group.LimitName, percent(w.client.Share))
	if use, n := biggestUse(w.client.Uses); n > 0 {
		reason += fmt.Sprintf(", %d %s", n, useWords[use])
	}
	if programs := processList(w.client.Processes); programs != "" {
		reason += ": " + programs
	}
	return status, reason
}

// useWords say what a use means for the slots a client holds.
var useWords = map[string]string{
	socket.UseWaiting.Label():    "waiting on the agent",
	socket.UseIdle.Label():       "idle in the client's pool",
	socket.UseSilent.Label():     "silent (nothing sent yet)",
	socket.UseHalfClosed.Label(): "half-closed by the client",
}

// biggestUse is the use, told by the source, of most of uses' connections
// (the first in socket.Uses' order on a tie), 0 where none is told.
func biggestUse(uses map[string]int) (string, int) {
	best, most := "", 0
	for _, u := range socket.Uses {
		if n := uses[u.Label()]; u != socket.UseUnknown && n > most {
			best, most = u.Label(), n
		}
	}
	return best, most
}

func share(n, limit int) float64 {
	if limit == 0 {
		return 0
	}
	return float64(n) / float64(limit)
}

// percent is share as a whole percentage rounded down, so that the text
// never shows a share the verdict did not reach (199 of 200 is 99%, not
// the 100% of CRITICAL).
func percent(share float64) string {
	return fmt.Sprintf("%d%%", int(math.Floor(100*share+1e-9)))
}

// processList is "nomad 150, consul-template 40".
func processList(processes []Process) string {
	words := make([]string, len(processes))
	for i, p := range processes {
		words[i] = fmt.Sprintf("%s %d", p.Process, p.Connections)
	}
	return strings.Join(words, ", ")
}

// verdictFlags are the exporter's flags that change check's verdict: check
// --help lists them beside its own, and --help-long every flag.
var verdictFlags = []string{"help", "port", "rpc.port", "grpc.port", "limit", "rpc.limit", "grpc.limit", "whatif.limit", "source", "command",
	"clients.processes", "consul.server", "consul.user"}

// HelpFlags are the flags a usage of cmd lists: for check its own and the
// ones that change its verdict, so that its help fits a screen; for the rest,
// every flag.
func HelpFlags(cmd *kingpin.CmdModel, flags []*kingpin.FlagModel) []*kingpin.FlagModel {
	if cmd == nil || cmd.Name != "check" {
		return flags
	}
	var shown []*kingpin.FlagModel
	for _, f := range flags {
		if slices.Contains(verdictFlags, f.Name) || slices.ContainsFunc(cmd.Flags, func(own *kingpin.FlagModel) bool { return own.Name == f.Name }) {
			shown = append(shown, f)
		}
	}
	return shown
}
