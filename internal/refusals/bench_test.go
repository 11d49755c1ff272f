package refusals

import (
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"

	"github.com/consul-conn-exporter/consul-conn-exporter/internal/testkit/storm"
)

// BenchmarkRefusalStorm is refusals (a verdict at the close, counted at
// the reset) with the programs attached and without: what counting costs
// the refused. The benchmark script runs 100,000 and gives the ratio.
func BenchmarkRefusalStorm(b *testing.B) { storm.WithAndWithout(b, stormLoaded, storm.Refused) }

// BenchmarkServedChurn is short connections served: every change of state
// they make passes through the program at the close, which looks and lets
// it go.
func BenchmarkServedChurn(b *testing.B) { storm.WithAndWithout(b, stormLoaded, storm.Served) }

// stormLoaded loads the programs for a storm on port.
func stormLoaded(port uint16) (storm.Loaded, error) {
	spec, err := loadProgram()
	if err != nil {
		return storm.Loaded{}, err
	}
	c, err := Load(btf.NewCache(), [][]uint16{{port}}, nil, map[uint16]uint32{port: 0})
	if err != nil {
		return storm.Loaded{}, err
	}
	for _, lk := range c.links { // attached in turn by the storm
		lk.Close()
	}
	c.links = nil
	return storm.Loaded{
		Programs: []*ebpf.Program{c.objs.AgentClosed, c.objs.AgentReset},
		Specs:    []*ebpf.ProgramSpec{spec.Programs["agent_closed"], spec.Programs["agent_reset"]},
		Unload:   c.Close,
	}, nil
}
