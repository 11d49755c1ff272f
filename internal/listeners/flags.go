package listeners

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os/user"
	"slices"
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
	app.Flag("consul.user", "The user the Consul agent runs as (a name or a uid): only the connections its listeners accepted count. By default, the owner of the listener the agent's address reaches (--consul.server or CONSUL_HTTP_ADDR, else 127.0.0.1 at the first watched HTTP port, or where nothing listens on that port the others).").
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
// CONSUL_HTTP_ADDR (--consul.server, or that variable), or, where neither
// gives one (or a unix socket), Consul's default client_addr, 127.0.0.1, at
// the first watched HTTP port (and, for its listeners, at the others). A name is looked up at each Resolve, so
// that one that does not resolve now is tried again, never taken for
// 127.0.0.1. It is also where the exporter's own reads of the agent go
// (Agent), once the listeners say which of its addresses is the agent's.
type Address struct {
	host   string // a name, or an address
	port   uint16
	ip     netip.Addr // host, where it is an address
	given  bool
	others []uint16 // the default's other watched HTTP ports (Where)

	mu     sync.Mutex
	last   []netip.Addr   // the last resolution that worked
	agent  netip.AddrPort // the address whose listener is the agent's, as last judged
	judged bool
}

// ParseAddress reads server as the consul CLI reads CONSUL_HTTP_ADDR;
// httpPorts are the watched HTTP ports, the first the port where no
// address is given.
func ParseAddress(server string, httpPorts []uint16) (*Address, error) {
	a := &Address{host: "127.0.0.1", port: httpPorts[0], ip: netip.AddrFrom4([4]byte{127, 0, 0, 1}), others: httpPorts[1:]}
	if server == "" || strings.HasPrefix(server, "unix://") {
		return a, nil
	}
	a.others = nil
	scheme, rest, found := strings.Cut(server, "://")
	if !found {
		scheme, rest = "http", server
	}
	host, portWord, err := net.SplitHostPort(rest)
	switch {
	case err != nil && scheme == "https":
		host, portWord = rest, "443"
	case err != nil:
		host, portWord = rest, "80"
	}
	n, err := strconv.ParseUint(portWord, 10, 16)
	if err != nil || n == 0 || host == "" {
		return nil, fmt.Errorf("the agent's address %q (--consul.server or CONSUL_HTTP_ADDR) is not host:port", server)
	}
	a.host, a.port, a.given, a.ip = host, uint16(n), true, netip.Addr{}
	if ip, err := netip.ParseAddr(host); err == nil {
		a.ip = local(ip)
	}
	return a, nil
}

// local is addr as a connection to it from this host reaches a listener:
// IPv4 unmapped, with no zone (listeners have none), and an unspecified
// address as the loopback of its family, which Linux connects it to.
func local(addr netip.Addr) netip.Addr {
	addr = addr.Unmap().WithZone("")
	switch addr {
	case netip.IPv4Unspecified():
		return netip.AddrFrom4([4]byte{127, 0, 0, 1})
	case netip.IPv6Unspecified():
		return netip.IPv6Loopback()
	}
	return addr
}

// lookupTimeout bounds a look-up of the agent's name: a name server that
// does not answer delays no collection past it.
const lookupTimeout = 2 * time.Second

// Port is the agent's HTTP port.
func (a *Address) Port() uint16 { return a.port }

// String is the address as given.
func (a *Address) String() string { return net.JoinHostPort(a.host, strconv.Itoa(int(a.port))) }

// Resolve looks the agent's host up: where the agent's clients reach it.
// Where it does not resolve, the error says so, and the addresses are the
// last ones it resolved to: none if it never did.
func (a *Address) Resolve(ctx context.Context) (Where, error) {
	if a.ip.IsValid() {
		return a.Last(), nil
	}
	ctx, cancel := context.WithTimeout(ctx, lookupTimeout)
	defer cancel()
	ips, err := net.DefaultResolver.LookupNetIP(ctx, "ip", a.host)
	if err == nil && len(ips) == 0 {
		err = errors.New("no address")
	}
	if err != nil {
		return a.Last(), fmt.Errorf("the agent's address %s does not resolve: %w", a.String(), err)
	}
	a.mu.Lock()
	a.last = a.last[:0]
	for _, ip := range ips {
		if ip = local(ip); !slices.Contains(a.last, ip) {
			a.last = append(a.last, ip)
		}
	}
	a.mu.Unlock()
	return a.Last(), nil
}

// Last is what the last Resolve gave, without a look-up.
func (a *Address) Last() Where {
	where := Where{Addrs: []netip.Addr{a.ip}, Port: a.port, Given: a.given, Others: a.others}
	if !a.ip.IsValid() {
		a.mu.Lock()
		where.Addrs = slices.Clone(a.last)
		a.mu.Unlock()
	}
	return where
}

// Judged keeps which of the agent's addresses reaches its own listener,
// as a judgement of the listeners found (invalid: none does, or it cannot
// be told), for Agent.
func (a *Address) Judged(agent netip.AddrPort) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.agent, a.judged = agent, true
}

// Agent is where the exporter's own reads of the agent go: the address of
// the agent's name whose listener is the agent's, as last judged; false
// where none is, or the listeners have not been judged (then the name, as
// given, is dialled).
func (a *Address) Agent() (netip.AddrPort, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.agent, a.judged
}
