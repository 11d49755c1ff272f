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
//     and drops. Its last call, once every socket is moved, drops what the
//     old generation of each client's count still holds, and the clients
//     that hold nothing: one program type besides the tracepoint, the one
//     every kernel with these programs allows (no map-element iterator,
//     which some security policies refuse).

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

// The lifetimes' buckets, by their upper bounds, as the exporter gives them
// (events.LifetimeBounds): a request, a blocking query, a leak.
#define LIFETIME_BUCKETS 12
const volatile __u64 lifetime_bounds_ns[LIFETIME_BUCKETS] = {};

// The generation counts are made in; the exporter starts a new one for
// each census. Only its last bit is in the keys: the census moves every
// socket of the one before into it.
__u32 generation = 0;
// The epoch of the peaks: the exporter starts a new one at each read of
// them, and reads the one before, which no event writes any more.
__u32 epoch = 0;
// The census's connections it could not move into the new generation (the
// map full): they stay counted in the old one, which is then kept. The
// exporter zeroes it before each census.
__u64 unmoved = 0;
// The generation whose census's last call settled the clients: the census
// ran to its end.
__u32 settled = 0;

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
	__uint(map_flags, BPF_F_NO_PREALLOC);
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

// Per group, a copy per CPU, summed by the exporter.
struct group_totals {
	__u64 opened;
	__u64 closed[CLOSE_KINDS];
	__u64 lifetimes[LIFETIME_BUCKETS + 1]; // the last: longer
	__u64 lifetime_ns;		       // their sum
	__u64 seeded;			       // found open by the census, uncounted
	__u64 lost;			       // connections not counted: the connections map full
	__u64 unfollowed;		       // connections whose client was not followed: the clients map full
};

// The exporter sets max_entries to the number of groups.
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct group_totals);
} totals SEC(".maps");

// The local ports of the exporter's own connections to the agent (its
// reads of the limits), host order: the server ends they reach are the
// exporter's, never counted (their storage says so from their open on). It
// adds each before it connects, and takes it off once closed.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, __u16);
	__type(value, __u8);
} own_ports SEC(".maps");

// own_port says whether a server end's client is on this host (at the
// server end's own address) at one of the exporter's ports.
static __always_inline bool own_port(const struct sock_common *skc)
{
	if (skc->skc_family == AF_INET6) {
		for (int i = 0; i < 4; i++)
			if (skc->skc_v6_daddr.in6_u.u6_addr32[i] != skc->skc_v6_rcv_saddr.in6_u.u6_addr32[i])
				return false;
	} else if (skc->skc_daddr != skc->skc_rcv_saddr) {
		return false;
	}
	__u16 port = bpf_ntohs(skc->skc_dport);
	return bpf_map_lookup_elem(&own_ports, &port);
}

// own says whether a server end is one of the exporter's own connections,
// as its storage says from its open on; fresh is a socket not counted yet,
// which its port may make the exporter's.
static __always_inline bool own(struct socket_state *st, const struct sock_common *skc, bool fresh)
{
	if (!st->own && fresh && own_port(skc))
		st->own = 1; // never counted, whatever it does next
	return st->own;
}

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

// count_as adds n to the count of state in generation gen under key's
// addresses and port; false where the map is full.
static __always_inline bool count_as(struct connection_key *key, __u8 state, __u32 gen, __s64 n)
{
	key->state = state;
	key->generation = gen & 1;
	return add_to(&connections, key, n);
}

// recount counts a socket as state in generation gen, then takes it off
// where it was counted before: in that order, so that a full map leaves it
// counted where it was, never nowhere. False where the map is full.
static __always_inline bool recount(struct socket_state *st, struct connection_key *key, __u8 state, __u32 gen)
{
	if (!count_as(key, state, gen, 1))
		return false;
	if (st->counted)
		count_as(key, st->state, st->generation, -1);
	st->counted = 1;
	st->state = state;
	st->generation = gen;
	return true;
}

// client_of is the client's entry, made where missing; NULL, counted as
// unfollowed, where the map is full: the counts have the connection, the
// client's churn, peak and time at the limit lack it.
static __always_inline struct client_state *client_of(__u32 group, const __u8 client[16], struct group_totals *t)
{
	struct client_key ck = {.group = group};
	__builtin_memcpy(&ck.client, client, sizeof(ck.client));
	struct client_state *c = bpf_map_lookup_elem(&clients_held, &ck);
	if (c)
		return c;
	struct client_state fresh = {.held = HELD_NONE};
	bpf_map_update_elem(&clients_held, &ck, &fresh, BPF_NOEXIST);
	c = bpf_map_lookup_elem(&clients_held, &ck);
	if (!c)
		t->unfollowed++;
	return c;
}

// The compare-and-swaps are bounded: a change lost to others' at the same
// moment, four times over, is left (no peak is lost: theirs are as high).
#define CAS_TRIES 4

