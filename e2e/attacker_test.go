package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/consul-conn-exporter/consul-conn-exporter/internal/testkit/programs"
)

// attackEnv, set, makes the test binary a local user's program instead of
// the tests (TestMain): what any user can do with sockets of its own, run
// as nobody against the agent's port.
const attackEnv = "CONSUL_CONN_EXPORTER_E2E_ATTACK"

// attackMain runs one attack, prints "ready" once it is in place, and holds
// its sockets until SIGTERM; on SIGUSR1 it closes the sockets it bound on
// the agent's port first, reading nothing, and prints "closed".
//
//	listen ADDR:PORT N FROM [v6only|dualstack|mptcp]
//	                                  a listener (IPv6 only, or both
//	                                  families, if asked), and N
//	                                  connections to it from FROM (MPTCP
//	                                  ones, if asked)
//	forge PORT N FIRST [unread]       N sockets bound to PORT at FIRST and
//	                                  the addresses after it (SO_REUSEADDR),
//	                                  each connected to a listener of its
//	                                  own on loopback, which writes them a
//	                                  byte where unread
//	plant PORT N ADDR                 the same, all at ADDR (before the
//	                                  agent listens there)
//	agent ADDR:PORT LIMIT             an HTTP server that answers
//	                                  /v1/agent/self as an agent whose
//	                                  http_max_conns_per_client is LIMIT
func attackMain(args []string) int {
	done := make(chan os.Signal, 1)
	signal.Notify(done, syscall.SIGTERM, syscall.SIGINT)
	closing := make(chan os.Signal, 1)
	signal.Notify(closing, syscall.SIGUSR1)
	var (
		forged []net.Conn
		held   []io.Closer
		err    error
	)
	switch {
	case len(args) >= 4 && args[0] == "listen":
		option := ""
		if len(args) > 4 {
			option = args[4]
		}
		held, err = listenAndOpen(args[1], args[2], args[3], option)
	case len(args) >= 4 && args[0] == "forge":
		forged, held, err = forge(args[1], args[2], args[3], len(args) > 4 && args[4] == "unread", true)
	case len(args) == 4 && args[0] == "plant":
		forged, held, err = forge(args[1], args[2], args[3], false, false)
	case len(args) == 3 && args[0] == "agent":
		held, err = fakeAgent(args[1], args[2])
	default:
		err = fmt.Errorf("usage: listen ADDR:PORT N FROM [v6only] | forge PORT N FIRST [unread] | plant PORT N ADDR: %q", args)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "attack:", err)
		return 1
	}
	fmt.Println("ready")
	for {
		select {
		case <-closing:
			for _, c := range forged {
				c.Close()
			}
			fmt.Println("closed")
		case <-done:
			for _, c := range forged {
				c.Close()
			}
			for _, c := range held {
				c.Close()
			}
			return 0
		}
	}
}

func listenAndOpen(addr, count, from, option string) ([]io.Closer, error) {
	v6only, dualStack := option == "v6only", option == "dualstack"
	n, err := strconv.Atoi(count)
	if err != nil {
		return nil, err
	}
	lc := net.ListenConfig{Control: func(_, _ string, raw syscall.RawConn) error {
		var serr error
		err := raw.Control(func(fd uintptr) {
			if v6only {
				serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 1)
			}
		})
		return cmpErr(err, serr)
	}}
	at := netip.MustParseAddrPort(addr)
	network := "tcp4"
	switch {
	case dualStack:
		network = "tcp"
	case at.Addr().Is6():
		network = "tcp6"
	}
	l, err := lc.Listen(context.Background(), network, addr)
	if err != nil {
		return nil, err
	}
	conns := []io.Closer{l}
	// A wildcard is reached at the loopback of the client's family.
	to := netip.AddrPortFrom(at.Addr(), uint16(l.Addr().(*net.TCPAddr).Port))
	if at.Addr().IsUnspecified() {
		to = netip.AddrPortFrom(netip.MustParseAddr(map[bool]string{true: "127.0.0.1", false: "::1"}[netip.MustParseAddr(from).Is4()]), to.Port())
	}
	dialer := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
	dialer.SetMultipathTCP(option == "mptcp")
	for range n {
		c, err := dialer.Dial("tcp", to.String())
		if err != nil {
			return nil, err
		}
		s, err := l.Accept()
		if err != nil {
			return nil, err
		}
		if option == "mptcp" { // data, that the connection is fully established and adds its subflows
			if _, err := c.Write([]byte{'x'}); err != nil {
				return nil, err
			}
			if _, err := s.Read(make([]byte, 1)); err != nil {
				return nil, err
			}
		}
		conns = append(conns, c, s)
	}
	return conns, nil
}

