// Package storm measures what a kernel program costs the connections it
// follows: storms of short connections on loopback, in batches with the
// programs attached and detached in turn, for the benchmarks of the
// packages that load them.
package storm

import (
	"io"
	"net"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/consul-conn-exporter/consul-conn-exporter/internal/programs"
)

// Refused is a connection accepted and closed with its request unread, as
// Consul refuses one: the kernel resets it.
func Refused(b *testing.B, client, server net.Conn) {
	if _, err := io.WriteString(client, "GET / HTTP/1.1\r\n\r\n"); err != nil {
		b.Fatal(err)
	}
	server.Close() // unread: a reset
	client.Read(make([]byte, 1))
	client.Close()
}

// Served is a short connection served: a request read and answered, then
// closed.
func Served(b *testing.B, client, server net.Conn) {
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
}

// WithAndWithout runs connection against a listener of its own on
// loopback, on a new connection each time from one of 50 loopback
// addresses in turn (clients that churn come round again; and no address
// runs out of ports), in batches with the tracing programs that load
// returns (loaded for the listener's port, none attached) attached and
// detached in turn, so that the machine's drift weighs on both alike. It
// reports each side's time per connection, their ratio, and, from one more
// batch, the kernel's own count of the time the programs ran per
// connection.
func WithAndWithout(b *testing.B, load func(port uint16) (progs []*ebpf.Program, unload func(), err error), connection func(b *testing.B, client, server net.Conn)) {
	programs.NeedRoot(b, "load kernel programs")
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	progs, unload, err := load(uint16(l.Addr().(*net.TCPAddr).Port))
	if err != nil {
		b.Fatal(err)
	}
	defer unload()
	var links []link.Link
	detach := func() {
		for _, lk := range links {
			lk.Close()
		}
		links = nil
	}
	attach := func() {
		for _, prog := range progs {
			lk, err := link.AttachTracing(link.TracingOptions{Program: prog})
			if err != nil {
				b.Fatal(err)
			}
			links = append(links, lk)
		}
	}
	defer detach()
	run := func(from, to int) {
		for j := from; j < to; j++ {
			d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 2, 0, byte(j%50+1))}}
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
	// Twelve batches, detached and attached as ABBA ABBA ABBA: a drift of
	// the machine's over the run (the TIME-WAIT sockets the storm leaves
	// grow) weighs on both sides alike, not on the later one.
	batch := max(b.N/12, 1)
	var (
		took [2]time.Duration // detached, attached
		n    [2]int
	)
	b.ResetTimer()
	for i := 0; i < b.N; i += batch {
		side := [4]int{0, 1, 1, 0}[(i/batch)%4]
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
	for _, prog := range progs {
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
