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
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/consul-conn-exporter/consul-conn-exporter/internal/testkit/programs"
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
func Served(b *testing.B, client, server net.Conn) { served(b, client, server, 1) }

// Exchanges are how many requests an Echoed connection carries.
const Exchanges = 20

// Echoed is a kept-alive connection: Exchanges requests, each read and
// answered on it, then closed. Its reads and sends are most of its cost.
func Echoed(b *testing.B, client, server net.Conn) { served(b, client, server, Exchanges) }

// served is n requests read and answered on one connection, then closed.
func served(b *testing.B, client, server net.Conn, n int) {
	buf := make([]byte, 64)
	for range n {
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
	}
	client.Close()
	server.Close()
}

// Loaded is a benchmark's tracing programs, loaded for the storm's
// listener port, none attached.
type Loaded struct {
	Programs []*ebpf.Program
	// Specs are what they were loaded from, one each: the floor is each
	// emptied (it returns at once) and attached where it attaches.
	Specs  []*ebpf.ProgramSpec
	Unload func()
}

// WithAndWithout runs connection against a listener of its own on
// loopback, on a new connection each time from one of 50 loopback
// addresses in turn (clients that churn come round again; and no address
// runs out of ports), in batches with no program attached, with the floor
// (a program that does nothing, where each of load's attaches: what the
// kernel takes to run any program there), and with load's, in turn, so
// that the machine's drift weighs on all alike. It reports each side's
// time per connection, the ratios to none, and, from one more batch, the
// kernel's own count of the time load's programs ran per connection.
func WithAndWithout(b *testing.B, load func(port uint16) (Loaded, error), connection func(b *testing.B, client, server net.Conn)) {
	programs.NeedRoot(b, "load kernel programs")
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	loaded, err := load(uint16(l.Addr().(*net.TCPAddr).Port))
	if err != nil {
		b.Fatal(err)
	}
	defer loaded.Unload()
	floor := make([]*ebpf.Program, len(loaded.Specs))
	for i, spec := range loaded.Specs {
		if floor[i], err = empty(spec); err != nil {
			b.Fatal(err)
		}
		defer floor[i].Close()
	}
	var links []link.Link
	detach := func() {
		for _, lk := range links {
			lk.Close()
		}
		links = nil
	}
	attach := func(progs []*ebpf.Program) {
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
	// Batches of two thousand, none, the floor and the programs attached as
	// ABCCBA ABCCBA ...: a drift of the machine's over the run (the
	// TIME-WAIT sockets the storm leaves grow) weighs on each side alike,
	// not on the later one, and short batches share the machine's moments.
	sides := [][]*ebpf.Program{nil, floor, loaded.Programs}
	batch := max(min(2000, b.N/6), 1)
	var (
		took [3]time.Duration
		n    [3]int
	)
	b.ResetTimer()
	for i := 0; i < b.N; i += batch {
		side := [6]int{0, 1, 2, 2, 1, 0}[(i/batch)%6]
		attach(sides[side])
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
	attach(loaded.Programs)
	run(b.N, b.N+batch)
	var ran time.Duration
	for _, prog := range loaded.Programs {
		s, err := prog.Stats()
		if err != nil {
			b.Fatal(err)
		}
		ran += s.Runtime
	}
	if n[0] > 0 && n[1] > 0 && n[2] > 0 {
		var each [3]float64
		for i := range each {
			each[i] = float64(took[i].Nanoseconds()) / float64(n[i])
		}
		b.ReportMetric(each[0], "detached-ns/op")
		b.ReportMetric(each[2], "attached-ns/op")
		b.ReportMetric(each[2]/each[0], "ratio")
		b.ReportMetric(each[1]/each[0], "floor-ratio")
		b.ReportMetric(float64(ran.Nanoseconds())/float64(batch), "program-ns/op")
	}
}

// empty is a program of spec's type, at spec's attach point, that returns
// at once.
func empty(spec *ebpf.ProgramSpec) (*ebpf.Program, error) {
	return ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:         "floor",
		Type:         spec.Type,
		AttachType:   spec.AttachType,
		AttachTo:     spec.AttachTo,
		License:      "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()},
	})
}
