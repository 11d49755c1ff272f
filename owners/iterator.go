// SPDX-License-Identifier: MIT OR GPL-2.0-only
//
// The kernel program of this file is licensed MIT or GPL-2.0 (the kernel
// lets an iterator write its output only under a GPL-compatible licence);
// the rest of the exporter is Apache-2.0.

package owners

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"

	"github.com/consul-conn-exporter/consul-conn-exporter/internal/kernelbtf"
	"github.com/consul-conn-exporter/consul-conn-exporter/socket"
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

// LoadIterator loads and attaches the iterator's program. It needs CAP_BPF
// and CAP_PERFMON (or root), and a kernel with BTF; once it is loaded, the
// capabilities can go (on Linux 6.5 or later: before, the kernel lets only
// them open the iterator when unprivileged BPF is off, which Check tells).
func LoadIterator() (*Iterator, error) {
	spec, err := btf.LoadKernelSpec()
	if err != nil {
		return nil, fmt.Errorf("this kernel has no BTF (/sys/kernel/btf/vmlinux: CONFIG_DEBUG_INFO_BTF): %w", err)
	}
	l, err := readIteratorLayout(spec)
	if err != nil {
		return nil, err
	}
	prog, err := ebpf.NewProgramWithOptions(&ebpf.ProgramSpec{
		Name:         "ccx_owners",
		Type:         ebpf.Tracing,
		AttachType:   ebpf.AttachTraceIter,
		AttachTo:     "task_file",
		Instructions: iteratorProgram(l),
		License:      "Dual MIT/GPL",
	}, ebpf.ProgramOptions{KernelTypes: spec})
	if err != nil {
		return nil, explainLoad(err)
	}
	defer prog.Close() // the link holds it
	lk, err := link.AttachIter(link.IterOptions{Program: prog})
	if err != nil {
		return nil, explainLoad(err)
	}
	return &Iterator{link: lk}, nil
}

func explainLoad(err error) error {
	switch {
	case errors.Is(err, os.ErrPermission):
		return fmt.Errorf("loading a kernel program needs CAP_BPF and CAP_PERFMON, or root: %w", err)
	case errors.Is(err, ebpf.ErrNotSupported):
		return fmt.Errorf("this kernel has no task_file iterator (Linux 5.8 or later): %w", err)
	}
	return err
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
	if errors.Is(err, os.ErrPermission) {
		return nil, fmt.Errorf("opening the kernel's iterator: %w (before Linux 6.5, only CAP_BPF may while kernel.unprivileged_bpf_disabled is set)", err)
	}
	if err != nil {
		return nil, fmt.Errorf("opening the kernel's iterator: %w", err)
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

// recordSize is what the program writes per socket: its inode (8 bytes,
// native order) and its holder's name (16 bytes, NUL-padded).
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

// iteratorLayout is where the kernel keeps what the program reads, from
// its BTF.
type iteratorLayout struct {
	meta, task, file int16 // struct bpf_iter__task_file
	seq              int16 // struct bpf_iter_meta
	inode            int16 // struct file: f_inode
	mode, ino        int16 // struct inode: i_mode, i_ino
	comm             int16 // struct task_struct
}

func readIteratorLayout(spec *btf.Spec) (iteratorLayout, error) {
	var l iteratorLayout
	for _, f := range []struct {
		in, name string
		field    *int16
	}{{"bpf_iter__task_file", "meta", &l.meta}, {"bpf_iter__task_file", "task", &l.task}, {"bpf_iter__task_file", "file", &l.file},
		{"bpf_iter_meta", "seq", &l.seq}, {"file", "f_inode", &l.inode}, {"inode", "i_mode", &l.mode}, {"inode", "i_ino", &l.ino},
		{"task_struct", "comm", &l.comm}} {
		var err error
		if *f.field, err = kernelbtf.Offset(spec, f.in, f.name); err != nil {
			return l, fmt.Errorf("%w (the task_file iterator needs Linux 5.8 or later)", err)
		}
	}
	return l, nil
}

// iteratorProgram is run by the kernel on each open file of each process
// (threads sharing their process's files are skipped); it writes a record
// for each socket:
//
//	file = ctx->file; if !file return
//	inode = file->f_inode; if inode->i_mode is not S_IFSOCK return
//	record = {inode->i_ino, ctx->task->comm}
//	bpf_seq_write(ctx->meta->seq, &record, 24)
func iteratorProgram(l iteratorLayout) asm.Instructions {
	const (
		fpRecord = -recordSize // inode at -24, comm at -16 .. -1
		sIFMT    = 0o170000
		sIFSOCK  = 0o140000
	)
	return asm.Instructions{
		asm.Mov.Reg(asm.R6, asm.R1), // ctx
		asm.LoadMem(asm.R2, asm.R6, l.file, asm.DWord),
		asm.JEq.Imm(asm.R2, 0, "out"),
		asm.LoadMem(asm.R3, asm.R2, l.inode, asm.DWord),
		asm.LoadMem(asm.R4, asm.R3, l.mode, asm.Half),
		asm.And.Imm(asm.R4, sIFMT),
		asm.JNE.Imm(asm.R4, sIFSOCK, "out"),
		asm.LoadMem(asm.R4, asm.R3, l.ino, asm.DWord),
		asm.StoreMem(asm.RFP, fpRecord, asm.R4, asm.DWord),

		asm.LoadMem(asm.R3, asm.R6, l.task, asm.DWord),
		asm.JEq.Imm(asm.R3, 0, "out"),
		asm.Add.Imm(asm.R3, int32(l.comm)),
		asm.Mov.Reg(asm.R1, asm.RFP),
		asm.Add.Imm(asm.R1, fpRecord+8),
		asm.Mov.Imm(asm.R2, 16),
		asm.FnProbeReadKernel.Call(),
		asm.JNE.Imm(asm.R0, 0, "out"),

		asm.LoadMem(asm.R1, asm.R6, l.meta, asm.DWord),
		asm.LoadMem(asm.R1, asm.R1, l.seq, asm.DWord),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, fpRecord),
		asm.Mov.Imm(asm.R3, recordSize),
		asm.FnSeqWrite.Call(),

		asm.Mov.Imm(asm.R0, 0).WithSymbol("out"),
		asm.Return(),
	}
}
