// Package delivery hands collections to Prometheus: every interval to the
// outputs (the textfile, a Pushgateway), and on each scrape of the
// exporter's own /metrics.
package delivery

import (
	"context"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/consul-conn-exporter/consul-conn-exporter/internal/collector"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/metrics"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/say"
)

// Output is one place a collection's metrics go. It remembers its last
// error so that a long-running exporter logs each change of state once, not
// the same refusal every interval.
type Output struct {
	Name  string
	Write func(prometheus.Gatherer) error
	state say.Tracker
}

// Once collects and hands the result to every output, a failed result
// included (it says success 0 and has no count). It says whether the
// collection and every output worked, and logs why not.
func Once(coll *collector.Collector, outputs []*Output, logger *slog.Logger) bool {
	// Not the signal context: a collection under way finishes and is
	// written on SIGTERM; the command timeout bounds how long that takes.
	res := coll.Collect(context.Background())
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(metrics.Of(res), metrics.BuildInfo())
	ok := res.Err == nil
	if !ok {
		logger.Error("collection failed", "err", res.Err)
	}
	// The limits source logs its own failures, once per change, and the
	// collector the events'. The programs' names are the counts' extra:
	// their failure is said, and fails nothing.
	ok = ok && res.Limits.Err() == nil && res.EventsErr == nil
	for _, out := range outputs {
		problem := ""
		if err := out.Write(reg); err != nil {
			problem, ok = err.Error(), false
		}
		out.state.Log(logger, slog.LevelError, problem, "output failed", "output works again", "output", out.Name)
	}
	logger.Debug("collected", "ok", ok, "duration", res.Duration)
	return ok
}

// Run delivers until ctx is done: to the outputs now and every interval,
// and to the scrapes serve answers (nil: no web server). It returns once
// the server has stopped too, with the server's error when it stopped by
// itself. With no output it only waits.
func Run(ctx context.Context, interval time.Duration, coll *collector.Collector, outputs []*Output, serve func(context.Context) error, logger *slog.Logger) error {
	var serverDone chan error // nil, never ready, without a server
	if serve != nil {
		serverDone = make(chan error, 1)
		go func() { serverDone <- serve(ctx) }()
	}
	var tick <-chan time.Time
	if len(outputs) > 0 {
		ticker := time.NewTicker(interval)
		defer ticker.Stop()
		tick = ticker.C
		Once(coll, outputs, logger)
	}
	for {
		select {
		case <-ctx.Done():
			if serverDone == nil {
				return nil
			}
			return <-serverDone // scrapes under way finish, within the grace
		case err := <-serverDone:
			// On a stop the server may be done first: the one result,
			// whichever case takes it.
			return err
		case <-tick:
			Once(coll, outputs, logger)
		}
	}
}
