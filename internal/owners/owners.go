// Package owners names the programs holding sockets, by their inodes: from
// the kernel's own list of open files where a kernel program may be loaded
// (iterator.go), else by one walk of /proc/PID/fd, each link
// "socket:[INODE]" looked up in a hash table of the inodes wanted. Both are
// linear in the host's open files, where ss -p builds a table of 256
// buckets and grows with the square of the sockets; and apart from the
// count, so that a slow or failed lookup never costs it.
package owners

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/consul-conn-exporter/consul-conn-exporter/internal/table/socket"
)

// Result is what a walk found.
type Result struct {
	// Found is how many of the inodes were named.
	Found int
	// Unreadable is how many processes' descriptors could not be read (no
	// privilege: root, or CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH, reads
	// other users').
	Unreadable int
}

// Lookup names the programs holding sockets: each inode that names has as
// a key gets its holder's name (made safe) as its value. It fails when its
// source cannot be read at all, or when ctx is done first: a budget, so
// that naming programs never holds up a count.
type Lookup interface {
	Names(ctx context.Context, names map[uint64]string) (Result, error)
	// String says where the names come from.
	String() string
}

// Proc is the walk of a /proc directory: its processes' fd/N links, until
// every inode wanted is named or none is left to look at.
type Proc string

func (procDir Proc) String() string { return string(procDir) }

// Names walks procDir.
func (procDir Proc) Names(ctx context.Context, names map[uint64]string) (Result, error) {
	var res Result
	if len(names) == 0 {
		return res, nil
	}
	proc, err := os.Open(string(procDir))
	var pids []string
	if err == nil {
		defer proc.Close()
		pids, err = proc.Readdirnames(-1)
	}
	if err != nil {
		return res, fmt.Errorf("cannot read %s (it must be the host's): %w", procDir, unwrap(err))
	}
	link := make([]byte, 64) // "socket:[18446744073709551615]" fits
	buf := make([]byte, 64<<10)
	// Descriptors by number only where the directories are the kernel's.
	var fsStat unix.Statfs_t
	byNumber := unix.Fstatfs(int(proc.Fd()), &fsStat) == nil && fsStat.Type == unix.PROC_SUPER_MAGIC
	for _, pid := range pids {
		if _, err := strconv.ParseUint(pid, 10, 32); err != nil {
			continue // not a process: self, sys, meminfo ...
		}
		if ctx.Err() != nil {
			break // before a process, or in the last one's walk
		}
		found, err := walkFDs(ctx, filepath.Join(string(procDir), pid), names, byNumber, buf, link)
		res.Found += found
		if errors.Is(err, fs.ErrPermission) {
			res.Unreadable++
		}
		if res.Found == len(names) {
			break
		}
	}
	if err := ctx.Err(); err != nil && res.Found < len(names) {
		return res, gaveUp(res, names, err)
	}
	return res, nil
}

// gaveUp is a lookup that ran out of its budget (err) having named res.
func gaveUp(res Result, names map[uint64]string, err error) error {
	return fmt.Errorf("naming the programs: gave up after %d of %d sockets: %w", res.Found, len(names), err)
}

// walkFDs names in names the sockets that process dir holds, by its comm,
// and says how many it named, until ctx is done (Names says so). A process
// that exits meanwhile is no error; one that cannot be read is
// fs.ErrPermission. A process may hold hundreds of thousands of
// descriptors, and none costs an allocation: names and links are read in
// place.
func walkFDs(ctx context.Context, dir string, names map[uint64]string, byNumber bool, buf, link []byte) (int, error) {
	fdDir, err := unix.Open(filepath.Join(dir, "fd"), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	switch {
	case err == unix.ENOENT || err == unix.ESRCH:
		return 0, nil // gone
	case err == unix.EACCES || err == unix.EPERM:
		return 0, fs.ErrPermission
	case err != nil:
		return 0, err
	}
	defer unix.Close(fdDir)
	w := fdWalk{ctx: ctx, dir: dir, fdDir: fdDir, names: names, link: link}
	if !byNumber || !w.byNumber(buf) {
		w.listed(buf)
	}
	return w.found, nil
}

// fdWalk is one process's descriptors being looked at.
type fdWalk struct {
	ctx     context.Context
	dir     string
	fdDir   int
	names   map[uint64]string
	link    []byte
	comm    string
	found   int
	entries int
}

// byNumber reads descriptors 0, 1, 2 ... by number, without listing the
// directory (proc makes an entry for each one listed: a fifth of the
// walk), as long as /proc/PID/fd says how many are open (its size, since
// Linux 6.2) and they come densely, as they do: a table with holes past
// slack is left to listed. It says whether it saw them all.
func (w *fdWalk) byNumber(buf []byte) bool {
	var st unix.Stat_t
	if unix.Fstat(w.fdDir, &st) != nil || st.Size <= 0 {
		return false
	}
	const slack = 64
	open, seen := int(st.Size), 0
	for fd := 0; seen < open && fd < open+slack; fd++ {
		name := strconv.AppendInt(buf[:0], int64(fd), 10)
		name = append(name, 0)
		open, stop := w.look(name)
		if stop {
			return true
		}
		if open {
			seen++
		}
	}
	return seen == open
}

// listed reads the directory with getdents64 into buf and each of its
// descriptors by name.
func (w *fdWalk) listed(buf []byte) {
	for {
		n, err := unix.Getdents(w.fdDir, buf)
		if err != nil || n <= 0 {
			return // done, or gone
		}
		for off := 0; off+direntName < n; {
			// struct linux_dirent64: ino (8), off (8), reclen (2), type (1), name.
			reclen := int(binary.NativeEndian.Uint16(buf[off+16:]))
			name := buf[off+direntName : off+reclen] // NUL-terminated, padded
			off += reclen
			if name[0] == '.' {
				continue
			}
			if _, stop := w.look(name); stop {
				return
			}
		}
	}
}

// look reads one descriptor's link, its NUL-terminated name in name, and
// names its socket if it is wanted. open is whether there is such a
// descriptor (it may have closed meanwhile); stop, whether the process is
// gone or the budget ran out, so that nothing more is to be read.
func (w *fdWalk) look(name []byte) (open, stop bool) {
	if w.entries++; w.entries%4096 == 0 && w.ctx.Err() != nil {
		return false, true
	}
	r, _, errno := unix.Syscall6(unix.SYS_READLINKAT, uintptr(w.fdDir), uintptr(unsafe.Pointer(&name[0])),
		uintptr(unsafe.Pointer(&w.link[0])), uintptr(len(w.link)), 0, 0)
	if errno != 0 {
		return false, false
	}
	inode, ok := socketInode(w.link[:r])
	if !ok {
		return true, false
	}
	if name, want := w.names[inode]; !want || name != "" {
		return true, false
	}
	if w.comm == "" {
		text, err := os.ReadFile(filepath.Join(w.dir, "comm"))
		if err != nil {
			return true, true // gone
		}
		w.comm = socket.ProcessName(string(bytes.TrimSuffix(text, []byte("\n"))))
	}
	w.names[inode] = w.comm
	w.found++
	return true, false
}

// direntName is where a linux_dirent64's name starts.
const direntName = 19

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
