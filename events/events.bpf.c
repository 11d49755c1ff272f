// SPDX-License-Identifier: MIT OR GPL-2.0-only
//go:build ignore
//
// Keeps, in the kernel, the count of the connections the agent holds open on
// the watched ports, as they open and close, and how they open and close:
//
//   inet_sock_set_state (every change of a TCP socket's state): a server
//     end of a watched port, in the exporter's network namespace, that
//     enters the watched states is counted under its addresses, port and
//     state; one that moves between them is moved; one that leaves them is
//     taken off, and its close is counted by how it ended, with its
//     lifetime. Each socket's own storage (it lives and dies with the
//     socket) says whether and where it is counted.
//   census (a TCP iterator the exporter runs: at start, and every audit):
//     counts every connection already open that no event counted, the
//     seed, and moves every counted one into the new generation. It runs
//     under each socket's lock, the one every change of state holds, so no
//     change can fall between what it reads and what it writes. Whatever a
//     missed event left in the old generation is what the audit reports,
//     and drops.
//   settle (an iterator over the clients, after each census): drops what
//     the old generation of each client's count still holds.

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_endian.h>
#include "counts.h"


char LICENSE[] SEC("license") = "Dual MIT/GPL";

// The network namespace of the exporter (its /proc/self/ns/net inode).
const volatile __u32 netns_inum = 0;
// The watched states, a bit each (1 << TCP_ESTABLISHED, ...).
const volatile __u32 watched_states = 0;
// The watched ports, a bit each by number (port >> 5, 1 << (port & 31)):
// every change of every TCP socket on the host asks it, and 8 KiB stay in
// the cache where the ports array's 256 do not.
const volatile __u32 watched_ports[2048] = {};

// The generation counts are made in; the exporter starts a new one for
// each census. Only its last bit is in the keys: the census moves every
// socket of the one before into it.
__u32 generation = 0;
// The epoch of the peaks: the exporter starts a new one at each read of
// them, and reads the one before, which no event writes any more.
__u32 epoch = 0;

// Every port, by its number as inet_sport keeps it (network order), to 1 +
// its group, 0 for a port not watched: an array, whose lookup the verifier
// inlines, asked for the ports watched_ports lets through.
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, __u32);
} ports SEC(".maps");

// The open connections, per (generation, addresses, port, state): a client
// holds a few such keys, whatever its connections.
struct connection_key {
	__u8 local[16];	 // IPv4 v4-mapped
	__u8 client[16]; // IPv4 v4-mapped
	__u16 port;	 // local, host order
	__u8 state;
	__u8 generation; // the last bit of it
	__u8 ipv6;	 // an IPv6 socket: its v4-mapped addresses stay so
	__u8 unused;	 // zero: keys are compared byte by byte
};

// A full map is a failed insert, counted in lost.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_KEYS);
	__uint(map_flags, 1); // BPF_F_NO_PREALLOC: costs what it holds
	__type(key, struct connection_key);
	__type(value, __s64);
} connections SEC(".maps");

// The time some client of the group held at least its limit.
struct group_state {
	__s64 clients_at_limit;
	__u64 since_ns; // when the first of them reached it
	__u64 at_limit_ns;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct group_state);
} groups SEC(".maps");

// The lifetimes' buckets, by their upper bounds: a request, a blocking
// query (5 minutes at most by default), a leak.
#define LIFETIME_BUCKETS 12
static const __u64 lifetime_bounds_ns[LIFETIME_BUCKETS] = {
	1000000ULL,	    // 1 ms
	5000000ULL,	    // 5 ms
	25000000ULL,	    // 25 ms
	100000000ULL,	    // 100 ms
	500000000ULL,	    // 500 ms
	2500000000ULL,	    // 2.5 s
	10000000000ULL,	    // 10 s
	60000000000ULL,	    // 1 min
	330000000000ULL,    // 5.5 min
	900000000000ULL,    // 15 min
	1800000000000ULL,   // 30 min
	3600000000000ULL,   // 1 h
};

