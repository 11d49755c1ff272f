// Package owners names the programs holding sockets, by their inodes: one
// walk of /proc/PID/fd, each link "socket:[INODE]" looked up in a hash
// table of the inodes wanted. Linear in the host's open files, where ss -p
// builds a table of 256 buckets and grows with the square of the sockets;
// and apart from the count, so that a slow or failed lookup never costs it.
package owners

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"

	"golang.org/x/sys/unix"

	"github.com/consul-conn-exporter/consul-conn-exporter/socket"
)

// Result is what a walk found.
type Result struct {
	// Names are the programs (their comm, made safe) by socket inode.
	Names map[uint64]string
	// Unreadable is how many processes' descriptors could not be read (no
	// privilege: root, or CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH, reads
	// other users').
	Unreadable int
}

// Names walks procDir (/proc) until every wanted inode is named, or none is
// left to look at. It fails when procDir cannot be read at all, or when ctx
// is done first: a budget, so that naming programs never holds up a count.
func Names(ctx context.Context, procDir string, wanted map[uint64]struct{}) (Result, error) {
	res := Result{Names: make(map[uint64]string, len(wanted))}
	if len(wanted) == 0 {
		return res, nil
	}
	proc, err := os.Open(procDir)
	if err != nil {
		return res, fmt.Errorf("cannot read %s: %w", procDir, unwrap(err))
	}
	defer proc.Close()
	pids, err := proc.Readdirnames(-1)
	if err != nil {
		return res, fmt.Errorf("cannot read %s: %w", procDir, unwrap(err))
	}
	link := make([]byte, 64) // "socket:[18446744073709551615]" fits
	for _, pid := range pids {
		if _, err := strconv.ParseUint(pid, 10, 32); err != nil {
			continue // not a process: self, sys, meminfo ...
		}
		if err := ctx.Err(); err != nil {
			return res, fmt.Errorf("naming the programs: gave up after %d of %d sockets: %w", len(res.Names), len(wanted), err)
		}
		found, err := walkFDs(ctx, filepath.Join(procDir, pid), wanted, res.Names, link)
		switch {
		case errors.Is(err, fs.ErrPermission):
			res.Unreadable++
		case errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled):
			return res, fmt.Errorf("naming the programs: gave up after %d of %d sockets: %w", len(res.Names), len(wanted), err)
		}
		if found && len(res.Names) == len(wanted) {
			break
		}
	}
	return res, nil
}

// walkFDs adds to names the wanted sockets that process dir holds, named by
// its comm, and says whether it found any. A process that exits meanwhile
// is no error.
func walkFDs(ctx context.Context, dir string, wanted map[uint64]struct{}, names map[uint64]string, link []byte) (bool, error) {
	fdDir, err := os.Open(filepath.Join(dir, "fd"))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return false, nil
		}
		return false, err
	}
	defer fdDir.Close()
	fds, err := fdDir.Readdirnames(-1)
	if err != nil {
		return false, nil // gone
	}
	raw, err := fdDir.SyscallConn()
	if err != nil {
		return false, err
	}
	var (
		comm  string
		found bool
	)
	for i, fd := range fds {
		if i%4096 == 4095 && ctx.Err() != nil {
			return found, ctx.Err()
		}
		var n int
		var linkErr error
		if err := raw.Control(func(dirfd uintptr) { n, linkErr = unix.Readlinkat(int(dirfd), fd, link) }); err != nil || linkErr != nil {
			continue // closed meanwhile
		}
		inode, ok := socketInode(link[:n])
		if !ok {
			continue
		}
		if _, want := wanted[inode]; !want {
			continue
		}
		if comm == "" {
			text, err := os.ReadFile(filepath.Join(dir, "comm"))
			if err != nil {
				return found, nil // gone
			}
			comm = socket.ProcessName(string(bytes.TrimSuffix(text, []byte("\n"))))
		}
		names[inode], found = comm, true
	}
	return found, nil
}

// socketInode reads a descriptor's link "socket:[12345]".
func socketInode(link []byte) (uint64, bool) {
	const prefix = "socket:["
	if !bytes.HasPrefix(link, []byte(prefix)) || len(link) < len(prefix)+2 || link[len(link)-1] != ']' {
		return 0, false
	}
	var n uint64
	for _, c := range link[len(prefix) : len(link)-1] {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + uint64(c-'0')
	}
	return n, true
}

func unwrap(err error) error {
	var pathErr *fs.PathError
	if errors.As(err, &pathErr) {
		return pathErr.Err
	}
	return err
}
