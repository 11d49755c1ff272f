// Package policy stands in, for the tests, for a host whose security policy
// (an LSM) refuses some kinds of kernel programs, as hosts in the field do
// (map-element iterators, above all, as machines this was built on do):
// a test cannot make a kernel refuse them (that takes a BPF LSM program,
// which such hosts refuse too), so on any host a test loads the
// exporter's programs through the refusal such a kernel gives.
package policy

import (
	"fmt"
	"maps"
	"slices"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// Kind is a kind of kernel program: its type and attach type, and for an
// iterator its target ("bpf_map_elem").
type Kind struct {
	Type       ebpf.ProgramType
	AttachType ebpf.AttachType
	Target     string
}

// MapElementIterators are the iterators over a map's elements.
var MapElementIterators = Refusing{
	{ebpf.Tracing, ebpf.AttachTraceIter, "bpf_map_elem"},
	{ebpf.Tracing, ebpf.AttachTraceIter, "bpf_sk_storage_map"},
	{ebpf.Tracing, ebpf.AttachTraceIter, "sockmap"},
}

// TCPIterator is the iterator over the TCP sockets.
var TCPIterator = Kind{ebpf.Tracing, ebpf.AttachTraceIter, "tcp"}

// Refusing is a host that refuses kinds of programs.
type Refusing []Kind

// Load is what loading spec gets from such a host: the refusal of its
// first program of a refused kind, as the kernel gives it (EPERM, under the
// program's name, as cilium/ebpf says it), or nil where none is.
func (r Refusing) Load(spec *ebpf.CollectionSpec) error {
	for _, name := range slices.Sorted(maps.Keys(spec.Programs)) {
		p := spec.Programs[name]
		for _, k := range r {
			if p.Type == k.Type && p.AttachType == k.AttachType && (k.Target == "" || p.AttachTo == k.Target) {
				return fmt.Errorf("program %s: load program: %w", name, unix.EPERM)
			}
		}
	}
	return nil
}