// Per group, a copy per CPU, summed by the exporter.
struct group_totals {
	__u64 opened;
	__u64 closed[CLOSE_KINDS];
	__u64 lifetimes[LIFETIME_BUCKETS + 1]; // the last: longer
	__u64 lifetime_ns;		       // their sum
	__u64 seeded;			       // found open by the census, uncounted
	__u64 lost;			       // could not be counted: a map full
};

// The exporter sets max_entries to the number of groups.
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct group_totals);
} totals SEC(".maps");

static __always_inline bool watched(int state)
{
	return state >= 0 && state < 32 && (watched_states & (1U << state));
}

// addresses writes sk's local address and client into key.
static __always_inline void addresses(const struct sock *sk, struct connection_key *key)
{
	client_address(sk, key->client);
	if (sk->__sk_common.skc_family == AF_INET6) {
		key->ipv6 = 1;
		__builtin_memcpy(&key->local, &sk->__sk_common.skc_v6_rcv_saddr, sizeof(key->local));
	} else {
		v4mapped(key->local, sk->__sk_common.skc_rcv_saddr);
	}
}

// add adds n to the open count under key; false where the map is full.
static __always_inline bool add(struct connection_key *key, __s64 n)
{
	__s64 *count = bpf_map_lookup_elem(&connections, key);
	if (!count) {
		if (bpf_map_update_elem(&connections, key, &n, BPF_NOEXIST) == 0)
			return true;
		count = bpf_map_lookup_elem(&connections, key); // another CPU's first
		if (!count)
			return false;
	}
	__sync_fetch_and_add(count, n);
	return true;
}

// uncount takes a counted socket off the count it is under.
static __always_inline void uncount(struct socket_state *st, struct connection_key *key)
{
	key->state = st->state;
	key->generation = st->generation & 1;
	add(key, -1);
	st->counted = 0;
}

// count_as counts a socket under state in generation gen; false where the
// map is full (it is then counted nowhere).
static __always_inline bool count_as(struct socket_state *st, struct connection_key *key, __u8 state, __u32 gen)
{
	key->state = state;
	key->generation = gen & 1;
	if (!add(key, 1))
		return false;
	st->counted = 1;
	st->state = state;
	st->generation = gen;
	return true;
}

// client_of is the client's entry, made where missing; NULL, counted as
// lost, where the map is full: its counts are right, its churn, peak and
// time at the limit lack the connection.
static __always_inline struct client_state *client_of(__u32 group, const struct connection_key *key, struct group_totals *t)
{
	struct client_key ck = {.group = group};
	__builtin_memcpy(&ck.client, &key->client, sizeof(ck.client));
	struct client_state *c = bpf_map_lookup_elem(&clients_held, &ck);
	if (c)
		return c;
	struct client_state zero = {};
	bpf_map_update_elem(&clients_held, &ck, &zero, BPF_NOEXIST);
	c = bpf_map_lookup_elem(&clients_held, &ck);
	if (!c)
		t->lost++;
	return c;
}

// The compare-and-swaps are bounded: a change lost to others' at the same
// moment, four times over, is left (no peak is lost: theirs are as high).
#define CAS_TRIES 4

static __always_inline void keep_begin(__u64 *slot, __u32 epoch_now, __s64 before)
{
	for (int i = 0; i < CAS_TRIES; i++) {
		__u64 old = *slot;
		if ((__u32)(old >> 32) == epoch_now)
			return; // begun: an earlier change of this epoch
		__u64 want = (__u64)epoch_now << 32 | (__u32)before;
		if (__sync_val_compare_and_swap(slot, old, want) == old)
			return;
	}
}

static __always_inline void keep_peak(__u64 *slot, __u32 epoch_now, __s64 count)
{
	for (int i = 0; i < CAS_TRIES; i++) {
		__u64 old = *slot;
		if ((__u32)(old >> 32) == epoch_now && (__s64)(__u32)old >= count)
			return;
		__u64 want = (__u64)epoch_now << 32 | (__u32)count;
		if (__sync_val_compare_and_swap(slot, old, want) == old)
			return;
	}
}

