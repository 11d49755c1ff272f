// Package listeners tells the agent's listeners on the watched ports from
// anyone else's, and so which connections the agent accepted: a connection
// is matched by its local address, an address nobody else listens on at the
// agent's port being free for any local user to take (Consul listens on
// 127.0.0.1 alone by default). Listeners are few, and read apart from the
// connections: with the built-in reader, which gives each one's owner.
package listeners

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/consul-conn-exporter/consul-conn-exporter/sockdiag"
	"github.com/consul-conn-exporter/consul-conn-exporter/socket"
)

// Listener is a socket listening on a watched port.
type Listener struct {
	Local netip.AddrPort // as the kernel keeps it: 0.0.0.0 or :: for a wildcard, v4-mapped kept
	UID   uint32         // its owner
}

// Read reads the listeners on ports from the kernel's socket table, in the
// exporter's network namespace.
func Read(ctx context.Context, ports []uint16, timeout time.Duration) ([]Listener, error) {
	var ls []Listener
	r := sockdiag.New(ports, nil, []socket.State{socket.StateListen}, timeout)
	err := r.Read(ctx, func(s socket.Socket) {
		ls = append(ls, Listener{Local: s.Local, UID: s.UID})
	}, func() { ls = ls[:0] })
	if err != nil {
		return nil, fmt.Errorf("reading the listeners: %w", err)
	}
	return ls, nil
}

// Agent is what the listeners say, for one collection: which watched ports
// anything listens on, how many users do, and whose listeners are the
// agent's.
type Agent struct {
	// Owners are, for every watched port, how many users listen on it (0:
	// nothing does).
	Owners map[uint16]int
	// UIDs are, for each watched port several users listen on, the
	// agent's user there, drawn from that port's listeners alone: on it,
	// only connections to that user's listeners count. Filtered is set
	// where there is one.
	UIDs     map[uint16]uint32
	Filtered bool
	// Undecided says where the agent's listeners could not be told from
	// the others' ("" where they could, or did not need to be): there,
	// every connection counts, as without this check.
	Undecided string
	listeners []Listener
}

// Judge draws the agent's listeners from ls, the listeners on ports, port
// by port. Where one user holds every listener of a port, they are the
// agent's. Where several do, the agent's user is pinned (user, when not
// nil), or else the owner of that port's listener at agentAddr (the
// address the agent's clients use, CONSUL_HTTP_ADDR's host: Consul's
// client_addr), or of a wildcard one: a listener on another port (another
// user's at the agent's address on 8300) never decides this one.
func Judge(ls []Listener, ports []uint16, agentAddr netip.Addr, user *uint32) Agent {
	a := Agent{Owners: map[uint16]int{}, UIDs: map[uint16]uint32{}, listeners: ls}
	agentAddr = agentAddr.Unmap()
	var undecided []uint16
	for _, p := range ports {
		var here []uint32
		for _, l := range ls {
			if l.Local.Port() == p && !slices.Contains(here, l.UID) {
				here = append(here, l.UID)
			}
		}
		a.Owners[p] = len(here)
		switch {
		case len(here) < 2:
		case user != nil:
			a.UIDs[p] = *user
		default:
			if uid, found := agentOn(ls, p, agentAddr); found {
				a.UIDs[p] = uid
			} else {
				undecided = append(undecided, p)
			}
		}
	}
	a.Filtered = len(a.UIDs) > 0
	if len(undecided) > 0 {
		a.Undecided = fmt.Sprintf("several users listen on port %s and none at the agent's address %s: pin the agent's with --consul.user", Ports(undecided), agentAddr)
	}
	return a
}

// agentOn is the owner of the listener on port at the agent's address, or
// else of a wildcard one.
func agentOn(ls []Listener, port uint16, agentAddr netip.Addr) (uid uint32, found bool) {
	for _, l := range ls {
		addr := l.Local.Addr().Unmap()
		switch {
		case l.Local.Port() != port:
		case addr == agentAddr:
			return l.UID, true
		case addr.IsUnspecified() && !found:
			uid, found = l.UID, true
		}
	}
	return uid, found
}

// Accepts says whether a connection whose server end's local address is
// local counts: always, unless several users listen on its port, and then
// when the listener it came through is the agent's on that port (the one at
// its address, or else the wildcard of its family). A connection no
// listener matches any more (its listener closed) counts.
func (a Agent) Accepts(local netip.AddrPort) bool {
	uid, filtered := a.UIDs[local.Port()]
	if !filtered {
		return true
	}
	var wildcard *Listener
	for i, l := range a.listeners {
		switch {
		case l.Local.Port() != local.Port():
		case l.Local.Addr() == local.Addr():
			return l.UID == uid
		case l.Local.Addr().IsUnspecified() && l.Local.Addr().Is4() == local.Addr().Is4():
			// 0.0.0.0 takes IPv4 connections; :: takes IPv6 ones and, on a
			// dual-stack socket, IPv4 ones v4-mapped.
			wildcard = &a.listeners[i]
		}
	}
	return wildcard == nil || wildcard.UID == uid
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

// QuietReason says which watched ports nothing listens on, "" when every
// one has a listener: the words of the log and of check alike.
func (a Agent) QuietReason() string {
	quiet := a.Quiet()
	if len(quiet) == 0 {
		return ""
	}
	return "nothing listens on port " + Ports(quiet) + ": a wrong --port or --rpc.port, or the agent is down"
}

// SharedReason says where several users listen on a watched port and what
// counts then, "" where none does: the words of the log and of check alike.
func (a Agent) SharedReason() string {
	var filtered []string
	for _, p := range a.Shared() {
		if uid, ok := a.UIDs[p]; ok {
			filtered = append(filtered, fmt.Sprintf("%d (the agent's: uid %d)", p, uid))
		}
	}
	reasons := make([]string, 0, 2)
	if len(filtered) > 0 {
		reasons = append(reasons, "several users listen on port "+strings.Join(filtered, ", ")+": only the connections to the agent's listeners there count")
	}
	if a.Undecided != "" {
		reasons = append(reasons, a.Undecided)
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
