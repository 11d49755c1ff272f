package refusals

import (
	"net"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"

	"github.com/consul-conn-exporter/consul-conn-exporter/internal/programs"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/storm"
)

// BenchmarkRefusalStorm is refusals (a verdict at the close, counted at
// the reset) with the programs attached and without: what counting costs
// the refused. The benchmark script runs 100,000 and gives the ratio.
func BenchmarkRefusalStorm(b *testing.B) { withAndWithout(b, storm.Refused) }

// BenchmarkServedChurn is short connections served: every change of state
// they make passes through the program at the close, which looks and lets
// it go.
func BenchmarkServedChurn(b *testing.B) { withAndWithout(b, storm.Served) }

func withAndWithout(b *testing.B, connection func(b *testing.B, client, server net.Conn)) {
	programs.NeedRoot(b, "load the refusals' kernel program")
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	c, err := Load(btf.NewCache(), [][]uint16{{uint16(l.Addr().(*net.TCPAddr).Port)}}, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	for _, lk := range c.links { // attached in turn by the storm
		lk.Close()
	}
	c.links = nil
	storm.WithAndWithout(b, l, []*ebpf.Program{c.objs.AgentClosed, c.objs.AgentReset}, connection)
}
