package refusals

import (
	"io"
	"net"
	"testing"

	"github.com/cilium/ebpf/btf"

	"github.com/consul-conn-exporter/consul-conn-exporter/internal/programs"
)

// BenchmarkRefusalStorm is one refusal (a connection accepted and closed
// with its request unread, as Consul refuses one: a verdict at the close,
// counted at the reset) with the programs attached and without: what
// counting costs the refused. The benchmark script runs 20,000 of each and
// gives the ratio.
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

// BenchmarkServedChurn is one short connection served (a request read and
// answered, then closed): every change of state it makes passes through
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
// address each time, without the programs ("detached"), then with them.
func withAndWithout(b *testing.B, connection func(b *testing.B, client, server net.Conn)) {
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
	b.Run("detached", storm)
	c, err := Load(btf.NewCache(), [][]uint16{{port}})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	b.Run("attached", storm)
}
