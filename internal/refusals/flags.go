package refusals

import "github.com/alecthomas/kingpin/v2"

// Flags say whether to count refusals.
type Flags struct {
	Enabled bool
}

// AddFlags declares the refusals' flag on app.
func AddFlags(app *kingpin.Application) *Flags {
	f := &Flags{}
	app.Flag("refusals", "Count, in the kernel, the connections each watched group refuses, per client, from the exporter's start (an eBPF program; needs CAP_BPF and CAP_PERFMON or root at start, and drops every capability once loaded).").
		BoolVar(&f.Enabled)
	return f
}
