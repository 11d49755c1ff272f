package events

import (
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"

	"github.com/consul-conn-exporter/consul-conn-exporter/internal/testkit/storm"
)

// BenchmarkChurnStorm is short connections served (open, one request,
// close) with the events' program attached and without: each opens and
// closes a count, a client's, and its peak. The benchmark script runs
// 72,000 and gives the ratio.
func BenchmarkChurnStorm(b *testing.B) { storm.WithAndWithout(b, stormLoaded(true), storm.Served) }

// BenchmarkRefusalStorm is refusals: opened, then closed by the agent with
// the request unread, and reset.
func BenchmarkRefusalStorm(b *testing.B) { storm.WithAndWithout(b, stormLoaded(true), storm.Refused) }

// BenchmarkOtherPortsChurn is the churn storm on a port the program does
// not watch: what every other TCP connection on the host pays for it.
func BenchmarkOtherPortsChurn(b *testing.B) {
	storm.WithAndWithout(b, stormLoaded(false), storm.Served)
}

// BenchmarkEchoStorm is kept-alive connections carrying 20 requests each
// on the watched port: each read and send moves its use.
func BenchmarkEchoStorm(b *testing.B) { storm.WithAndWithout(b, stormLoaded(true), storm.Echoed) }

// BenchmarkOtherPortsEcho is the echo storm on a port the programs do not
// watch: what every other socket's read and send on the host pays.
func BenchmarkOtherPortsEcho(b *testing.B) {
	storm.WithAndWithout(b, stormLoaded(false), storm.Echoed)
}

// stormLoaded loads the programs for a storm on port (watched), or beside
// it: the one on each change of state, and those on each read and send.
func stormLoaded(watched bool) func(port uint16) (storm.Loaded, error) {
	return func(port uint16) (storm.Loaded, error) {
		spec, err := loadProgram()
		if err != nil {
			return storm.Loaded{}, err
		}
		if !watched {
			port++ // nothing listens there
		}
		c, err := Load(btf.NewCache(), [][]uint16{{port}}, held, 1<<20, rootListens([]uint16{port}), nil)
		if err != nil {
			return storm.Loaded{}, err
		}
		for _, lk := range c.links { // attached in turn by the storm
			lk.Close()
		}
		c.links = nil
		return storm.Loaded{
			Programs: []*ebpf.Program{c.objs.Changed, c.objs.Received, c.objs.Sent},
			Specs:    []*ebpf.ProgramSpec{spec.Programs["changed"], spec.Programs["received"], spec.Programs["sent"]},
			Unload:   c.Close,
		}, nil
	}
}
