/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * The kernel's types that the exporter's kernel programs read, trimmed from
 * `bpftool btf dump file /sys/kernel/btf/vmlinux format c` (Linux 6.18) to
 * the members they use. Every struct is marked preserve_access_index: the
 * compiler records each access as a CO-RE relocation (struct and member by
 * name), and the loader fixes the offsets and checks the sizes against the
 * running kernel's BTF, so the layout here need not match any kernel's.
 */
#ifndef CCX_VMLINUX_H
#define CCX_VMLINUX_H

typedef unsigned char __u8;
typedef unsigned short __u16;
typedef unsigned int __u32;
typedef unsigned long long __u64;
typedef signed char __s8;
typedef short __s16;
typedef int __s32;
typedef long long __s64;
typedef __u16 __be16;
typedef __u32 __be32;
typedef __u32 __wsum;
typedef __u8 u8;
typedef __u16 u16;
typedef __u32 u32;
typedef __u64 u64;
typedef __s64 s64;
typedef _Bool bool;
enum {
	false = 0,
	true = 1,
};
typedef unsigned short umode_t;

enum bpf_map_type {
	BPF_MAP_TYPE_HASH = 1,
	BPF_MAP_TYPE_ARRAY = 2,
	BPF_MAP_TYPE_PERCPU_ARRAY = 6,
	BPF_MAP_TYPE_LRU_HASH = 9,
	BPF_MAP_TYPE_SK_STORAGE = 24,
};

/* bpf_map_update_elem's flags (include/uapi/linux/bpf.h). */
enum {
	BPF_ANY = 0,
	BPF_NOEXIST = 1,
	BPF_EXIST = 2,
};

/* bpf_sk_storage_get's flags (include/uapi/linux/bpf.h). */
enum {
	BPF_SK_STORAGE_GET_F_CREATE = 1,
};

/* include/net/tcp_states.h */
enum {
	TCP_ESTABLISHED = 1,
	TCP_SYN_SENT = 2,
	TCP_SYN_RECV = 3,
	TCP_FIN_WAIT1 = 4,
	TCP_FIN_WAIT2 = 5,
	TCP_TIME_WAIT = 6,
	TCP_CLOSE = 7,
	TCP_CLOSE_WAIT = 8,
	TCP_LAST_ACK = 9,
	TCP_LISTEN = 10,
	TCP_CLOSING = 11,
	TCP_NEW_SYN_RECV = 12,
};

/* include/uapi/linux/in.h */
enum {
	IPPROTO_TCP = 6,
	IPPROTO_MPTCP = 262,
};

/* include/uapi/linux/bpf.h: a map value's lock, found by its name. */
struct bpf_spin_lock {
	__u32 val;
};

#pragma clang attribute push(__attribute__((preserve_access_index)), apply_to = record)

typedef struct {
	__u32 val;
} kuid_t;

typedef struct {
	s64 counter;
} atomic64_t;

struct in6_addr {
	union {
		__u8 u6_addr8[16];
		__be16 u6_addr16[8];
		__be32 u6_addr32[4];
	} in6_u;
};

struct ns_common {
	unsigned int inum;
};

struct net {
	struct ns_common ns;
};

typedef struct {
	struct net *net;
} possible_net_t;

struct sock_common {
	union {
		struct {
			__be32 skc_daddr;
			__be32 skc_rcv_saddr;
		};
	};
	union {
		struct {
			__be16 skc_dport;
			__u16 skc_num;
		};
	};
	unsigned short skc_family;
	volatile unsigned char skc_state;
	possible_net_t skc_net;
	struct in6_addr skc_v6_daddr;
	struct in6_addr skc_v6_rcv_saddr;
	atomic64_t skc_cookie;
};

struct sock {
	struct sock_common __sk_common;
	u16 sk_protocol;
	u8 sk_shutdown;
	kuid_t sk_uid;
};

struct inet_sock {
	struct sock sk;
	__be16 inet_sport;
};

struct inet_connection_sock {
	struct inet_sock icsk_inet;
	void *icsk_ulp_data;
	struct {
		u32 lrcvtime;
	} icsk_ack;
};

struct tcp_sock {
	struct inet_connection_sock inet_conn;
	u32 copied_seq;
	u32 rcv_nxt;
	u64 bytes_received;
	u64 bytes_sent;
	u32 lsndtime;
	bool is_mptcp;
};

/* net/mptcp/protocol.h: an MPTCP subflow's context (its ULP data) */
struct mptcp_subflow_context {
	u32 mp_join: 1;
};

/* net/mptcp/protocol.h: an MPTCP connection, as its application sees it */
struct mptcp_sock {
	u64 bytes_received;
	u64 bytes_consumed;
};

struct sk_buff;

struct inode {
	umode_t i_mode;
	unsigned long i_ino;
};

struct file {
	struct inode *f_inode;
};

struct task_struct {
	char comm[16];
};

struct seq_file;

struct bpf_iter_meta {
	struct seq_file *seq;
};

struct bpf_iter__task_file {
	struct bpf_iter_meta *meta;
	struct task_struct *task;
	u32 fd;
	struct file *file;
};

struct bpf_map;

struct bpf_iter__bpf_map_elem {
	struct bpf_iter_meta *meta;
	struct bpf_map *map;
	void *key;
	void *value;
};

struct bpf_iter__tcp {
	struct bpf_iter_meta *meta;
	struct sock_common *sk_common;
	unsigned int uid;
};

#pragma clang attribute pop

#endif