static __always_inline __u32 epoch_of(__u64 slot) { return slot >> 32; }
static __always_inline __s64 count_of(__u64 slot) { return (__s32)(__u32)slot; }

static __always_inline void keep_begin(__u64 *slot, __u32 epoch_now, __s64 before)
{
	for (int i = 0; i < CAS_TRIES; i++) {
		__u64 old = *slot;
		if (epoch_of(old) == epoch_now)
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
		if (epoch_of(old) == epoch_now && count_of(old) >= count)
			return;
		__u64 want = (__u64)epoch_now << 32 | (__u32)count;
		if (__sync_val_compare_and_swap(slot, old, want) == old)
			return;
	}
}

// follow adds delta to a client's held word (held_delta's: n to its count
// in a generation, or, n 0, one moved between them) and, where its count
// changed, follows what that does to its peak and to its group's time at
// the limit. It returns the client's entry (NULL where not followed), and
// says in full whether its count before was at least the limit.
static __always_inline struct client_state *follow(__u32 group, const __u8 client[16], struct group_totals *t,
						   __u64 delta, __s64 n, __u64 now, bool *full)
{
	*full = false;
	struct client_state *c = client_of(group, client, t);
	if (!c)
		return NULL;
	delta += HELD_CHANGE;
	__u64 word = __sync_fetch_and_add(&c->held, delta);
	if (word & HELD_DROPPED) {
		// Dropped by a census between the lookup and the add (it held
		// nothing since the census before): the add is made again, on
		// the entry made anew.
		c = client_of(group, client, t);
		if (!c)
			return NULL;
		word = __sync_fetch_and_add(&c->held, delta);
		if (word & HELD_DROPPED) {
			t->unfollowed++;
			return NULL;
		}
	}
	if (n == 0)
		return c; // moved: its count is the same
	__s64 before = held_count(word), after = before + n;
	__u32 e = epoch;
	keep_begin(&c->begin[e & 1], e, before);
	keep_peak(&c->peak[e & 1], e, before > after ? before : after);

	__u32 *limit = bpf_map_lookup_elem(&limits, &group);
	struct group_state *g = bpf_map_lookup_elem(&groups, &group);
	if (!limit || !g)
		return c;
	*full = *limit > 0 && before >= *limit;
	__u32 is = *limit > 0 && after >= *limit, was = c->at_limit;
	if (is == was || __sync_val_compare_and_swap(&c->at_limit, was, is) != was)
		return c;
	if (is) {
		if (__sync_fetch_and_add(&g->clients_at_limit, 1) == 0)
			g->since_ns = now;
	} else if (__sync_fetch_and_add(&g->clients_at_limit, -1) == 1) {
		__sync_fetch_and_add(&g->at_limit_ns, now - g->since_ns);
	}
	return c;
}

// server_end is sk as a TCP server end of a watched port in the exporter's
// namespace, with its group; NULL for any other socket.
static __always_inline struct tcp_sock *server_end(const struct sock_common *skc, __u32 *group)
{
	// Most changes on a host are other ports' (a client end's local port
	// is its own): the ports' groups turn them away before the helper call
	// that tells TCP. A socket going to CLOSE has given its port back
	// (inet_put_port zeroes skc_num before the change is traced): its port
	// is then the tcp_sock's inet_sport, asked after the helper.
	__u16 num = skc->skc_num;
	if (num && !group_of(num, group))
		return NULL;
	struct tcp_sock *tp = bpf_skc_to_tcp_sock((void *)skc);
	if (!tp)
		return NULL; // not TCP: the tracepoint is DCCP's, SCTP's and MPTCP's too
	if (!group_of(bpf_ntohs(tp->inet_conn.icsk_inet.inet_sport), group))
		return NULL;
	if (tp->inet_conn.icsk_inet.sk.__sk_common.skc_net.net->ns.inum != netns_inum)
		return NULL;
	return tp;
}

