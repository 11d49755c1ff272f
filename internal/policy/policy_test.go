package policy

import (
	"testing"

	"github.com/cilium/ebpf"
	"github.com/stretchr/testify/assert"
	"golang.org/x/sys/unix"
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
