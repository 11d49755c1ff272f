package refusals

import (
	"io"
	"net"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/consul-conn-exporter/consul-conn-exporter/internal/programs"
)

// BenchmarkRefusalStorm is refusals (connections accepted and closed with
// their request unread, as Consul refuses one: a verdict at the close,
// counted at the reset) with the programs attached and without: what
// counting costs the refused. The benchmark script runs 20,000 and gives
// the ratio.
func BenchmarkRefusalStorm(b *testing.B) {
	withAndWithout(b, func(b *testing.B, client, server net.Conn) {
		if _, err := io.WriteString(client, "GET / HTTP/1.1\r\n\r\n"); err != nil {
			b.Fatal(err)
		}
		server.Close() // unread: a reset
		client.Read(make([]byte, 1))
		client.Close()
	})
}

// BenchmarkServedChurn is short connections served (a request read and
// answered, then closed): every change of state they make passes through
// the program at the close, which looks and lets it go.
func BenchmarkServedChurn(b *testing.B) {
	withAndWithout(b, func(b *testing.B, client, server net.Conn) {
		buf := make([]byte, 64)
		if _, err := io.WriteString(client, "GET / HTTP/1.1\r\n\r\n"); err != nil {
			b.Fatal(err)
		}
		if _, err := server.Read(buf); err != nil {
			b.Fatal(err)
		}
		if _, err := io.WriteString(server, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"); err != nil {
			b.Fatal(err)
		}
		if _, err := client.Read(buf); err != nil {
			b.Fatal(err)
		}
		client.Close()
		server.Close()
	})
}

// withAndWithout runs connection, on a new connection from a new loopback
// address each time, in batches with the programs attached and detached in
// turn, so that the machine's drift weighs on both alike. It reports each
// side's time per connection, their ratio, and, from one more batch, the
// kernel's own count of the time its programs ran per connection.
func withAndWithout(b *testing.B, connection func(b *testing.B, client, server net.Conn)) {
	programs.NeedRoot(b, "load the refusals' kernel program")
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	c, err := Load(btf.NewCache(), [][]uint16{{uint16(l.Addr().(*net.TCPAddr).Port)}})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	detach := func() {
		for _, lk := range c.links {
			lk.Close()
		}
		c.links = nil
	}
	attach := func() {
		for _, prog := range []*ebpf.Program{c.objs.AgentClosed, c.objs.AgentReset} {
			lk, err := link.AttachTracing(link.TracingOptions{Program: prog})
			if err != nil {
				b.Fatal(err)
			}
			c.links = append(c.links, lk)
		}
	}

	run := func(from, to int) {
		for j := from; j < to; j++ {
			d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 2, byte(j>>8), byte(j))}}
			client, err := d.Dial("tcp", l.Addr().String())
			if err != nil {
				b.Fatal(err)
			}
			server, err := l.Accept()
			if err != nil {
				b.Fatal(err)
			}
			connection(b, client, server)
		}
	}
	batch := max(b.N/10, 1)
	var (
		took [2]time.Duration // detached, attached
		n    [2]int
	)
	b.ResetTimer()
	for i := 0; i < b.N; i += batch {
		side := (i / batch) % 2
		if side == 1 {
			attach()
		}
		start := time.Now()
		run(i, min(i+batch, b.N))
		took[side] += time.Since(start)
		n[side] += min(i+batch, b.N) - i
		detach()
	}
	b.StopTimer()
	// The kernel's own count of the time its programs ran, apart: keeping
	// it costs each run of them a clock read or two.
	stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		b.Fatal(err)
	}
	defer stats.Close()
	attach()
	run(b.N, b.N+batch)
	var ran time.Duration
	for _, prog := range []*ebpf.Program{c.objs.AgentClosed, c.objs.AgentReset} {
		s, err := prog.Stats()
		if err != nil {
			b.Fatal(err)
		}
		ran += s.Runtime
	}
	if n[0] > 0 && n[1] > 0 {
		off, on := float64(took[0].Nanoseconds())/float64(n[0]), float64(took[1].Nanoseconds())/float64(n[1])
		b.ReportMetric(off, "detached-ns/op")
		b.ReportMetric(on, "attached-ns/op")
		b.ReportMetric(on/off, "ratio")
		b.ReportMetric(float64(ran.Nanoseconds())/float64(batch), "program-ns/op")
	}
}
