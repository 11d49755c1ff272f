// Package metrics is the Prometheus view of a collection: a
// collector.Result as metrics, for the textfile, a Pushgateway and the
// exporter's own /metrics.
package metrics

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
	versioncollector "github.com/prometheus/client_golang/prometheus/collectors/version"

	"github.com/consul-conn-exporter/consul-conn-exporter/internal/collector"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/events"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/say"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/table/socket"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/tally"
)

// groupDescs are one limiter group's metrics. The metric names are an
// interface: dashboards and alerts depend on them.
type groupDescs struct {
	connections, maxPerClient, perClient, byState, limit, clientsAtLimit *prometheus.Desc
	// What each connection is doing with its slot.
	byUse, perClientByUse, longestByUse *prometheus.Desc
	// The local programs holding the connections (--clients.processes).
	perProcess, perProcessByUse *prometheus.Desc
	// From the samples over the peak window.
	peakPerClient, maxPerClientPeak, atLimit *prometheus.Desc
	// Counted in the kernel (--refusals).
	refused, refusedPerClient, refusalsUntracked, refusedBelowLimit *prometheus.Desc
	// Kept by the kernel's events (--source events).
	opened, openedPerClient, closed, lifetimes, lost, unfollowed *prometheus.Desc
	// Predicted for limits not set yet (--whatif.limit).
	whatIfRefused, whatIfRefusedPerClient *prometheus.Desc
}

// groups are each limiter's metrics.
var groups = func() map[*collector.Limiter]groupDescs {
	m := map[*collector.Limiter]groupDescs{}
	for _, l := range collector.Limiters {
		m[l] = newGroupDescs(l)
	}
	return m
}()