// closed counts a counted connection's close, by how it ended, and after
// how long.
static __always_inline void closed(struct group_totals *t, struct client_state *c, const struct socket_state *st,
				   int oldstate, int newstate, __u64 now)
{
	__u32 how = CLOSED_BY_AGENT;
	if (newstate == TCP_CLOSE)
		how = CLOSED_BY_RESET;
	else if (oldstate == TCP_CLOSE_WAIT || newstate == TCP_CLOSE_WAIT)
		how = CLOSED_BY_CLIENT;
	if (how < CLOSE_KINDS) {
		t->closed[how]++;
		if (c)
			__sync_fetch_and_add(&c->closed[how], 1);
	}
	if (!st->opened_ns)
		return; // open before the start: its lifetime is not known
	__u64 lived = now - st->opened_ns;
	t->lifetime_ns += lived;
	__u32 i = 0;
	for (; i < LIFETIME_BUCKETS; i++)
		if (lived <= lifetime_bounds_ns[i])
			break;
	if (i <= LIFETIME_BUCKETS)
		t->lifetimes[i]++;
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
	// Storage is made at the open; a socket without it was open before
	// the census found it, which counts it.
	bool opens = !was && is;
	struct socket_state *st = bpf_sk_storage_get(&sockets, tp, 0, opens ? BPF_SK_STORAGE_GET_F_CREATE : 0);
	if (!st) {
		if (opens)
			t->lost++;
		return 0;
	}
	if (own(st, &sk->__sk_common, opens))
		return 0;
	struct connection_key key = {.port = bpf_ntohs(tp->inet_conn.icsk_inet.inet_sport)};
	addresses(sk, &key);
	bool counted = st->counted, full;
	__u32 counted_in = st->generation, now_in = generation;
	__u64 now;
	if (is) {
		if (!was)
			t->opened++;
		if (!recount(st, &key, newstate, now_in)) {
			t->lost++; // counted as it was, or, new, not at all
			return 0;
		}
		if (counted && !((counted_in ^ now_in) & 1))
			return 0; // from one watched state to another: the client's count is the same
		now = bpf_ktime_get_ns();
		if (counted) {
			follow(group, key.client, t, held_move(counted_in, now_in), 0, now, &full);
			return 0;
		}
		struct client_state *c = follow(group, key.client, t, held_delta(now_in, 1), 1, now, &full);
		if (!was) { // a new connection
			st->opened_ns = now;
			if (c)
				__sync_fetch_and_add(&c->opened, 1);
		}
		st->over_limit = full && !was ? OVER_LIMIT : 0;
		return 0;
	}
	if (!counted)
		return 0;
	count_as(&key, st->state, counted_in, -1);
	st->counted = 0;
	now = bpf_ktime_get_ns();
	struct client_state *c = follow(group, key.client, t, held_delta(counted_in, -1), -1, now, &full);
	closed(t, c, st, oldstate, newstate, now);
	return 0;
}

// What the census's last call drops of each client.
struct settling {
	__u32 old;   // the generation moved from
	__u32 epoch; // of the peaks, now
};

// settle runs on every client once the census has moved every socket: what
// the old generation still holds is of connections gone, and no event
// writes it any more; it is dropped, so that the next census, which moves
// the counts into it, finds it empty. A client that holds nothing, whose
// count did not change in this epoch of the peaks (its peak is 0) nor at
// all since the census before found it so (the word's version is the
// same), is dropped: its churn lives on in the totals. Every event that
// changed it is then an audit's interval old, its bookkeeping long done;
// one that took the entry before the drop finds its add made on a dropped
// one (follow), and makes it again.
static long settle(struct bpf_map *map, struct client_key *key, struct client_state *c, struct settling *s)
{
	__u64 held = c->held;
	if (held & HELD_DROPPED)
		return 0;
	__s64 stale = held_in(held, s->old);
	if (stale)
		held = __sync_fetch_and_add(&c->held, held_delta(s->old, -stale)) + held_delta(s->old, -stale);
	if ((held & HELD_COUNTS) != HELD_NONE || epoch_of(c->begin[s->epoch & 1]) == s->epoch) {
		c->idle = 0;
		return 0;
	}
	__u32 idle = (__u32)(held >> 49) | IDLE;
	if (c->idle != idle) {
		c->idle = idle; // holding nothing, since this version: dropped at the next census if still so
		return 0;
	}
	if (__sync_val_compare_and_swap(&c->held, held, held | HELD_DROPPED) == held)
		bpf_map_delete_elem(&clients_held, key);
	return 0;
}

SEC("iter/tcp")
int census(struct bpf_iter__tcp *ctx)
{
	struct sock_common *skc = ctx->sk_common;
	if (!skc) {
		// The last call, after every socket: the clients are settled
		// where every counted socket moved (else the old generation
		// still holds some of them, and is kept).
		if (!unmoved) {
			struct settling s = {.old = generation - 1, .epoch = epoch};
			bpf_for_each_map_elem(&clients_held, settle, &s, 0);
			settled = generation;
		}
		return 0;
	}
	if (!watched(skc->skc_state))
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
	if (own(st, skc, !st->counted))
		return 0;
	__u32 now_in = generation;
	if (st->counted && st->generation == now_in)
		return 0; // counted in this generation already, by an event
	struct connection_key key = {.port = bpf_ntohs(tp->inet_conn.icsk_inet.inet_sport)};
	addresses((struct sock *)tp, &key);
	bool counted = st->counted, full;
	__u32 counted_in = st->generation;
	if (!counted)
		t->seeded++;
	if (!recount(st, &key, skc->skc_state, now_in)) {
		if (counted)
			__sync_fetch_and_add(&unmoved, 1);
		else
			t->lost++;
		return 0;
	}
	if (counted)
		follow(group, key.client, t, held_move(counted_in, now_in), 0, 0, &full);
	else
		follow(group, key.client, t, held_delta(now_in, 1), 1, bpf_ktime_get_ns(), &full);
	return 0;
}
