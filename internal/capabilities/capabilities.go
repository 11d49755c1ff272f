// Package capabilities confines the exporter once what needed privilege is
// done (its kernel programs loaded): every thread keeps only the
// capabilities its enabled features still use, and so does every program
// it runs, root included.
//
// It uses libcap's cap and psx packages, which change every thread of the
// process with cgo or without (a plain go build is a cgo build wherever a
// C compiler is installed).
package capabilities

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"

	"kernel.org/pub/linux/libs/security/libcap/cap"
)

// The capabilities a running exporter may still need.
const (
	DACReadSearch = cap.DAC_READ_SEARCH // other users' /proc/PID/fd (the walk of --clients.processes)
	SysPtrace     = cap.SYS_PTRACE      // the same
)

// prSetNoNewPrivs is PR_SET_NO_NEW_PRIVS (include/uapi/linux/prctl.h).
const prSetNoNewPrivs = 38

// Confine keeps only keep (those of it the exporter holds: it says which),
// for good, in every thread and in every program the exporter runs from
// then on:
//   - the effective, permitted and inheritable sets hold keep alone, and
//     the ambient set holds keep, so that a program run by a user other
//     than root keeps them too (a --command that needs them);
//   - no_new_privs is set: a program run (root's included, and setuid or
//     file capabilities) gets at most the exporter's permitted set;
//   - the bounding set is cleared of the rest where the exporter may
//     (CAP_SETPCAP, which root has).
func Confine(keep ...cap.Value) ([]cap.Value, error) {
	if err := reachEveryThread(); err != nil {
		return nil, err
	}
	missing := Missing(keep...)
	keep = slices.DeleteFunc(slices.Clone(keep), func(v cap.Value) bool { return slices.Contains(missing, v) })
	if have, _ := cap.GetProc().GetFlag(cap.Effective, cap.SETPCAP); have {
		for v := range cap.MaxBits() {
			if !slices.Contains(keep, v) {
				if err := cap.DropBound(v); err != nil {
					return nil, fmt.Errorf("dropping %s from the bounding set: %w", v, err)
				}
			}
		}
	}
	if _, err := cap.Prctlw(prSetNoNewPrivs, 1, 0, 0, 0); err != nil {
		return nil, fmt.Errorf("setting no_new_privs: %w", err)
	}
	set := cap.NewSet()
	for _, flag := range []cap.Flag{cap.Effective, cap.Permitted, cap.Inheritable} {
		if err := set.SetFlag(flag, true, keep...); err != nil {
			return nil, err
		}
	}
	if err := set.SetProc(); err != nil {
		return nil, fmt.Errorf("dropping capabilities to %s: %w", Names(keep), err)
	}
	if err := cap.ResetAmbient(); err != nil {
		return nil, fmt.Errorf("clearing the ambient capabilities: %w", err)
	}
	if len(keep) > 0 {
		if err := cap.SetAmbient(true, keep...); err != nil {
			return nil, fmt.Errorf("keeping %s for the programs the exporter runs: %w", Names(keep), err)
		}
	}
	return keep, nil
}

// ErrThreadsOutOfReach is a build with cgo on a host without /proc: it
// cannot change every thread.
var ErrThreadsOutOfReach = errors.New("cannot drop capabilities in every thread")

// reachEveryThread says whether Confine can change every thread. Without
// cgo the Go runtime does it; with cgo, libcap's psx lists
// /proc/PID/task, and aborts the process where it cannot.
func reachEveryThread() error {
	if !withCgo {
		return nil
	}
	task := fmt.Sprintf("/proc/%d/task", os.Getpid())
	if _, err := os.Stat(task); err != nil {
		return fmt.Errorf("%w: a build with cgo reaches them through %s, which is not there (mount /proc, or build without cgo: CGO_ENABLED=0, as the release is)", ErrThreadsOutOfReach, task)
	}
	return nil
}

// Missing are those of want the exporter does not hold (in its permitted
// set).
func Missing(want ...cap.Value) []cap.Value {
	have := cap.GetProc()
	return slices.DeleteFunc(slices.Clone(want), func(v cap.Value) bool {
		held, _ := have.GetFlag(cap.Permitted, v)
		return held
	})
}

// Parse reads capability names as systemd and capsh write them
// (CAP_SYS_ADMIN, or sys_admin).
func Parse(names []string) ([]cap.Value, error) {
	var values []cap.Value
	for _, name := range names {
		v, err := cap.FromName("cap_" + strings.TrimPrefix(strings.ToLower(name), "cap_"))
		if err != nil {
			return nil, fmt.Errorf("%q is not a capability (e.g. CAP_SYS_ADMIN)", name)
		}
		values = append(values, v)
	}
	return values, nil
}

// Names is keep as a log line says it: "none", or CAP_X,CAP_Y.
func Names(keep []cap.Value) string {
	if len(keep) == 0 {
		return "none"
	}
	names := make([]string, len(keep))
	for i, v := range keep {
		names[i] = strings.ToUpper(v.String())
	}
	return strings.Join(names, ",")
}
