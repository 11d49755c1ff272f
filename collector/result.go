package collector

import "github.com/consul-conn-exporter/consul-conn-exporter/tally"

// Config is what the result counted.
func (r Result) Config() Config { return r.config }

// Counts is group i's tally (as in Config().Groups); nil when Err is set.
func (r Result) Counts(i int) *tally.Tally {
	if r.counts == nil {
		return nil
	}
	return r.counts[i]
}

// Limit is group i's per-client limit, 0 when not known.
func (r Result) Limit(i int) int {
	if r.config.Groups[i].Name == RPC {
		return r.Limits.RPC
	}
	return r.Limits.HTTP
}

// Processes is how many HTTP connections each local program holds, per
// client address; known is false when some could not be read (or they
// were not asked for), and then none are reported.
func (r Result) Processes() (held []tally.ProcessCount, known bool) {
	return r.processes, r.processesKnown
}
