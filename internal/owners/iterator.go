package owners

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"syscall"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"

	"github.com/consul-conn-exporter/consul-conn-exporter/internal/kernel"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/table/socket"
)

// Iterator names the programs holding sockets from the kernel's own list
// of every process's open files: a task_file iterator (Linux 5.8) whose
// program writes the inode and the holder's name of each socket in one pass
// in the kernel, where the walk of /proc pays a readlink of about 3 µs per
// descriptor. It sees the processes of the exporter's PID namespace, as
// its /proc does.
type Iterator struct {
	link *link.Iter
}

// LoadIterator loads and attaches the iterator's program (iterator.bpf.c).
// It needs CAP_BPF and CAP_PERFMON (or root), and a kernel with BTF; kernel
// is the kernel's types, read once for every program the exporter loads.
// Once it is loaded the capabilities can go (on Linux 6.5 or later: before,
// the kernel lets only them open the iterator when unprivileged BPF is off,
// which Check tells).
func LoadIterator(types *btf.Cache) (*Iterator, error) {
	var objs programObjects
	if err := loadProgramObjects(&objs, &ebpf.CollectionOptions{Cache: types}); err != nil {
		return nil, explainLoad(err)
	}
	defer objs.Close() // the link holds the program
	lk, err := link.AttachIter(link.IterOptions{Program: objs.NameSockets})
	if err != nil {
		return nil, explainLoad(err)
	}
	return &Iterator{link: lk}, nil
}

// ErrUnavailable is a kernel or a host that cannot list the open files for
// the exporter: the error says what is missing.
var ErrUnavailable = errors.New("cannot list the open files in the kernel")

func explainLoad(err error) error {
	return kernel.Explain(err, ErrUnavailable, "--clients.processes.bpf", "Linux 5.8 or later")
}

// Check opens the iterator once, as each lookup will: it says whether the
// kernel lets the exporter do so with the privileges it kept.
func (it *Iterator) Check() error {
	r, err := it.open()
	if err != nil {
		return err
	}
	return r.Close()
}

func (it *Iterator) open() (io.ReadCloser, error) {
	r, err := it.link.Open()
	if err != nil {
		return nil, fmt.Errorf("opening the kernel's iterator: %w", kernel.Unprivileged(err))
	}
	return r, nil
}

// Close detaches the program.
func (it *Iterator) Close() error { return it.link.Close() }

func (it *Iterator) String() string { return "the kernel's list of open files" }

// Names reads the kernel's list until every inode wanted is named or the
// list ends.
func (it *Iterator) Names(ctx context.Context, names map[uint64]string) (Result, error) {
	var res Result
	if len(names) == 0 {
		return res, nil
	}
	r, err := it.open()
	if err != nil {
		return res, err
	}
	defer r.Close()
	// The kernel hands out at most 32 KiB at a time (8 pages), in whole
	// records; twice that leaves room for a record read in part.
	buf := make([]byte, 64<<10)
	have := 0
	for res.Found < len(names) {
		if err := ctx.Err(); err != nil {
			return res, gaveUp(res, names, err)
		}
		n, err := r.Read(buf[have:])
		have += n
		whole := have - have%recordSize
		res.Found += nameFrom(buf[:whole], names)
		have = copy(buf, buf[whole:have])
		switch {
		case errors.Is(err, syscall.EAGAIN):
			// A read that passed a million files without a socket: the
			// kernel goes on from there at the next.
		case err == io.EOF:
			return res, nil
		case err != nil:
			return res, fmt.Errorf("reading the kernel's iterator: %w", err)
		}
	}
	return res, nil
}

// recordSize is what the program writes per socket (struct record): its
// inode (8 bytes, native order) and its holder's name (16 bytes,
// NUL-padded).
const recordSize = 24

// nameFrom names in names the sockets of the whole records in records, and
// says how many it named. A socket several processes hold (passed, or
// inherited) is named by the first.
func nameFrom(records []byte, names map[uint64]string) int {
	found := 0
	for ; len(records) >= recordSize; records = records[recordSize:] {
		inode := binary.NativeEndian.Uint64(records)
		if name, want := names[inode]; !want || name != "" {
			continue
		}
		comm, _, _ := bytes.Cut(records[8:recordSize], []byte{0})
		names[inode] = socket.ProcessName(string(comm))
		found++
	}
	return found
}
