// SPDX-License-Identifier: MIT OR GPL-2.0-only
//go:build ignore
//
// Names the programs holding sockets: the kernel runs this on every open
// file of every process (threads sharing their process's files are
// skipped), and it writes, for each socket, its inode and the holder's name
// (the name /proc/PID/comm shows) in one pass, where the walk of /proc pays
// a readlink per descriptor.

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

#define S_IFMT 00170000 // include/uapi/linux/stat.h
#define S_IFSOCK 0140000

char LICENSE[] SEC("license") = "Dual MIT/GPL";

// What the exporter reads, 24 bytes a socket.
struct record {
	__u64 inode;
	char comm[16]; // NUL-padded
};

SEC("iter/task_file")
int name_sockets(struct bpf_iter__task_file *ctx)
{
	struct file *file = ctx->file;
	struct task_struct *task = ctx->task;
	if (!file || !task)
		return 0;
	if ((BPF_CORE_READ(file, f_inode, i_mode) & S_IFMT) != S_IFSOCK)
		return 0;
	struct record r = {.inode = BPF_CORE_READ(file, f_inode, i_ino)};
	BPF_CORE_READ_INTO(&r.comm, task, comm);
	bpf_seq_write(ctx->meta->seq, &r, sizeof(r));
	return 0;
}
