// Package listeners tells the agent's listeners on the watched ports from
// anyone else's, and so which connections the agent accepted: the trust
// model every source is judged by (docs/sources.md). A connection counts
// only if one of the agent's listeners took it: its local address is one
// that an agent's listener of its family covers, and its socket's user,
// where the table gives it, is that listener's (the kernel gives an
// accepted socket its listener's user; a socket a local user planted on
// the port is its planter's). Listeners are few, and read apart from the
// connections: with the built-in reader, which gives each one's owner.
package listeners

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/consul-conn-exporter/consul-conn-exporter/internal/table/sockdiag"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/table/socket"
)

// Listener is a socket listening on a watched port.
type Listener struct {
	Local  netip.AddrPort // as the kernel keeps it: 0.0.0.0 or :: for a wildcard, v4-mapped kept
	UID    uint32         // its owner
	V6Only bool           // an IPv6 listener that takes no IPv4 connection
}

// Read reads the listeners on ports from the kernel's socket table, in the
// exporter's network namespace.
func Read(ctx context.Context, ports []uint16, timeout time.Duration) ([]Listener, error) {
	var ls []Listener
	r := sockdiag.New(ports, nil, []socket.State{socket.StateListen}, timeout)
	err := r.Read(ctx, func(s socket.Socket) {
		ls = append(ls, Listener{Local: s.Local, UID: s.UID, V6Only: s.V6Only})
	}, func() { ls = ls[:0] })
	if err != nil {
		return nil, fmt.Errorf("reading the listeners: %w", err)
	}
	return ls, nil
}

// Where is where the agent's clients reach it: the addresses of its HTTP
// API's host (a name may have several), at its port, and whether that
// address was given (--consul.server, CONSUL_HTTP_ADDR) or is Consul's
// default. Others are, for the default, the other watched HTTP ports,
// tried where nothing listens on the first, at any address: an agent that
// serves only HTTPS listens at one of them. (Where the first has a
// listener, it decides: another user's listener on a port the agent
// leaves free, such as 8501 with HTTPS off, decides nothing.)
type Where struct {
	Addrs  []netip.Addr
	Port   uint16
	Given  bool
	Others []uint16
}

// Agent is what the listeners say, for one collection: which watched ports
// anything listens on, how many users do, and whose listeners are the
// agent's.
type Agent struct {
	// Owners are, for every watched port, how many users listen on it (0:
	// nothing does).
	Owners map[uint16]int
	// At is the agent's address whose listener is the agent's, where the
	// exporter's own reads of it go; invalid where none is.
	At netip.AddrPort
	// Away says why no listener is the agent's on any port ("" where one
	// is): its given address reaches none (Down: the agent holds nothing
	// there, nothing counts), or which is the agent's cannot be told
	// (its address reaches listeners of several users; a name that never
	// resolved; Consul's default reaching none while something listens on
	// the watched ports): then no count can be given, a failed collection,
	// never a count of 0.
	Away string
	Down bool
	// user is the agent's user where known: the user pinned, else the
	// owner of the listener the agent's address reaches; on every port,
	// whether anything listens there now or not.
	user      *uint32
	listeners []Listener
}