func forge(portWord, count, first string, unread, step bool) (forged []net.Conn, held []io.Closer, err error) {
	port, err := strconv.ParseUint(portWord, 10, 16)
	if err != nil {
		return nil, nil, err
	}
	n, err := strconv.Atoi(count)
	if err != nil {
		return nil, nil, err
	}
	addr := netip.MustParseAddr(first)
	for range n {
		to := "127.0.0.1:0"
		if addr.Is6() && !addr.Is4In6() {
			to = "[::1]:0"
		}
		l, err := net.Listen("tcp", to)
		if err != nil {
			return nil, nil, err
		}
		dialer := net.Dialer{
			LocalAddr: &net.TCPAddr{IP: addr.AsSlice(), Port: int(port)},
			Control: func(_, _ string, raw syscall.RawConn) error {
				var serr error
				err := raw.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1) })
				return cmpErr(err, serr)
			},
		}
		network := "tcp4"
		if addr.Is6() {
			network = "tcp6" // a v4-mapped address on an IPv6 socket
		}
		var c net.Conn
		if addr.Is4In6() {
			// Go dials a v4-mapped address as IPv4: an IPv6 socket by hand.
			c, err = dialMapped(netip.AddrPortFrom(addr, uint16(port)), uint16(l.Addr().(*net.TCPAddr).Port))
		} else {
			c, err = dialer.Dial(network, l.Addr().String())
		}
		if err != nil {
			return nil, nil, fmt.Errorf("binding %s: %w", netip.AddrPortFrom(addr, uint16(port)), err)
		}
		s, err := l.Accept()
		if err != nil {
			return nil, nil, err
		}
		if unread {
			if _, err := s.Write([]byte{'x'}); err != nil {
				return nil, nil, err
			}
		}
		forged = append(forged, c)
		held = append(held, s, l)
		if step {
			addr = addr.Next()
		}
	}
	return forged, held, nil
}

// fakeAgent answers /v1/agent/self at addr as an agent with limit.
func fakeAgent(addr, limit string) ([]io.Closer, error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	body := `{"Config": {}, "DebugConfig": {"HTTPMaxConnsPerClient": ` + limit + `, "RPCMaxConnsPerClient": ` + limit + `}}`
	go http.Serve(l, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, body)
	}))
	return []io.Closer{l}, nil
}

// dialMapped connects an IPv6 socket bound to from, v4-mapped, to
// ::ffff:127.0.0.1 at port.
func dialMapped(from netip.AddrPort, port uint16) (net.Conn, error) {
	fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(fd), "mapped")
	defer f.Close()
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
		return nil, err
	}
	if err := unix.Bind(fd, &unix.SockaddrInet6{Port: int(from.Port()), Addr: from.Addr().As16()}); err != nil {
		return nil, err
	}
	if err := unix.Connect(fd, &unix.SockaddrInet6{Port: int(port), Addr: netip.MustParseAddr("::ffff:127.0.0.1").As16()}); err != nil {
		return nil, err
	}
	return net.FileConn(f)
}

func cmpErr(errs ...error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

var (
	attackerOnce sync.Once
	attackerPath string
	attackerErr  error
)

// attacker starts the test binary as a local user's program: prefix are
// the words before it (programs.AsNobody, ip netns exec ...), args the
// attack; it returns once the attack is in place.
func attacker(t *testing.T, prefix []string, args ...string) *process {
	t.Helper()
	attackerOnce.Do(func() {
		self, err := os.Executable()
		if err != nil {
			attackerErr = err
			return
		}
		attackerPath = filepath.Join(filepath.Dir(binary), "attacker")
		attackerErr = exec.Command("cp", self, attackerPath).Run()
	})
	require.NoError(t, attackerErr)
	return startUntil(t, "ready", append(append(prefix[:len(prefix):len(prefix)], "env", attackEnv+"=1", attackerPath), args...)...)
}

// asNobody is the words that run a program as the nobody user.
func asNobody(t *testing.T) []string {
	t.Helper()
	return programs.AsNobody(t)
}