// held changes a client's count in its group by n, in generation gen (the
// one its connection is counted in), and follows what the change does to
// its peak and to its group's time at the limit. It says whether the count
// before it was at least the limit.
static __always_inline bool held(__u32 group, struct client_state *c, __s64 n, __u32 gen, __u64 now)
{
	if (!c)
		return false;
	__s64 before = __sync_fetch_and_add(&c->held[gen & 1], n) + c->held[(gen & 1) ^ 1];
	__s64 after = before + n;
	__u32 e = epoch;
	keep_begin(&c->begin[e & 1], e, before);
	keep_peak(&c->peak[e & 1], e, before > after ? before : after);

	__u32 *limit = bpf_map_lookup_elem(&limits, &group);
	struct group_state *g = bpf_map_lookup_elem(&groups, &group);
	if (!limit || !g)
		return false;
	bool full = *limit > 0 && before >= *limit;
	__u32 is = *limit > 0 && after >= *limit, was = c->at_limit;
	if (is == was || __sync_val_compare_and_swap(&c->at_limit, was, is) != was)
		return full;
	if (is) {
		if (__sync_fetch_and_add(&g->clients_at_limit, 1) == 0)
			g->since_ns = now;
	} else if (__sync_fetch_and_add(&g->clients_at_limit, -1) == 1) {
		__sync_fetch_and_add(&g->at_limit_ns, now - g->since_ns);
	}
	return full;
}

// server_end is sk as a TCP server end of a watched port in the exporter's
// namespace, with its group; NULL for any other socket.
static __always_inline struct tcp_sock *server_end(const struct sock_common *skc, __u32 *group)
{
	// Most changes on a host are other ports' (a client end's local port
	// is its own): the bitmap turns them away before the helper call that
	// tells TCP. A socket going to CLOSE has given its port back
	// (inet_put_port zeroes skc_num before the change is traced): its port
	// is then the tcp_sock's inet_sport, asked after the helper.
	__u32 num = skc->skc_num;
	if (num && !(watched_ports[(num >> 5) & 2047] & (1U << (num & 31))))
		return NULL;
	struct tcp_sock *tp = bpf_skc_to_tcp_sock((void *)skc);
	if (!tp)
		return NULL; // not TCP: the tracepoint is DCCP's, SCTP's and MPTCP's too
	__u32 port = tp->inet_conn.icsk_inet.inet_sport;
	__u32 *g = bpf_map_lookup_elem(&ports, &port);
	if (!g || !*g)
		return NULL;
	if (tp->inet_conn.icsk_inet.sk.__sk_common.skc_net.net->ns.inum != netns_inum)
		return NULL;
	*group = *g - 1;
	return tp;
}

