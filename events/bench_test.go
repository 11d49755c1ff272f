package events

import (
	"net"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"

	"github.com/consul-conn-exporter/consul-conn-exporter/internal/programs"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/storm"
)

// BenchmarkChurnStorm is short connections served (open, one request,
// close) with the events' program attached and without: each opens and
// closes a count, a client's, and its peak. The benchmark script runs
// 100,000 and gives the ratio.
func BenchmarkChurnStorm(b *testing.B) { withAndWithout(b, storm.Served) }

// BenchmarkRefusalStorm is refusals: opened, then closed by the agent with
// the request unread, and reset.
func BenchmarkRefusalStorm(b *testing.B) { withAndWithout(b, storm.Refused) }

func withAndWithout(b *testing.B, connection func(b *testing.B, client, server net.Conn)) {
	programs.NeedRoot(b, "load the events' kernel programs")
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	c, err := Load(btf.NewCache(), [][]uint16{{uint16(l.Addr().(*net.TCPAddr).Port)}}, held, 1<<20)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	for _, lk := range c.links { // attached in turn by the storm
		lk.Close()
	}
	c.links = nil
	storm.WithAndWithout(b, l, []*ebpf.Program{c.objs.Changed}, connection)
}
