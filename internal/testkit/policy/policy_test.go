package policy

import (
	"errors"
	"fmt"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/consul-conn-exporter/consul-conn-exporter/internal/kernel"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/testkit/programs"
)

// A program of a refused kind is refused as the kernel refuses it; one of
// another kind is not.
func TestAProgramOfARefusedKindIsRefusedWithEPERMUnderItsName(t *testing.T) {
	spec := &ebpf.CollectionSpec{Programs: map[string]*ebpf.ProgramSpec{
		"census": {Type: ebpf.Tracing, AttachType: ebpf.AttachTraceIter, AttachTo: "tcp"},
		"settle": {Type: ebpf.Tracing, AttachType: ebpf.AttachTraceIter, AttachTo: "bpf_map_elem"},
	}}
	err := MapElementIterators.Load(spec)
	assert.ErrorIs(t, err, unix.EPERM)
	assert.EqualError(t, err, "program settle: load program: operation not permitted")

	delete(spec.Programs, "settle")
	assert.NoError(t, MapElementIterators.Load(spec))
	assert.ErrorIs(t, Refusing{TCPIterator}.Load(spec), unix.EPERM)
}

// On a host whose policy refuses map-element iterators (as some machines
// this was built on do), loading one as root is said as the policy's
// refusal, with the program and the errno; on a host that allows them
// there is no refusal to say.
func TestARealRefusalUnderHeldCapabilitiesIsSaidAsAPolicys(t *testing.T) {
	programs.NotShort(t, "loads a kernel program")
	programs.NeedRoot(t, "load a kernel program")
	programs.NeedBTF(t)
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: "map_elements", Type: ebpf.Tracing, AttachType: ebpf.AttachTraceIter, AttachTo: "bpf_map_elem",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()}, License: "GPL",
	})
	if err == nil {
		p.Close()
		t.Skip("this kernel allows map-element iterators: no refusal to say (the events' tests stand in for one that refuses)")
	}
	require.ErrorIs(t, err, unix.EPERM, "refused for want of permission, not by the verifier")
	err = kernel.Explain(fmt.Errorf("program map_elements: %w", err), errUnavailable, "--source events", "Linux 5.15 or later")
	assert.ErrorIs(t, err, kernel.ErrPolicy)
	assert.Contains(t, err.Error(), "program map_elements")
	assert.Contains(t, err.Error(), "operation not permitted")
	assert.Contains(t, err.Error(), "a security policy (LSM) or kernel configuration refused it")
	assert.NotContains(t, err.Error(), "needs CAP_BPF")
}

var errUnavailable = errors.New("cannot count")
