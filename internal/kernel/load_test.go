package kernel

import (
	"errors"
	"fmt"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/stretchr/testify/assert"
	"golang.org/x/sys/unix"
)

var errUnavailable = errors.New("cannot count")

// The verifier's refusal is an EACCES, as a lack of privilege can be: it
// must name the kernel, not ask for capabilities the exporter has.
func TestAVerifiersRefusalNamesTheKernelAndALackOfPrivilegeTheCapabilities(t *testing.T) {
	refused := fmt.Errorf("load program: %w", &ebpf.VerifierError{Cause: unix.EACCES, Log: []string{"0: (b7) r0 = 0", "R1 invalid variable buffer offset"}})
	err := explain(refused, errUnavailable, "--source events", "Linux 5.15 or later", true)
	assert.ErrorIs(t, err, errUnavailable)
	assert.Contains(t, err.Error(), "this kernel refused the programs of --source events (Linux 5.15 or later)")
	assert.Contains(t, err.Error(), "R1 invalid variable buffer offset")
	assert.NotContains(t, err.Error(), "CAP_BPF")

	for _, denied := range []error{
		fmt.Errorf("map create: %w", unix.EPERM),
		fmt.Errorf("load program: %w", &ebpf.VerifierError{Cause: unix.EPERM}),
	} {
		err := explain(denied, errUnavailable, "--refusals", "Linux 5.12 or later", false)
		assert.Contains(t, err.Error(), "--refusals needs CAP_BPF and CAP_PERFMON (or root)")
		assert.NotErrorIs(t, err, ErrPolicy)
	}
}

// Refused for want of permission while every capability was held: a
// policy's refusal, said as such, with the program and the errno, never
// as a lack of capabilities.
func TestARefusalWhileTheCapabilitiesAreHeldIsAPolicys(t *testing.T) {
	denied := fmt.Errorf("program settle: load program: %w", &ebpf.VerifierError{Cause: unix.EPERM})
	err := explain(denied, errUnavailable, "--source events", "Linux 5.15 or later", true)
	assert.ErrorIs(t, err, errUnavailable)
	assert.ErrorIs(t, err, ErrPolicy)
	assert.Contains(t, err.Error(), "program settle")
	assert.Contains(t, err.Error(), "operation not permitted")
	assert.Contains(t, err.Error(), "a security policy (LSM) or kernel configuration refused it")
	assert.NotContains(t, err.Error(), "needs CAP_BPF")
}

// A kernel that lets only CAP_BPF use the maps (before Linux 5.19, with
// unprivileged BPF off) is said with what to do; another failure as it is.
func TestAMapRefusedToTheConfinedExporterSaysWhy(t *testing.T) {
	err := Unprivileged(fmt.Errorf("lookup: %w", unix.EPERM))
	assert.ErrorIs(t, err, unix.EPERM)
	assert.Contains(t, err.Error(), "kernel.unprivileged_bpf_disabled")
	other := fmt.Errorf("lookup: %w", unix.EBADF)
	assert.Equal(t, other, Unprivileged(other))
}