// moved moves one of a client's count from generation from to the
// current one: its count is the same, nothing to follow.
static __always_inline void moved(struct client_state *c, __u32 from)
{
	if (!c)
		return;
	__sync_fetch_and_add(&c->held[from & 1], -1);
	__sync_fetch_and_add(&c->held[generation & 1], 1);
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(changed, const struct sock *sk, int oldstate, int newstate)
{
	// Every change of every socket on the host comes here: the states,
	// which cost nothing, are asked first.
	bool was = watched(oldstate), is = watched(newstate);
	if (!was && !is)
		return 0;
	__u32 group;
	struct tcp_sock *tp = server_end(&sk->__sk_common, &group);
	if (!tp)
		return 0;
	struct group_totals *t = bpf_map_lookup_elem(&totals, &group);
	if (!t)
		return 0;
	struct socket_state *st = bpf_sk_storage_get(&sockets, tp, 0, is ? BPF_SK_STORAGE_GET_F_CREATE : 0);
	if (!st) {
		if (is)
			t->lost++;
		return 0; // leaving, never counted: open before the census found it
	}
	struct connection_key key = {.port = bpf_ntohs(tp->inet_conn.icsk_inet.inet_sport)};
	addresses(sk, &key);
	bool counted = st->counted;
	__u32 counted_in = st->generation, now_in = generation;
	if (counted)
		uncount(st, &key);
	if (is) {
		bool added = count_as(st, &key, newstate, now_in);
		if (!added)
			t->lost++;
		if (counted && added && !((counted_in ^ now_in) & 1))
			return 0; // from one watched state to another: the client's count is the same
		__u64 now = bpf_ktime_get_ns();
		struct client_state *c = client_of(group, &key, t);
		if (!was) { // a new connection
			st->opened_ns = now;
			t->opened++;
			if (c)
				__sync_fetch_and_add(&c->opened, 1);
		}
		if (!added && counted)
			held(group, c, -1, counted_in, now);
		else if (added && !counted)
			st->over_limit = held(group, c, 1, now_in, now) && !was ? OVER_LIMIT : 0;
		else if (added)
			moved(c, counted_in);
		return 0;
	}
	if (!counted)
		return 0;
	// A close: how it ended, and after how long.
	__u64 now = bpf_ktime_get_ns();
	struct client_state *c = client_of(group, &key, t);
	held(group, c, -1, counted_in, now);
	__u32 how = CLOSED_BY_AGENT;
	if (newstate == TCP_CLOSE)
		how = CLOSED_BY_RESET;
	else if (oldstate == TCP_CLOSE_WAIT || newstate == TCP_CLOSE_WAIT)
		how = CLOSED_BY_CLIENT;
	t->closed[how & 3]++;
	if (c)
		__sync_fetch_and_add(&c->closed[how & 3], 1);
	if (st->opened_ns) {
		__u64 lived = now - st->opened_ns;
		t->lifetime_ns += lived;
		__u32 i = 0;
		for (; i < LIFETIME_BUCKETS; i++)
			if (lived <= lifetime_bounds_ns[i])
				break;
		if (i <= LIFETIME_BUCKETS)
			t->lifetimes[i]++;
	}
	return 0;
}

SEC("iter/tcp")
int census(struct bpf_iter__tcp *ctx)
{
	struct sock_common *skc = ctx->sk_common;
	if (!skc || !watched(skc->skc_state))
		return 0;
	__u32 group;
	struct tcp_sock *tp = server_end(skc, &group);
	if (!tp)
		return 0;
	struct group_totals *t = bpf_map_lookup_elem(&totals, &group);
	if (!t)
		return 0;
	struct socket_state *st = bpf_sk_storage_get(&sockets, tp, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!st) {
		t->lost++;
		return 0;
	}
	__u32 now_in = generation;
	if (st->counted && st->generation == now_in)
		return 0; // counted in this generation already, by an event
	struct connection_key key = {.port = bpf_ntohs(tp->inet_conn.icsk_inet.inet_sport)};
	addresses((struct sock *)tp, &key);
	bool counted = st->counted;
	__u32 counted_in = st->generation;
	if (counted)
		uncount(st, &key);
	else
		t->seeded++;
	struct client_state *c = client_of(group, &key, t);
	if (!count_as(st, &key, skc->skc_state, now_in)) {
		t->lost++;
		if (counted)
			held(group, c, -1, counted_in, bpf_ktime_get_ns());
		return 0;
	}
	if (!counted)
		held(group, c, 1, now_in, bpf_ktime_get_ns());
	else
		moved(c, counted_in);
	return 0;
}

// settle runs on every client once a census is over: what the generation
// before it still holds is of connections gone (their sockets are all
// counted in the new one, or closed), and no event writes it any more. It
// is dropped, so that the next census, which moves the counts into it,
// finds it empty.
SEC("iter/bpf_map_elem")
int settle(struct bpf_iter__bpf_map_elem *ctx)
{
	struct client_state *c = ctx->value;
	if (!c)
		return 0;
	// Constant offsets: the verifier takes no variable one into an
	// iterator's buffer.
	if (generation & 1)
		__sync_fetch_and_and(&c->held[0], 0);
	else
		__sync_fetch_and_and(&c->held[1], 0);
	return 0;
}
