// Package capabilities drops the process's Linux capabilities once what
// needed them is done (the refusals' kernel program loaded): the
// long-running part then cannot load programs or do anything else
// privileged, root included.
package capabilities

import (
	"errors"
	"fmt"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The capabilities a running exporter may still need.
const (
	DACReadSearch = unix.CAP_DAC_READ_SEARCH // other users' /proc/PID/fd (--clients.processes)
	SysPtrace     = unix.CAP_SYS_PTRACE      // the same
)

// DropAllBut keeps only keep in every thread's effective and permitted sets
// (and none inheritable, so none ambient), for good.
func DropAllBut(keep ...int) error {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	for _, c := range keep {
		data[c/32].Effective |= 1 << (c % 32)
		data[c/32].Permitted |= 1 << (c % 32)
	}
	// Capabilities belong to threads, and Go runs on several: all of them.
	_, _, errno := syscall.AllThreadsSyscall(unix.SYS_CAPSET, uintptr(unsafe.Pointer(&hdr)), uintptr(unsafe.Pointer(&data[0])), 0)
	switch {
	case errno == syscall.ENOTSUP:
		return errors.New("dropping capabilities in every thread needs a binary built without cgo (CGO_ENABLED=0, as deploy/build.sh builds)")
	case errno != 0:
		return fmt.Errorf("dropping capabilities: %w", errno)
	}
	return nil
}