func newGroupDescs(l *collector.Limiter) groupDescs {
	group, what, limitName := l.Name, l.What, l.Setting
	prefix := "consul_open_" + group + "_connections"
	// A limiter with a group per port keys every metric of a group by it;
	// the per-port ones have it already.
	desc := func(name, help string, labels []string) *prometheus.Desc {
		if l.PerPort && !slices.Contains(labels, "port") {
			labels = append([]string{"port"}, labels...)
		}
		return prometheus.NewDesc(name, help, labels, nil)
	}
	return groupDescs{
		connections: desc(prefix,
			"Server-side TCP connections open on the "+what+" port (ESTABLISHED and CLOSE-WAIT by default).",
			[]string{"port"}),
		maxPerClient: desc(prefix+"_max_per_client",
			"Most "+what+" connections any one client IP holds over the group's ports: the number Consul's "+limitName+" applies to.",
			nil),
		perClient: desc(prefix+"_per_client",
			what+" connections one client IP holds over the group's ports, for the clients holding the most.",
			[]string{"client"}),
		byState: desc(prefix+"_by_state",
			"Server-side TCP connections open on the "+what+" port, by TCP state.",
			[]string{"port", "state"}),
		byUse: desc(prefix+"_by_use",
			what+" connections by what each does with its slot: waiting (a request in, not answered), idle (answered last: kept in the client's pool), silent (nothing received yet), half_closed (the client shut its side), unknown (not told by the source, or both last in one tick).",
			[]string{"use"}),
		longestByUse: desc(prefix+"_longest_by_use_seconds",
			"How long the "+what+" connection so the longest has been so: waiting since its request, idle since its answer (where any is); with --source events, as the last census found it (at start, each --events.audit-interval, each change of the listeners or limits).",
			[]string{"use"}),
		perClientByUse: desc(prefix+"_per_client_by_use",
			what+" connections one client IP holds, by use, for the clients holding the most (uses it holds none in are absent).",
			[]string{"client", "use"}),
		perProcess: desc(prefix+"_per_process",
			what+" connections whose client end is held by a program on this host, by its command name, for the programs holding the most.",
			[]string{"process"}),
		perProcessByUse: desc(prefix+"_per_process_by_use",
			what+" connections whose client end a program on this host holds, by command name and by what each does with its slot, for the programs holding the most (uses it holds none in are absent).",
			[]string{"process", "use"}),
		limit: desc("consul_"+limitName,
			"Consul's per-client "+what+" connection limit ("+limitName+"), as configured or read from the agent.",
			nil),
		clientsAtLimit: desc("consul_"+group+"_clients_at_limit",
			"Client IPs holding at least "+limitName+" "+what+" connections, of every client (not only the busiest): Consul refuses each its new ones.",
			nil),
		peakPerClient: desc(prefix+"_peak_per_client",
			"Most "+what+" connections one client IP held at any sample over the peak window, for the clients with the highest peaks.",
			[]string{"client"}),
		maxPerClientPeak: desc(prefix+"_max_per_client_peak",
			"Most "+what+" connections any one client IP held at any sample over the peak window: the burst a snapshot misses.",
			nil),
		atLimit: desc("consul_"+group+"_client_at_limit_seconds_total",
			"Time during which some client held at least "+limitName+" "+what+" connections: sampled every --sample.interval, or exact from the kernel's events (--source events).",
			nil),
		refused: desc("consul_refused_"+group+"_connections_total",
			what+" connections Consul refused (past "+limitName+": closed having read nothing, then reset), counted in the kernel since the exporter started.",
			nil),
		refusalsUntracked: desc("consul_refused_"+group+"_connections_untracked_total",
			what+" connections Consul closed having read nothing that the kernel's map of pending refusals was too full to follow, and refusals by the limiter's rule judged against a limit the agent changed before a read confirmed it: each may be a refusal not counted (0 when the count is exact).",
			nil),
		refusedBelowLimit: desc("consul_refused_"+group+"_connections_below_limit_total",
			what+" connections Consul refused while its client held fewer than "+limitName+" besides them, as the kernel counted them (--source events with --refusals): the limiter held slots the kernel had freed.",
			nil),
		refusedPerClient: desc("consul_refused_"+group+"_connections_per_client_total",
			what+" connections Consul refused to one client IP since the exporter started, for the clients refused most.",
			[]string{"client"}),
		opened: desc("consul_opened_"+group+"_connections_total",
			what+" connections opened (entered the watched states) since the exporter started, from the kernel's events.",
			nil),
		openedPerClient: desc("consul_opened_"+group+"_connections_per_client_total",
			what+" connections one client IP opened since the exporter started, for the clients that opened the most.",
			[]string{"client"}),
		closed: desc("consul_closed_"+group+"_connections_total",
			what+" connections closed (left the watched states) since the exporter started, by who ended them: the agent's FIN first, the client's, or a reset either way.",
			[]string{"by"}),
		lifetimes: desc("consul_"+group+"_connection_duration_seconds",
			"How long the "+what+" connections closed since the exporter started were open (those open before it are not in it).",
			nil),
		lost: desc("consul_conn_exporter_events_"+group+"_lost_total",
			what+" connections the kernel's connections map (--events.keys) was too full to count, each once: until an audit finds room, the counts lack them (0 when the counts are exact).",
			nil),
		whatIfRefused: desc("consul_"+group+"_whatif_refused_total",
			what+" connections a "+limitName+" of limit would have refused since the exporter started (--whatif.limit): each opening while its client held limit or more, judged at each open with --source events, else from the samples (never more than were).",
			[]string{"limit"}),
		whatIfRefusedPerClient: desc("consul_"+group+"_whatif_refused_per_client_total",
			what+" connections a "+limitName+" of limit would have refused one client IP since the exporter started, for the clients it would refuse most.",
			[]string{"limit", "client"}),
		unfollowed: desc("consul_conn_exporter_events_"+group+"_unfollowed_total",
			what+" connections counted whose client the kernel's clients map (--events.keys) was too full to follow, each once: that client's churn, peak and time at the limit lack them (0 when they are exact).",
			nil),
	}
}

