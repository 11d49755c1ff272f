// Package refusals counts, in the kernel, the connections Consul refuses
// past its per-client limits, per client, as they happen: Consul writes
// its 429 and closes without reading the request (or the RPC server closes
// a connection whose first byte came), so the kernel resets it, and a small
// eBPF program on the tcp_send_reset tracepoint counts each reset a socket
// of a watched port sends. Consul itself keeps no count.
//
// The program is written with cilium/ebpf's asm, in Go (program.go): no C
// compiler, no generated object to keep in step with a source. It reads the
// kernel's struct layout from its BTF, so it follows the kernel it runs on.
package refusals

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"

	"github.com/consul-conn-exporter/consul-conn-exporter/tally"
)

// ErrUnavailable is a kernel or a host that cannot count refusals: the
// error says what is missing and how to get it.
var ErrUnavailable = errors.New("cannot count refusals")

// Counter is the attached program and its maps.
type Counter struct {
	maps   *maps
	link   link.Link
	groups int
}

// Load attaches the program that counts the refusals of each group's ports
// (groups[i] are group i's ports). It needs CAP_BPF and CAP_PERFMON (or
// root), and a kernel with BTF.
func Load(groups [][]uint16) (*Counter, error) {
	spec, err := btf.LoadKernelSpec()
	if err != nil {
		return nil, fmt.Errorf("%w: this kernel has no BTF (/sys/kernel/btf/vmlinux: CONFIG_DEBUG_INFO_BTF, Linux 5.5 or later): %v", ErrUnavailable, err)
	}
	l, err := readLayout(spec)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	m, err := newMaps(len(groups))
	if err != nil {
		return nil, explain(err)
	}
	lk, err := attach(spec, l, m, groups)
	if err != nil {
		m.Close()
		return nil, explain(err)
	}
	return &Counter{maps: m, link: lk, groups: len(groups)}, nil
}

// attach fills the ports map with each group's ports, and attaches the
// program that counts with m.
func attach(spec *btf.Spec, l layout, m *maps, groups [][]uint16) (link.Link, error) {
	for group, ports := range groups {
		for _, p := range ports {
			var key [2]byte
			binary.BigEndian.PutUint16(key[:], p)
			if err := m.ports.Put(key, uint32(group)); err != nil {
				return nil, err
			}
		}
	}
	prog, err := ebpf.NewProgramWithOptions(&ebpf.ProgramSpec{
		Name:         "ccx_refusals",
		Type:         ebpf.Tracing,
		AttachType:   ebpf.AttachTraceRawTp,
		AttachTo:     "tcp_send_reset",
		Instructions: program(l, m),
		License:      "Dual MIT/GPL",
	}, ebpf.ProgramOptions{KernelTypes: spec})
	if err != nil {
		return nil, err
	}
	defer prog.Close() // the link holds it
	return link.AttachTracing(link.TracingOptions{Program: prog, AttachType: ebpf.AttachTraceRawTp})
}

// explain says what a refusal to load means and how to grant what lacks.
func explain(err error) error {
	if errors.Is(err, os.ErrPermission) {
		return fmt.Errorf("%w: --refusals needs CAP_BPF and CAP_PERFMON (or root) to load its kernel program: "+
			"systemd AmbientCapabilities=CAP_BPF CAP_PERFMON, Kubernetes securityContext.capabilities.add [BPF, PERFMON], docker --cap-add BPF --cap-add PERFMON (%v)", ErrUnavailable, err)
	}
	if errors.Is(err, ebpf.ErrNotSupported) {
		return fmt.Errorf("%w: this kernel cannot attach a BTF tracepoint program (Linux 5.5 or later): %v", ErrUnavailable, err)
	}
	return fmt.Errorf("%w: %v", ErrUnavailable, err)
}

// Close detaches the program.
func (c *Counter) Close() {
	c.link.Close()
	c.maps.Close()
}

// Group is one group's refusals since the program was attached.
type Group struct {
	// Total is exact, whatever the map of clients evicted.
	Total uint64
	// Top are the clients with the most refusals, in tally.Compare's
	// order, at most top.
	Top []tally.ClientCount
}

// Snapshot reads each group's refusals, with its top busiest clients
// (addresses unmapped, as the connection counts have them).
func (c *Counter) Snapshot(top int) ([]Group, error) {
	groups := make([]Group, c.groups)
	for g := range groups {
		if err := c.maps.totals.Lookup(uint32(g), &groups[g].Total); err != nil {
			return nil, fmt.Errorf("reading the refusals: %w", err)
		}
	}
	// Each key is one client of one group (IPv4 clients are v4-mapped
	// either way), so the busiest are kept as they come: memory stays that
	// of top clients, however full the map.
	var (
		key   [keySize]byte
		count uint64
	)
	it := c.maps.clients.Iterate()
	for it.Next(&key, &count) {
		g := int(binary.NativeEndian.Uint32(key[:4]))
		if g >= len(groups) {
			continue
		}
		client := tally.ClientCount{Client: netip.AddrFrom16([16]byte(key[4:])).Unmap(), Count: int(count)}
		groups[g].Top = tally.Keep(groups[g].Top, client, top)
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("reading the refusals: %w", err)
	}
	return groups, nil
}
