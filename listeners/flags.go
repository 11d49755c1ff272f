package listeners

import (
	"fmt"
	"net"
	"net/netip"
	"os/user"
	"strconv"
	"strings"

	"github.com/alecthomas/kingpin/v2"
)

// Flags say whose listeners are the agent's.
type Flags struct {
	user string
}

// AddFlags declares the listeners' flag on app.
func AddFlags(app *kingpin.Application) *Flags {
	f := &Flags{}
	app.Flag("consul.user", "The user the Consul agent runs as (a name or a uid): where several users listen on a watched port, only the connections to its listeners count. By default, the owner of the listener at the agent's address (CONSUL_HTTP_ADDR's host, 127.0.0.1 by default) or of a wildcard one.").
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

// AgentAddr is the address the agent's clients use, from server as the
// consul CLI reads CONSUL_HTTP_ADDR (--consul.server, or that variable):
// its host, 127.0.0.1 where it is empty or not an address (a name is
// looked up).
func AgentAddr(server string) netip.Addr {
	fallback := netip.AddrFrom4([4]byte{127, 0, 0, 1})
	addr := server
	if addr == "" || strings.HasPrefix(addr, "unix://") {
		return fallback
	}
	if _, rest, ok := strings.Cut(addr, "://"); ok {
		addr = rest
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		host = addr
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		return ip.Unmap()
	}
	ips, err := net.LookupIP(host)
	if err != nil || len(ips) == 0 {
		return fallback
	}
	for _, ip := range ips { // IPv4 first, as localhost is 127.0.0.1 to the agent's default client_addr
		if v4 := ip.To4(); v4 != nil {
			return netip.AddrFrom4([4]byte(v4))
		}
	}
	ip, _ := netip.AddrFromSlice(ips[0])
	return ip.Unmap()
}
