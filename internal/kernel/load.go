package kernel

import (
	"errors"
	"fmt"
	"os"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
	"kernel.org/pub/linux/libs/security/libcap/cap"

	"github.com/consul-conn-exporter/consul-conn-exporter/internal/say"
)

// ErrPolicy is a refusal for want of permission while the exporter held
// every capability the programs need: a security policy's (an LSM's), or
// the kernel's configuration, not a lack of privilege nor a fault of the
// programs.
var ErrPolicy = errors.New("a security policy (LSM) or kernel configuration refused it")

// Explain is err, from loading or attaching the programs of the feature
// named by flag, as one line under unavailable: the capabilities to grant,
// the policy that refused them, or the kernel needed (kernel: "Linux 5.15
// or later").
func Explain(err error, unavailable error, flag, kernel string) error {
	return explain(err, unavailable, flag, kernel, privileged())
}

// explain is Explain, told whether the exporter holds the capabilities.
func explain(err error, unavailable error, flag, kernel string, privileged bool) error {
	var verifier *ebpf.VerifierError
	switch {
	case errors.As(err, &verifier) && !errors.Is(err, unix.EPERM):
		// Before the permission: the verifier's refusal is an EACCES too
		// (a lack of privilege is EPERM). Its log is many lines; its last
		// says why.
		return fmt.Errorf("%w: this kernel refused the programs of %s (%s): %v", unavailable, flag, kernel, say.Fold(err.Error()))
	case errors.Is(err, os.ErrPermission) && privileged:
		// The error names the program (cilium/ebpf's "program NAME: ...").
		return fmt.Errorf("%w: the kernel refused the programs of %s while the exporter held CAP_BPF and CAP_PERFMON (%s): %w",
			unavailable, flag, say.Fold(err.Error()), ErrPolicy)
	case errors.Is(err, os.ErrPermission):
		return fmt.Errorf("%w: %s needs CAP_BPF and CAP_PERFMON (or root) to load its kernel programs: "+
			"systemd AmbientCapabilities=CAP_BPF CAP_PERFMON, Kubernetes securityContext.capabilities.add [BPF, PERFMON], docker --cap-add BPF --cap-add PERFMON", unavailable, flag)
	case errors.Is(err, ebpf.ErrNotSupported):
		return fmt.Errorf("%w: this kernel cannot attach the programs of %s (%s, with BTF): %v", unavailable, flag, kernel, err)
	}
	return fmt.Errorf("%w: %v", unavailable, say.Fold(err.Error()))
}

// Unprivileged is err, from reading a map or opening an iterator of the
// exporter's own once it has dropped its capabilities, with what to do
// where the kernel refused it for want of CAP_BPF.
func Unprivileged(err error) error {
	if !errors.Is(err, os.ErrPermission) {
		return err
	}
	return fmt.Errorf("%w: this kernel lets only CAP_BPF use the programs' maps and iterators while kernel.unprivileged_bpf_disabled is set "+
		"(maps before Linux 5.19, iterators before 6.5), and the exporter drops every capability once they are loaded: "+
		"run a later kernel, or set kernel.unprivileged_bpf_disabled=0", err)
}

// privileged says whether the exporter holds what loading the programs
// needs: CAP_BPF and CAP_PERFMON, or CAP_SYS_ADMIN.
func privileged() bool {
	have := cap.GetProc()
	held := func(v cap.Value) bool {
		on, _ := have.GetFlag(cap.Effective, v)
		return on
	}
	return held(cap.SYS_ADMIN) || held(cap.BPF) && held(cap.PERFMON)
}