// Judge draws the agent's listeners from ls, the listeners on ports (and on
// the port of the agent's address, where it is another). The agent's user
// is user where pinned (not nil); else the owner of the listener the
// kernel gives a connection to where (the address the agent's clients use:
// Consul's client_addr and HTTP port, or, where not given, 127.0.0.1 on
// the first watched HTTP port, else, where nothing listens on that port,
// on the others), that user on every port. Where the address reaches
// listeners of several users (a name with several addresses, the default's
// other ports owned apart), or was given and reaches none, no listener is
// the agent's: it is down, or elsewhere, or cannot be told, and that is
// said. Where it is the default and reaches none while anything listens on
// the watched ports, the agent's cannot be told either: no listener there
// is taken for it (another user's, with the agent down or listening
// elsewhere, was), and that is said.
func Judge(ls []Listener, ports []uint16, where Where, user *uint32) Agent {
	a := Agent{Owners: map[uint16]int{}, user: user, listeners: ls}
	var (
		owners  []uint32
		reached []string
	)
	for i, port := range append([]uint16{where.Port}, where.Others...) {
		if i == 1 && slices.ContainsFunc(ls, func(l Listener) bool { return l.Local.Port() == where.Port }) {
			break // something listens on the first port: it decides
		}
		for _, addr := range where.Addrs {
			at := netip.AddrPortFrom(addr, port)
			l := taking(ls, at)
			if l == nil {
				continue
			}
			reached = append(reached, fmt.Sprintf("%s: uid %d", at, l.UID))
			if !slices.Contains(owners, l.UID) {
				owners = append(owners, l.UID)
			}
			// The exporter's reads go to the address's own port only:
			// the one the consul CLI dials, of its scheme.
			if !a.At.IsValid() && port == where.Port && (user == nil || *user == l.UID) {
				a.At = at
			}
		}
	}
	switch {
	case user != nil:
	case len(owners) == 1:
		a.user = &owners[0]
	case len(owners) > 1 && !where.Given:
		a.At = netip.AddrPort{}
		a.Away = fmt.Sprintf("the agent's address is not given, nothing listens at Consul's default, 127.0.0.1, on the first watched HTTP port, and listeners of several users do on the others (%s): give the agent's address in --consul.server or CONSUL_HTTP_ADDR, or pin its user with --consul.user", strings.Join(reached, ", "))
	case len(owners) > 1:
		a.At = netip.AddrPort{}
		a.Away = fmt.Sprintf("the agent's address reaches listeners of several users (%s): pin the agent's with --consul.user, or give one address in --consul.server or CONSUL_HTTP_ADDR", strings.Join(reached, ", "))
	case where.Given && len(where.Addrs) == 0:
		a.Away = "the agent's address does not resolve, and never did: nothing counts until it does"
	case where.Given:
		a.Down = true
		a.Away = fmt.Sprintf("nothing listens at the agent's address (--consul.server or CONSUL_HTTP_ADDR) on port %d: it is down, or listens elsewhere", where.Port)
	default:
		for _, l := range ls {
			if slices.Contains(ports, l.Local.Port()) {
				reached = append(reached, fmt.Sprintf("%s: uid %d", l.Local, l.UID))
			}
		}
		if len(reached) > 0 {
			a.Away = fmt.Sprintf("the agent's address is not given, and 127.0.0.1 reaches no listener on the watched HTTP ports while others listen on the watched ports (%s): give the agent's address in --consul.server or CONSUL_HTTP_ADDR, or pin its user with --consul.user", strings.Join(reached, ", "))
		}
	}
	for _, p := range ports {
		var here []uint32
		for _, l := range ls {
			if l.Local.Port() == p && !slices.Contains(here, l.UID) {
				here = append(here, l.UID)
			}
		}
		a.Owners[p] = len(here)
	}
	return a
}

// Untold is why whose connections are the agent's cannot be told (Away,
// where the agent is not down): then no count can be given. Nil where it
// can, or where the listeners are not known (a nil agent).
func (a *Agent) Untold() error {
	if a == nil || a.Away == "" || a.Down {
		return nil
	}
	return errors.New(a.Away)
}

// Users are the agent's user on each watched port anything listens on,
// where it is known. Only its listeners' connections count there.
func (a Agent) Users() map[uint16]uint32 {
	users := map[uint16]uint32{}
	for p, n := range a.Owners {
		if n > 0 && a.user != nil {
			users[p] = *a.user
		}
	}
	return users
}

// taking is the listener the kernel gives a connection to addr, nil for
// none: for an IPv4 address, an IPv4 listener at it, or an IPv6 one at it
// v4-mapped, then an IPv4 wildcard, then an IPv6 one that takes IPv4; for
// an IPv6 address, an IPv6 listener at it, then an IPv6 wildcard. An IPv6
// wildcard with IPV6_V6ONLY never takes IPv4 connections, whoever bound it
// and whenever.
func taking(ls []Listener, addr netip.AddrPort) *Listener {
	host := addr.Addr().Unmap()
	var rank []func(Listener) bool
	if host.Is4() {
		mapped := netip.AddrFrom16(host.As16())
		rank = []func(Listener) bool{
			func(l Listener) bool { return l.Local.Addr() == host },
			func(l Listener) bool { return l.Local.Addr() == mapped && !l.V6Only },
			func(l Listener) bool { return l.Local.Addr() == netip.IPv4Unspecified() },
			func(l Listener) bool { return l.Local.Addr() == netip.IPv6Unspecified() && !l.V6Only },
		}
	} else {
		rank = []func(Listener) bool{
			func(l Listener) bool { return l.Local.Addr() == host },
			func(l Listener) bool { return l.Local.Addr() == netip.IPv6Unspecified() },
		}
	}
	for _, takes := range rank {
		for i, l := range ls {
			if l.Local.Port() == addr.Port() && takes(l) {
				return &ls[i]
			}
		}
	}
	return nil
}

// covering is the listener of the socket's own family that a connection
// whose server end is at local came through: the one at its address, else
// the wildcard of its family (:: takes v4-mapped ones unless IPV6_V6ONLY).
// An IPv4 socket is only ever an IPv4 listener's: a dual-stack listener's
// connections are IPv6 sockets, v4-mapped.
func (a Agent) covering(local netip.AddrPort) *Listener {
	var wildcard *Listener
	v4 := local.Addr().Is4()
	for i, l := range a.listeners {
		addr := l.Local.Addr()
		switch {
		case l.Local.Port() != local.Port() || addr.Is4() != v4:
		case addr == local.Addr():
			return &a.listeners[i]
		case addr.IsUnspecified() && !(l.V6Only && local.Addr().Is4In6()):
			wildcard = &a.listeners[i]
		}
	}
	return wildcard
}