var (
	processesDesc = prometheus.NewDesc(
		"consul_conn_exporter_processes_success",
		"1 if the programs holding the connections were named (--clients.processes), 0 if not (then the per-process counts are absent; the other counts are not affected).",
		nil, nil)
	limitsReadDesc = prometheus.NewDesc(
		"consul_conn_exporter_limits_read_success",
		"1 if the last read of the limits from the Consul agent (--limit auto) worked, 0 if not (the last limits read stay).",
		nil, nil)
	successDesc = prometheus.NewDesc(
		"consul_conn_exporter_collect_success",
		"1 if the socket table was read and counted, 0 if the collection failed (then no connection counts are reported).",
		nil, nil)
	samplesDesc = prometheus.NewDesc(
		"consul_conn_exporter_samples_total",
		"Reads of the socket table for the peaks (--sample.interval), collections included.",
		nil, nil)
	samplesFailedDesc = prometheus.NewDesc(
		"consul_conn_exporter_samples_failed_total",
		"Reads of the socket table for the peaks that failed: they count in no peak.",
		nil, nil)
	portListeningDesc = prometheus.NewDesc(
		"consul_conn_exporter_port_listening",
		"1 if anything listens on the watched port, 0 if nothing does (then its count of 0 says nothing of the agent: a wrong --port, or the agent down).",
		[]string{"port"}, nil)
	portListenerUsersDesc = prometheus.NewDesc(
		"consul_conn_exporter_port_listener_users",
		"How many users listen on the watched port: past 1, only the connections to the Consul agent's listeners count.",
		[]string{"port"}, nil)
	eventsDriftDesc = prometheus.NewDesc(
		"consul_conn_exporter_events_drift",
		"Connections the last audit (--events.audit-interval) found the kernel's events had counted wrong, one way or the other, and corrected: 0 when all is well.",
		nil, nil)
	eventsAuditsDesc = prometheus.NewDesc(
		"consul_conn_exporter_events_audits_total",
		"Audits of the kernel's events against its socket table since start.",
		nil, nil)
	eventsMissedDesc = prometheus.NewDesc(
		"consul_conn_exporter_events_missed_total",
		"Changes of a socket the kernel skipped the events' program for (its recursion guard): each is audited before the next read.",
		nil, nil)
	refusalsMissedDesc = prometheus.NewDesc(
		"consul_conn_exporter_refusals_missed_total",
		"Changes of a socket, and resets, the kernel skipped the refusals' programs for (their recursion guard): each may have been a refusal not counted.",
		nil, nil)
	durationDesc = prometheus.NewDesc(
		"consul_conn_exporter_collect_duration_seconds",
		"Time the collection took, command included.",
		nil, nil)
	collectorSuccessDesc = prometheus.NewDesc(
		"consul_conn_exporter_collector_success",
		"1 if the feature worked in the last collection, 0 if not (the log says why): one series per feature enabled, the source's the counts'.",
		[]string{"collector"}, nil)
	collectorDurationDesc = prometheus.NewDesc(
		"consul_conn_exporter_collector_duration_seconds",
		"Time the feature took in the last collection (the limits': their last read, made in the background).",
		[]string{"collector"}, nil)
)

// result is a collection's metrics.
type result collector.Result

// Of is res's metrics. A failed result has no count, so that no graph or
// alert can take a failure for an idle server.
func Of(res collector.Result) prometheus.Collector { return result(res) }

// Describe sends the descriptions of every metric a result can have.
func (r result) Describe(ch chan<- *prometheus.Desc) {
	for _, l := range collector.Limiters {
		g := groups[l]
		for _, d := range []*prometheus.Desc{g.connections, g.maxPerClient, g.perClient, g.byState, g.byUse, g.perClientByUse, g.longestByUse, g.limit, g.clientsAtLimit, g.peakPerClient, g.maxPerClientPeak, g.atLimit, g.refused, g.refusedPerClient, g.refusalsUntracked, g.refusedBelowLimit, g.whatIfRefused, g.whatIfRefusedPerClient,
			g.perProcess, g.perProcessByUse, g.opened, g.openedPerClient, g.closed, g.lifetimes, g.lost, g.unfollowed} {
			ch <- d
		}
	}
	for _, d := range []*prometheus.Desc{processesDesc, limitsReadDesc, samplesDesc, samplesFailedDesc, successDesc, durationDesc, portListeningDesc, portListenerUsersDesc,
		eventsDriftDesc, eventsAuditsDesc, eventsMissedDesc, refusalsMissedDesc, collectorSuccessDesc, collectorDurationDesc} {
		ch <- d
	}
}

