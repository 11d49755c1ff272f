package refusals

import (
	"github.com/cilium/ebpf/btf"
	"net"
	"testing"

	"github.com/consul-conn-exporter/consul-conn-exporter/internal/programs"
)

// BenchmarkRefusalStorm is one refusal (a connection accepted and reset at
// once, as Consul refuses one) with the program attached and without:
// what counting costs the refused. The benchmark script runs 20,000 of
// each and gives the ratio.
func BenchmarkRefusalStorm(b *testing.B) {
	programs.NeedRoot(b, "load the refusals' kernel program")
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	port := uint16(l.Addr().(*net.TCPAddr).Port)
	storm := func(b *testing.B) {
		for i := 0; b.Loop(); i++ {
			d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 2, byte(i>>8), byte(i))}}
			c, err := d.Dial("tcp", l.Addr().String())
			if err != nil {
				b.Fatal(err)
			}
			server, err := l.Accept()
			if err != nil {
				b.Fatal(err)
			}
			server.(*net.TCPConn).SetLinger(0)
			server.Close()
			c.Close()
		}
	}
	b.Run("detached", storm)
	c, err := Load(btf.NewCache(), [][]uint16{{port}})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	b.Run("attached", storm)
}
