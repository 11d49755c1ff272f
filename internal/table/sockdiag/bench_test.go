package sockdiag

import (
	"context"
	"testing"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/consul-conn-exporter/consul-conn-exporter/internal/table/socket"
)

// BenchmarkRead is one read of an idle port: the fixed cost of a
// collection with the built-in reader.
func BenchmarkRead(b *testing.B) {
	r := New([]uint16{8500}, nil, counted, 10*time.Second)
	for b.Loop() {
		if err := r.Read(context.Background(), func(socket.Socket) {}, func() {}); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDial(b *testing.B) {
	for b.Loop() {
		c, err := netlink.Dial(unix.NETLINK_SOCK_DIAG, nil)
		if err != nil {
			b.Fatal(err)
		}
		c.Close()
	}
}