// Collect sends the result's metrics. One that cannot be rendered (a
// label value that is not valid UTF-8, which no source lets through) is
// sent as a failed collection, with why: the exposition never panics on
// what others feed it.
func (r result) Collect(ch chan<- prometheus.Metric) {
	metrics, err := r.metrics()
	if err != nil {
		failed := collector.Result(r)
		failed.Parts = slices.Clone(r.Parts)
		failed.Failed(fmt.Errorf("cannot render the metrics: %s", say.Clip(err.Error(), 300)))
		metrics, _ = result(failed).metrics()
	}
	for _, m := range metrics {
		ch <- m
	}
}

// metrics are the result's samples, or why one cannot be made.
func (r result) metrics() ([]prometheus.Metric, error) {
	var (
		metrics []prometheus.Metric
		errs    []error
	)
	sample := func(d *prometheus.Desc, t prometheus.ValueType, v float64, labels ...string) {
		m, err := prometheus.NewConstMetric(d, t, v, labels...)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s %q: %w", d, labels, err))
			return
		}
		metrics = append(metrics, m)
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) { sample(d, prometheus.GaugeValue, v, labels...) }
	counter := func(d *prometheus.Desc, v float64, labels ...string) {
		sample(d, prometheus.CounterValue, v, labels...)
	}
	gauge(durationDesc, r.Duration.Seconds())
	for _, p := range r.Parts {
		gauge(collectorSuccessDesc, boolValue(p.Err == nil), p.Name)
		gauge(collectorDurationDesc, p.Took.Seconds(), p.Name)
	}
	if r.Peaks != nil {
		counter(samplesDesc, float64(r.Peaks.Samples))
		counter(samplesFailedDesc, float64(r.Peaks.Failed))
	}
	if r.Limits.Auto {
		gauge(limitsReadDesc, boolValue(r.Limits.ReadOK))
	}
	if collector.Result(r).Has("processes") {
		gauge(processesDesc, boolValue(r.ProcessesKnown))
	}
	if r.Err != nil {
		gauge(successDesc, 0)
		return metrics, errors.Join(errs...)
	}
	gauge(successDesc, 1)
	for i, g := range r.Groups {
		d := groups[g.Limiter]
		// key are the labels that tell one group of its limiter from
		// another: its port, for a limiter with a group per port.
		var key []string
		if g.PerPort {
			key = []string{strconv.Itoa(int(g.Ports[0]))}
		}
		gauge := func(desc *prometheus.Desc, v float64, labels ...string) {
			gauge(desc, v, append(slices.Clip(key), labels...)...)
		}
		counter := func(desc *prometheus.Desc, v float64, labels ...string) {
			counter(desc, v, append(slices.Clip(key), labels...)...)
		}
		for _, port := range g.Counts.Ports() {
			p := strconv.Itoa(int(port))
			sample(d.connections, prometheus.GaugeValue, float64(g.Counts.Total(port)), p)
			for _, state := range g.Counts.States() {
				sample(d.byState, prometheus.GaugeValue, float64(g.Counts.ByState(port, state)), p, state.Label())
			}
		}
		gauge(d.maxPerClient, float64(g.Counts.MaxPerClient()))
		for _, u := range socket.Uses {
			gauge(d.byUse, float64(g.Counts.ByUse(u)), u.Label())
		}
		for _, u := range []socket.Use{socket.UseWaiting, socket.UseIdle} {
			if g.Counts.ByUse(u) > 0 {
				gauge(d.longestByUse, g.Counts.Longest(u).Seconds(), u.Label())
			}
		}
		for _, c := range g.Counts.TopClients(r.TopClients) {
			gauge(d.perClient, float64(c.Count), c.Client.String())
			for _, u := range socket.Uses {
				if n := g.Counts.ClientByUse(c.Client, u); n > 0 {
					gauge(d.perClientByUse, float64(n), c.Client.String(), u.Label())
				}
			}
		}
		if g.Limit > 0 {
			gauge(d.limit, float64(g.Limit))
			gauge(d.clientsAtLimit, float64(g.Counts.ClientsHolding(g.Limit)))
		}
		if r.ProcessesKnown {
			for _, p := range tally.ByProcess(g.Processes, r.TopClients) {
				gauge(d.perProcess, float64(p.Count), p.Process)
				for _, u := range socket.Uses {
					if n := p.ByUse[u]; n > 0 {
						gauge(d.perProcessByUse, float64(n), p.Process, u.Label())
					}
				}
			}
		}
		if r.Peaks != nil && r.Peaks.Known {
			p := r.Peaks.Groups[i]
			gauge(d.maxPerClientPeak, float64(p.MaxPerClient))
			for _, c := range p.Top[:min(r.TopClients, len(p.Top))] {
				gauge(d.peakPerClient, float64(c.Count), c.Client.String())
			}
		}
		switch { // the events' time at the limit is exact, the samples' sampled
		case r.Events != nil:
			counter(d.atLimit, r.Events.Groups[i].AtLimit.Seconds())
		case r.Peaks != nil && r.Peaks.Known && !collector.Result(r).Has("events"):
			// Not in place of the events' when they could not be read:
			// another count of the same counter would jump, and go back.
			counter(d.atLimit, r.Peaks.Groups[i].AtLimit.Seconds())
		}
		if r.Events != nil {
			e := r.Events.Groups[i]
			counter(d.opened, float64(e.Opened))
			for _, c := range e.TopOpened[:min(r.TopClients, len(e.TopOpened))] {
				counter(d.openedPerClient, float64(c.Count), c.Client.String())
			}
			for how, n := range e.Closed {
				counter(d.closed, float64(n), events.Closes[how])
			}
			buckets := make(map[float64]uint64, len(events.LifetimeBounds))
			for b, bound := range events.LifetimeBounds {
				buckets[bound] = e.Lifetimes[b]
			}
			if m, err := prometheus.NewConstHistogram(d.lifetimes, e.LifetimeCount, e.LifetimeSum, buckets, key...); err != nil {
				errs = append(errs, err)
			} else {
				metrics = append(metrics, m)
			}
			counter(d.lost, float64(e.Lost))
			counter(d.unfollowed, float64(e.Unfollowed))
		}
		if i < len(r.WhatIf) {
			for _, l := range r.WhatIf[i] {
				limit := strconv.Itoa(l.Limit)
				counter(d.whatIfRefused, float64(l.Refused), limit)
				for _, c := range l.Clients {
					counter(d.whatIfRefusedPerClient, float64(c.Count), limit, c.Client.String())
				}
			}
		}
		if i < len(r.Refusals) {
			counter(d.refused, float64(r.Refusals[i].Total))
			counter(d.refusalsUntracked, float64(r.Refusals[i].Untracked))
			if collector.Result(r).Has("events") { // counted by the refusals, with the events' maps
				counter(d.refusedBelowLimit, float64(r.Refusals[i].BelowLimit))
			}
			for _, c := range r.Refusals[i].Top[:min(r.TopClients, len(r.Refusals[i].Top))] {
				counter(d.refusedPerClient, float64(c.Count), c.Client.String())
			}
		}
	}
	if r.Refusals != nil {
		counter(refusalsMissedDesc, float64(r.RefusalsMissed))
	}
	if r.Events != nil {
		gauge(eventsDriftDesc, float64(r.Events.Audit.Drift()))
		counter(eventsAuditsDesc, float64(r.Events.Audits))
		counter(eventsMissedDesc, float64(r.Events.Missed))
	}
	if r.Listeners != nil {
		for port, users := range r.Listeners.Owners {
			p := strconv.Itoa(int(port))
			gauge(portListeningDesc, boolValue(users > 0), p)
			gauge(portListenerUsersDesc, float64(users), p)
		}
	}
	return metrics, errors.Join(errs...)
}

func boolValue(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// OnScrape collects with coll on every scrape, for the exporter's own
// /metrics; a failed collection is logged.
func OnScrape(coll *collector.Collector, logger *slog.Logger) prometheus.Collector {
	return onScrape{coll, logger}
}

type onScrape struct {
	coll   *collector.Collector
	logger *slog.Logger
}

func (s onScrape) Describe(ch chan<- *prometheus.Desc) { result{}.Describe(ch) }

func (s onScrape) Collect(ch chan<- prometheus.Metric) {
	// The command timeout bounds the scrape: promhttp passes no context.
	res := s.coll.Collect(context.Background())
	if res.Err != nil {
		s.logger.Error("collection failed", "err", res.Err)
	}
	result(res).Collect(ch)
}

// BuildInfo is the exporter's version, as consul_conn_exporter_build_info:
// in every output.
func BuildInfo() prometheus.Collector { return versioncollector.NewCollector("consul_conn_exporter") }
