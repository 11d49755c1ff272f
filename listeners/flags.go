package listeners

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os/user"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/alecthomas/kingpin/v2"
)

// Flags say whose listeners are the agent's.
type Flags struct {
	user string
}

// AddFlags declares the listeners' flag on app.
func AddFlags(app *kingpin.Application) *Flags {
	f := &Flags{}
	app.Flag("consul.user", "The user the Consul agent runs as (a name or a uid): only the connections its listeners accepted count. By default, the owner of the listener the agent's address reaches (--consul.server or CONSUL_HTTP_ADDR, 127.0.0.1:8500 by default), else the one user listening on the port.").
		PlaceHolder("consul").StringVar(&f.user)
	return f
}

// User is the uid --consul.user names, nil when not given.
func (f *Flags) User() (*uint32, error) {
	if f.user == "" {
		return nil, nil
	}
	if uid, err := strconv.ParseUint(f.user, 10, 32); err == nil {
		u := uint32(uid)
		return &u, nil
	}
	u, err := user.Lookup(f.user)
	if err != nil {
		return nil, fmt.Errorf("--consul.user: no user %q on this host (a name or a uid)", f.user)
	}
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("--consul.user: %q has the uid %q", f.user, u.Uid)
	}
	v := uint32(uid)
	return &v, nil
}

// Address is the agent's HTTP API address as the consul CLI reads
// CONSUL_HTTP_ADDR (--consul.server, or that variable): 127.0.0.1:8500
// where it is empty or a unix socket (Consul's default client_addr). A
// name is looked up at each Resolve, so that one that does not resolve
// now is tried again, never taken for 127.0.0.1.
type Address struct {
	host string // a name, or an address
	port uint16
	ip   netip.Addr // host, where it is an address

	mu   sync.Mutex
	last netip.AddrPort // the last resolution that worked
}

// ParseAddress reads server as the consul CLI reads CONSUL_HTTP_ADDR.
func ParseAddress(server string) (*Address, error) {
	a := &Address{host: "127.0.0.1", port: 8500}
	if server == "" || strings.HasPrefix(server, "unix://") {
		a.ip = netip.AddrFrom4([4]byte{127, 0, 0, 1})
		return a, nil
	}
	scheme, rest, found := strings.Cut(server, "://")
	if !found {
		scheme, rest = "http", server
	}
	host, port, err := net.SplitHostPort(rest)
	switch {
	case err != nil && scheme == "https":
		host, port = rest, "443"
	case err != nil:
		host, port = rest, "80"
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil || n == 0 || host == "" {
		return nil, fmt.Errorf("the agent's address %q (--consul.server or CONSUL_HTTP_ADDR) is not host:port", server)
	}
	a.host, a.port = host, uint16(n)
	if ip, err := netip.ParseAddr(host); err == nil {
		a.ip = ip.Unmap()
	}
	return a, nil
}

// lookupTimeout bounds a look-up of the agent's name: a name server that
// does not answer delays no collection past it.
const lookupTimeout = 2 * time.Second

// Port is the agent's HTTP port.
func (a *Address) Port() uint16 { return a.port }

// String is the address as given.
func (a *Address) String() string { return net.JoinHostPort(a.host, strconv.Itoa(int(a.port))) }

// Resolve looks the agent's host up (IPv4 first, as localhost is
// 127.0.0.1 to the agent's default client_addr). Where it does not
// resolve, the error says so, and the address is the last one it resolved
// to: invalid if it never did.
func (a *Address) Resolve(ctx context.Context) (netip.AddrPort, error) {
	if a.ip.IsValid() {
		return netip.AddrPortFrom(a.ip, a.port), nil
	}
	ctx, cancel := context.WithTimeout(ctx, lookupTimeout)
	defer cancel()
	ips, err := net.DefaultResolver.LookupNetIP(ctx, "ip", a.host)
	a.mu.Lock()
	defer a.mu.Unlock()
	if err != nil || len(ips) == 0 {
		if err == nil {
			err = errors.New("no address")
		}
		return a.last, fmt.Errorf("the agent's address %s does not resolve: %w", a.String(), err)
	}
	ip := ips[0]
	for _, candidate := range ips {
		if candidate.Unmap().Is4() {
			ip = candidate
			break
		}
	}
	a.last = netip.AddrPortFrom(ip.Unmap(), a.port)
	return a.last, nil
}

// Last is what the last Resolve gave, without a lookup.
func (a *Address) Last() netip.AddrPort {
	if a.ip.IsValid() {
		return netip.AddrPortFrom(a.ip, a.port)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.last
}
