// Package kernel is what the exporter's kernel programs share: their C
// headers (the kernel's types, and the per-client counts of counts.h,
// whose held word's layout is defined here, held.go), the exporter's
// network namespace, the watched ports' groups, the agent's users, the
// maps the events share with the refusals, and what a kernel's refusal to
// load them means. The programs are the features beside it: events
// (connection counts), refusals, owners (program names).
package kernel

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// SharedMaps are the maps of the events' programs (--source events) that say
// what each client holds as it happens: shared, each refusal is judged by
// the limiter's own rule too.
type SharedMaps struct {
	// Sockets is their socket storage; Clients their per-client state;
	// Limits each group's limit as the exporter last read it; AgentUsers
	// the agent's user on each watched port.
	Sockets, Clients, Limits, AgentUsers *ebpf.Map
}

// AnyUser, as the agent's user on a port, is a port whose listeners are
// not known (--command): every listener's connections count there. It is
// counts.h's ANY_USER. UntoldUser is a port whose agent's listener
// cannot be told from others' (listeners.Agent.Away): nothing counts
// there, and a close that may be a refusal is untracked. It is UNTOLD.
const (
	AnyUser    = ^uint32(0)
	UntoldUser = ^uint32(1)
)

// WriteUsers makes m, agent_users of counts.h, say users: the agent's
// user on each watched port (AnyUser: any), none on a port left out. It
// says whether anything changed.
func WriteUsers(m *ebpf.Map, users map[uint16]uint32) (changed bool, err error) {
	var (
		port  uint16
		uid   uint32
		stale []uint16
	)
	it := m.Iterate()
	for it.Next(&port, &uid) {
		if want, ok := users[port]; !ok || want != uid {
			stale = append(stale, port)
		}
	}
	if err := it.Err(); err != nil {
		return false, fmt.Errorf("reading the agent's users in the kernel: %w", err)
	}
	for _, port := range stale {
		if err := m.Delete(port); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return false, fmt.Errorf("writing the agent's users in the kernel: %w", err)
		}
		changed = true
	}
	for port, uid := range users {
		var have uint32
		if err := m.Lookup(port, &have); err == nil && have == uid {
			continue
		}
		if err := m.Put(port, uid); err != nil {
			return changed, fmt.Errorf("writing the agent's users in the kernel: %w", err)
		}
		changed = true
	}
	return changed, nil
}

// MaxGroups is how many limiter groups the programs tell apart: port_groups
// holds 1 + a group in a byte, 0 for a port not watched.
const MaxGroups = 255

// PortGroups is port_groups of counts.h, which both programs read:
// each port, by its number, to 1 + its group (groups[i] are group i's
// ports), 0 for a port not watched. The flags allow no more than
// MaxGroups groups.
func PortGroups(groups [][]uint16) *[65536]uint8 {
	var of [65536]uint8
	for group, ports := range groups[:min(len(groups), MaxGroups)] {
		for _, p := range ports {
			of[p] = uint8(group) + 1
		}
	}
	return &of
}

// Namespace is the exporter's network namespace, as the kernel numbers it
// (the inode of /proc/self/ns/net): the one whose sockets count.
func Namespace() (uint32, error) {
	var st unix.Stat_t
	if err := unix.Stat("/proc/thread-self/ns/net", &st); err != nil {
		return 0, fmt.Errorf("reading the exporter's network namespace: %w", err)
	}
	return uint32(st.Ino), nil
}

// RecursionMisses sums the times the kernel skipped programs because one
// was already running on that CPU (a socket's change in an interrupt of
// another's): each a change not seen.
func RecursionMisses(programs ...*ebpf.Program) (uint64, error) {
	var n uint64
	for _, p := range programs {
		stats, err := p.Stats()
		if err != nil {
			return 0, fmt.Errorf("reading the kernel programs' statistics: %w", err)
		}
		n += stats.RecursionMisses
	}
	return n, nil
}