// agents says whether l is one of the agent's listeners: one of its user's.
func (a Agent) agents(l *Listener) bool {
	return a.user != nil && *a.user == l.UID && a.Owners[l.Local.Port()] > 0
}

// Accepts says whether a server end, s, is a connection the agent accepted:
// an agent's listener covers its local address, and its user, where the
// table gives it, is that listener's. A socket with no file (one waiting
// in the listener's queue, not yet accepted) reads as root's on kernels
// whose table gives the file's owner (sock_i_uid) rather than the
// socket's: its user is not judged then.
func (a Agent) Accepts(s socket.Socket) bool {
	l := a.covering(s.Local)
	if l == nil || !a.agents(l) {
		return false
	}
	return !s.UIDKnown || (s.UID == 0 && s.Inode == 0) || s.UID == l.UID
}

// Serves says whether the server end at server, of a connection whose
// client end is on this host, is at one of the agent's listeners.
func (a Agent) Serves(server netip.AddrPort) bool {
	l := a.covering(server)
	return l != nil && a.agents(l)
}

// KernelUsers are the agent's user on each port, as the kernel programs
// take them (internal/kernel/counts.h's agent_users): where known, on every port,
// whether anything listens there now or not (an agent that starts
// listening is judged from its first connection); where the listeners are
// not known (a nil agent), anyUser: every listener's connections count
// there, as they do here; elsewhere (the agent down, or not to be told),
// untold: nothing counts, and a close that may be a refusal (of an agent
// starting again, before the next collection) is untracked.
func KernelUsers(a *Agent, ports []uint16, anyUser, untold uint32) map[uint16]uint32 {
	users := map[uint16]uint32{}
	for _, p := range ports {
		switch {
		case a == nil:
			users[p] = anyUser
		case a.user != nil:
			users[p] = *a.user
		default:
			users[p] = untold
		}
	}
	return users
}

// Quiet are the watched ports nothing listens on, in order.
func (a Agent) Quiet() []uint16 {
	var quiet []uint16
	for p, n := range a.Owners {
		if n == 0 {
			quiet = append(quiet, p)
		}
	}
	slices.Sort(quiet)
	return quiet
}

// Shared are the watched ports several users listen on, in order.
func (a Agent) Shared() []uint16 {
	var shared []uint16
	for p, n := range a.Owners {
		if n > 1 {
			shared = append(shared, p)
		}
	}
	slices.Sort(shared)
	return shared
}

// elsewhere are the watched ports others listen on and the agent's user
// does not: none of their connections count.
func (a Agent) elsewhere() []uint16 {
	var ports []uint16
	if a.user == nil {
		return nil
	}
	for p, n := range a.Owners {
		if n == 0 || slices.ContainsFunc(a.listeners, func(l Listener) bool { return l.Local.Port() == p && l.UID == *a.user }) {
			continue
		}
		ports = append(ports, p)
	}
	slices.Sort(ports)
	return ports
}

// QuietReason says which watched ports nothing listens on, or why no
// listener is the agent's, "" when the agent listens on every one: the
// words of the log and of check alike.
func (a Agent) QuietReason() string {
	var reasons []string
	if quiet := a.Quiet(); len(quiet) > 0 {
		reasons = append(reasons, "nothing listens on port "+Ports(quiet)+": a wrong --port, --rpc.port or --grpc.port, or the agent is down")
	}
	if a.Away != "" {
		reasons = append(reasons, a.Away+"; none of the connections on the watched ports count")
	}
	return strings.Join(reasons, "; ")
}

// SharedReason says where users other than the agent's listen on a watched
// port and what counts then, "" where none does: the words of the log and
// of check alike.
func (a Agent) SharedReason() string {
	var filtered []string
	for _, p := range a.Shared() {
		if a.user != nil {
			filtered = append(filtered, fmt.Sprintf("%d (the agent's: uid %d)", p, *a.user))
		}
	}
	reasons := make([]string, 0, 3)
	if len(filtered) > 0 {
		reasons = append(reasons, "several users listen on port "+strings.Join(filtered, ", ")+": only the connections to the agent's listeners count")
	}
	if away := a.elsewhere(); len(away) > 0 {
		reasons = append(reasons, fmt.Sprintf("the agent's user (uid %d) does not listen on port %s, another does: none of its connections count", *a.user, Ports(away)))
	}
	return strings.Join(reasons, "; ")
}

// Ports is "8500, 8501".
func Ports(ports []uint16) string {
	words := make([]string, len(ports))
	for i, p := range ports {
		words[i] = strconv.Itoa(int(p))
	}
	return strings.Join(words, ", ")
}
