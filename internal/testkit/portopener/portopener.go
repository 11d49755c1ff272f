// Package portopener holds TCP connections open on loopback, so that tests,
// fixture captures and benchmarks have real sockets for ss and netstat to see.
package portopener

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"syscall"
)

// Listener accepts connections on one loopback address.
type Listener struct {
	ln   net.Listener
	addr netip.AddrPort
}

// Pair is one connection seen from both ends.
type Pair struct {
	Client net.Conn
	Server net.Conn
}

// Listen listens on addr. A v4-mapped addr (::ffff:127.0.0.2) gets an IPv6
// socket that accepts IPv4 clients, the way an agent listening on "::" does;
// the kernel then reports its peers as ::ffff:a.b.c.d.
func Listen(addr netip.AddrPort) (*Listener, error) {
	if err := loopbackOnly(addr); err != nil {
		return nil, err
	}
	var (
		ln  net.Listener
		err error
	)
	if addr.Addr().Is4In6() {
		ln, err = listenMapped(addr)
	} else {
		ln, err = net.Listen("tcp", addr.String())
	}
	return newListener(ln, err)
}

// ListenOnDevice listens on addr with the socket bound to the network device
// (SO_BINDTODEVICE, which needs root), as an agent pinned to one interface
// is: ss then prints the address with a zone, 127.0.0.3%lo:8500.
func ListenOnDevice(addr netip.AddrPort, device string) (*Listener, error) {
	if err := loopbackOnly(addr); err != nil {
		return nil, err
	}
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var err error
		if cerr := c.Control(func(fd uintptr) { err = syscall.BindToDevice(int(fd), device) }); cerr != nil {
			return cerr
		}
		return err
	}}
	return newListener(lc.Listen(context.Background(), "tcp", addr.String()))
}

// loopbackOnly keeps every listener, and so every connection the tests and
// benchmarks make, on this machine's loopback.
func loopbackOnly(addr netip.AddrPort) error {
	if !addr.Addr().Unmap().IsLoopback() {
		return fmt.Errorf("listen on %s: only loopback addresses are allowed", addr)
	}
	return nil
}

func newListener(ln net.Listener, err error) (*Listener, error) {
	if err != nil {
		return nil, err
	}
	return &Listener{ln: ln, addr: netip.MustParseAddrPort(ln.Addr().String())}, nil
}

// listenMapped is needed because Go's net package always opens an IPv4
// socket for a v4-mapped address.
func listenMapped(addr netip.AddrPort) (net.Listener, error) {
	fd, err := syscall.Socket(syscall.AF_INET6, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("socket: %w", err)
	}
	f := os.NewFile(uintptr(fd), "mapped-listener")
	defer f.Close()
	sa := &syscall.SockaddrInet6{Port: int(addr.Port()), Addr: addr.Addr().As16()}
	for _, step := range []func() error{
		func() error { return syscall.SetsockoptInt(fd, syscall.IPPROTO_IPV6, syscall.IPV6_V6ONLY, 0) },
		func() error { return syscall.SetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_REUSEADDR, 1) },
		func() error { return syscall.Bind(fd, sa) },
		func() error { return syscall.Listen(fd, syscall.SOMAXCONN) },
	} {
		if err := step(); err != nil {
			return nil, fmt.Errorf("listen on %s: %w", addr, err)
		}
	}
	return net.FileListener(f)
}

// Addr is the address the listener is bound to, with its real port.
func (l *Listener) Addr() netip.AddrPort { return l.addr }

// Port is the listener's port.
func (l *Listener) Port() uint16 { return l.addr.Port() }

// Close stops accepting; connections already open stay open.
func (l *Listener) Close() error { return l.ln.Close() }

// Open makes n connections from the source address from, one at a time, and
// returns each with the server end that accepted it.
func (l *Listener) Open(ctx context.Context, from netip.Addr, n int) ([]Pair, error) {
	target := l.addr
	if target.Addr().Is4In6() {
		target = netip.AddrPortFrom(target.Addr().Unmap(), target.Port())
	}
	dialer := net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(from, 0))}
	pairs := make([]Pair, 0, n)
	for range n {
		client, err := dialer.DialContext(ctx, "tcp", target.String())
		if err != nil {
			CloseAll(pairs)
			return nil, fmt.Errorf("connect %s -> %s: %w", from, target, err)
		}
		server, err := l.ln.Accept()
		if err != nil {
			client.Close()
			CloseAll(pairs)
			return nil, fmt.Errorf("accept on %s: %w", l.addr, err)
		}
		pair := Pair{Client: client, Server: server}
		// Connections are opened one at a time, so the accepted one must be
		// the one just dialled; anything else means a stranger connected.
		if !sameEndpoint(client.LocalAddr(), server.RemoteAddr()) {
			CloseAll(append(pairs, pair))
			return nil, fmt.Errorf("accept on %s: got %s, want %s: is another program connecting to this port?",
				l.addr, server.RemoteAddr(), client.LocalAddr())
		}
		pairs = append(pairs, pair)
	}
	return pairs, nil
}

func sameEndpoint(a, b net.Addr) bool {
	pa, errA := netip.ParseAddrPort(a.String())
	pb, errB := netip.ParseAddrPort(b.String())
	return errA == nil && errB == nil &&
		pa.Addr().Unmap() == pb.Addr().Unmap() && pa.Port() == pb.Port()
}

// CloseAll closes both ends of every pair, client first.
func CloseAll(pairs []Pair) error {
	var errs []error
	for _, p := range pairs {
		errs = append(errs, p.Client.Close(), p.Server.Close())
	}
	return errors.Join(errs...)
}

// ClientSource is the i-th (from 0) of the source addresses 127.0.0.1, 127.0.0.2, ...
// (or ::1 for IPv6, whose loopback has only the one address).
func ClientSource(ipv6 bool, i int) (netip.Addr, error) {
	if ipv6 {
		if i > 0 {
			return netip.Addr{}, errors.New("IPv6 loopback has one address (::1): use one client")
		}
		return netip.IPv6Loopback(), nil
	}
	if i < 0 || i >= 250 {
		return netip.Addr{}, fmt.Errorf("client %d: at most 250 clients (127.0.0.1 to 127.0.0.250)", i+1)
	}
	return netip.AddrFrom4([4]byte{127, 0, 0, byte(i + 1)}), nil
}
