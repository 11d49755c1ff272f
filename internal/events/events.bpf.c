// SPDX-License-Identifier: MIT OR GPL-2.0-only
//go:build ignore
//
// Keeps, in the kernel, the count of the connections the agent holds open on
// the watched ports, as they open and close, and how they open and close:
//
//   inet_sock_set_state (every change of a TCP socket's state): a
//     listener's accept on a watched port, in the exporter's network
//     namespace (the new socket's LISTEN to SYN-RECV change), is marked in
//     the new socket's own storage (it lives and dies with the socket),
//     with the listener's user; such a socket, of a listener of the
//     agent's user, that enters the watched states is counted under its
//     addresses, port, state and user; one that moves between them is
//     moved; one that leaves them is taken off, and its close is counted
//     by how it ended, with its lifetime. A socket no listener accepted (a
//     local user's bound to the port and connected out) is never counted.
//   sock_recv_length, sock_send_length (every read and send call on a
//     socket of the host): a watched connection's last read or send that
//     moved data is kept in its storage, and its client's uses follow it:
//     a read last is a request the agent has not answered (waiting), a
//     send last an answer given (idle).
//   census (a TCP iterator the exporter runs: at start, every audit, and
//     whenever the agent's listeners or a limit change): counts every
//     connection already open that no event counted and that the agent
//     accepted (its listener's user, or where no accept was seen, its own,
//     is the agent's), the seed; takes off any it no longer judges the
//     agent's; and moves every counted one into the new generation. It runs
//     under each socket's lock, the one every change of state holds, so no
//     change can fall between what it reads and what it writes. Whatever a
//     missed event left in the old generation is what the audit reports,
//     and drops. Its last call, once every socket is moved, drops what the
//     old generation of each client's count still holds, judges again
//     which clients are at the limit, and drops the clients that hold
//     nothing: one program type besides the tracepoint, the one
//     every kernel with these programs allows (no map-element iterator,
//     which some security policies refuse).

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_endian.h>
#include "counts.h"

#define MSG_PEEK 2 // include/linux/socket.h


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
// Whether the reads and sends are followed (the kernel has their
// tracepoints, Linux 6.3 and later): where not, a connection's use would
// never change from what its open or the census said, and is left unknown.
const volatile __u8 follow_data = 0;

// The kernel's clock tick in ns (the resolution of its coarse clocks), for
// the last data's times of a connection open before the programs; 0 where
// not known: their uses' start is then not known.
const volatile __u64 tick_ns = 0;

// The census's connections it could not move into the new generation (the
// map full): they stay counted in the old one, which is then kept. The
// exporter zeroes it before each census.
__u64 unmoved = 0;
// The census's connections it found uncounted and could not count (the
// map full, or no storage to be had): the counts lack them. The exporter
// zeroes it before each census.
__u64 uncountable = 0;
// The exporter's clock (bpf_ktime_get_ns's) when it last read the time at
// the limit: no time taken after is before it, so that what it read never
// goes back.
__u64 read_ns = 0;
// The generation whose census's last call settled the clients: the census
// ran to its end.
__u32 settled = 0;

// The open connections, per (generation, addresses, port, state, user):
// a client holds a few such keys, whatever its connections. A key whose
// count falls to 0 is dropped at once (KEY_DROPPED), so that connections
// gone leave no key behind to fill the map.
struct connection_key {
	__u8 local[16];	 // IPv4 v4-mapped
	__u8 client[16]; // IPv4 v4-mapped
	__u32 uid;	 // its listener's user (its own, where no accept was seen)
	__u16 port;	 // local, host order
	__u8 state;
	__u8 generation; // the last bit of it
	__u8 ipv6;	 // an IPv6 socket: its v4-mapped addresses stay so
	__u8 unused[3];	 // zero: keys are compared byte by byte
};

// A full map is a failed insert, counted in lost.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_KEYS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct connection_key);
	__type(value, __s64);
} connections SEC(".maps");

// A key's count with this bit is being dropped: an add that finds it was
// made on a key gone, and is made again on the key made anew.
#define KEY_DROPPED (1LL << 62)

// The time some client of the group held at least its limit, changed
// under the lock in one order: the clients at the limit, since when, the
// time summed, and the last time taken, before which no time is.
struct group_state {
	struct bpf_spin_lock lock;
	__u32 clients_at_limit;
	__u64 since_ns; // when the first of them reached it
	__u64 at_limit_ns;
	__u64 last_ns;
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
	__u64 seeded;			       // found open by the census, uncounted, and counted
	__u64 lost;			       // connections not counted, once each: the connections map full
	__u64 unfollowed;		       // connections whose client was not followed: the clients map full
	__u64 misplaced;		       // moves between watched states not made: the map full
	__u64 whatif[WHATIF_LIMITS];	       // opens each limit not set yet would have refused
};

// Each group's limits not set yet (--whatif.limit), 0 for none: an open
// while its client held one of them or more would have been refused. The
// exporter writes them at load, and sets max_entries to the number of
// groups.
struct whatif_limits {
	__u32 limits[WHATIF_LIMITS];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct whatif_limits);
} whatif SEC(".maps");

// The exporter sets max_entries to the number of groups.
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct group_totals);
} totals SEC(".maps");

// Per group and use (group * OPS + OP_*), how long the connection in that
// use the longest has been so, in ns, as the last census found it: the
// exporter zeroes it before each census.
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, OPS);
	__type(key, __u32);
	__type(value, __u64);
} longest SEC(".maps");

// A connection of the exporter's own to the agent (a read of the limits),
// by its four ends, from its client end's open (which the exporter marks
// OWN_DIAL before it connects) until its server end's: whatever source
// address the kernel picked.
struct own_read {
	__u8 client[16]; // IPv4 v4-mapped
	__u8 server[16];
	__u16 client_port; // host order
	__u16 server_port;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, struct own_read);
	__type(value, __u8);
} own_reads SEC(".maps");

// local_address writes sk's local address into out, v4-mapped for IPv4.
static __always_inline void local_address(const struct sock_common *skc, __u8 out[16])
{
	if (skc->skc_family == AF_INET6)
		__builtin_memcpy(out, &skc->skc_v6_rcv_saddr, 16);
	else
		v4mapped(out, skc->skc_rcv_saddr);
}

// dialed follows the exporter's own client ends to a watched port: at
// their open their four ends are kept, for their server end's open to
// find; at their close they are let go.
static __always_inline void dialed(const struct sock *sk, int newstate)
{
	const struct sock_common *skc = &sk->__sk_common;
	__u32 group;
	if (!group_of(bpf_ntohs(skc->skc_dport), &group))
		return;
	struct tcp_sock *tp = bpf_skc_to_tcp_sock((void *)sk);
	if (!tp)
		return;
	struct socket_state *st = bpf_sk_storage_get(&sockets, tp, 0, 0);
	if (!st || st->own != OWN_DIAL)
		return;
	struct own_read key = {.client_port = skc->skc_num, .server_port = bpf_ntohs(skc->skc_dport)};
	local_address(skc, key.client);
	client_address(sk, key.server);
	__u8 one = 1;
	if (newstate == TCP_ESTABLISHED)
		bpf_map_update_elem(&own_reads, &key, &one, BPF_ANY);
	else
		bpf_map_delete_elem(&own_reads, &key);
}

// own says whether a server end is one of the exporter's own reads, as
// its storage says from its open on; fresh is a socket not counted yet,
// which its four ends may make the exporter's.
static __always_inline bool own(struct socket_state *st, const struct sock *sk, bool fresh)
{
	if (st->own || !fresh)
		return st->own;
	const struct sock_common *skc = &sk->__sk_common;
	struct own_read key = {.client_port = bpf_ntohs(skc->skc_dport), .server_port = skc->skc_num};
	client_address(sk, key.client);
	local_address(skc, key.server);
	if (bpf_map_delete_elem(&own_reads, &key) == 0)
		st->own = OWN_READ; // never counted, whatever it does next
	return st->own;
}

static __always_inline bool watched(int state)
{
	return state >= 0 && state < 32 && (watched_states & (1U << state));
}

// user is the user a connection is judged by: its listener's, where the
// accept was seen, else its socket's own (the kernel gives an accepted
// socket its listener's user).
static __always_inline __u32 user(const struct socket_state *st, const struct sock *sk)
{
	// Both read, then one chosen: one load from either of two kinds of
	// pointer is refused by the verifier.
	__u32 own = sk->sk_uid.val, listener = st->listener_uid;
	asm volatile("" : "+r"(own), "+r"(listener));
	return st->accepted == ACCEPTED ? listener : own;
}

// addresses writes sk's local address, client and user into key.
static __always_inline void addresses(const struct sock *sk, const struct socket_state *st, struct connection_key *key)
{
	client_address(sk, key->client);
	local_address(&sk->__sk_common, key->local);
	key->ipv6 = sk->__sk_common.skc_family == AF_INET6;
	key->uid = user(st, sk);
}

// The compare-and-swaps and retries are bounded: a change lost to others'
// at the same moment, four times over, is left (no peak is lost: theirs
// are as high), or counted where it is a count.
#define CAS_TRIES 4

// add_count adds n to a connection key's count, made where missing, and
// drops the key whose count it brings to 0: the dropping marks the count
// KEY_DROPPED first, by a compare-and-swap from 0 that no add can fall
// between, so that an add made on a key being dropped is seen, and made
// again on the key made anew. False where the map is full.
static __always_inline bool add_count(const struct connection_key *key, __s64 n)
{
	for (int i = 0; i < CAS_TRIES; i++) {
		__s64 *count = bpf_map_lookup_elem(&connections, key);
		if (!count) {
			long err = bpf_map_update_elem(&connections, key, &n, BPF_NOEXIST);
			if (err == 0)
				return true;
			if (err != -17) // EEXIST: another CPU's first, or a key not yet gone
				return false;
			continue;
		}
		__s64 before = __sync_fetch_and_add(count, n);
		if (before & KEY_DROPPED)
			continue;
		if (before + n == 0 && __sync_val_compare_and_swap(count, 0, KEY_DROPPED) == 0)
			bpf_map_delete_elem(&connections, key);
		return true;
	}
	return false;
}

// count_as adds n to the count of state in generation gen under key's
// addresses, port and user; false where the map is full.
static __always_inline bool count_as(struct connection_key *key, __u8 state, __u32 gen, __s64 n)
{
	key->state = state;
	key->generation = gen & 1;
	return add_count(key, n);
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

// lose counts a connection a full map could not count, once.
static __always_inline void lose(struct socket_state *st, struct group_totals *t)
{
	if (st->lost)
		return;
	st->lost = 1;
	t->lost++;
}

// client_of is the client's entry, made where missing; NULL where the map
// is full.
static __always_inline struct client_state *client_of(__u32 group, const __u8 client[16])
{
	struct client_key ck = {.group = group};
	__builtin_memcpy(&ck.client, client, sizeof(ck.client));
	struct client_state *c = bpf_map_lookup_elem(&clients_held, &ck);
	if (c)
		return c;
	struct client_state fresh = {.held = HELD_NONE};
	bpf_map_update_elem(&clients_held, &ck, &fresh, BPF_NOEXIST);
	return bpf_map_lookup_elem(&clients_held, &ck);
}

// unfollow counts a connection whose client a full map could not follow,
// once: the counts have it, the client's churn, peak and time at the limit
// lack it.
static __always_inline void unfollow(struct socket_state *st, struct group_totals *t)
{
	if (st->unfollowed)
		return;
	st->unfollowed = 1;
	t->unfollowed++;
}

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

// judge sets whether a client is at its group's limit from its count as
// it is now, and follows the group's time at the limit, under the group's
// lock: every change of a count that can reach or leave the limit judges
// after it, so the last judge, in the lock's order, sees the last count,
// and no two changes racing on two CPUs leave a client at the limit it
// left. The time taken under the lock never goes back: never before the
// last time taken, nor before the exporter's last read of it.
static __always_inline void judge(__u32 group, struct client_state *c, __u64 now)
{
	__u32 *limit = bpf_map_lookup_elem(&limits, &group);
	struct group_state *g = bpf_map_lookup_elem(&groups, &group);
	if (!limit || !g)
		return;
	__u32 lim = *limit;
	bpf_spin_lock(&g->lock);
	if (now < g->last_ns)
		now = g->last_ns;
	if (now < read_ns)
		now = read_ns;
	g->last_ns = now;
	__u32 is = lim > 0 && held_count(c->held) >= (__s64)lim;
	if (is != c->at_limit) {
		c->at_limit = is;
		if (is) {
			if (g->clients_at_limit++ == 0)
				g->since_ns = now;
		} else if (g->clients_at_limit > 0 && --g->clients_at_limit == 0) {
			g->at_limit_ns += now - g->since_ns;
		}
	}
	bpf_spin_unlock(&g->lock);
}

// follow adds delta to a socket's client's held word (held_delta's: n to
// its count in a generation, or, n 0, one moved between them) and, where
// its count changed, follows what that does to its peak and to its group's
// time at the limit. It returns the client's entry (NULL where not
// followed), and says in before what its count was before (-1 where not
// followed).
static __always_inline struct client_state *follow(__u32 group, const __u8 client[16], struct group_totals *t,
						   struct socket_state *st, __u64 delta, __s64 n, __u64 now, __s64 *before)
{
	*before = -1;
	struct client_state *c = client_of(group, client);
	if (!c) {
		unfollow(st, t);
		return NULL;
	}
	delta += HELD_CHANGE;
	__u64 word = __sync_fetch_and_add(&c->held, delta);
	if (word & HELD_DROPPED) {
		// Dropped by a census between the lookup and the add (it held
		// nothing since the census before): the add is made again, on
		// the entry made anew.
		c = client_of(group, client);
		if (c)
			word = __sync_fetch_and_add(&c->held, delta);
		if (!c || (word & HELD_DROPPED)) {
			unfollow(st, t);
			return NULL;
		}
	}
	if (n == 0)
		return c; // moved: its count is the same
	__s64 after;
	*before = held_count(word);
	after = *before + n;
	__u32 e = epoch;
	keep_begin(&c->begin[e & 1], e, *before);
	keep_peak(&c->peak[e & 1], e, *before > after ? *before : after);

	__u32 *limit = bpf_map_lookup_elem(&limits, &group);
	if (!limit)
		return c;
	__s64 lim = *limit;
	if ((lim > 0 && (*before >= lim || after >= lim)) || c->at_limit)
		judge(group, c, now);
	return c;
}

// half_closed adds n to the client's connections counted in CLOSE-WAIT.
static __always_inline void half_closed(struct client_state *c, __s64 n)
{
	if (c && n)
		__sync_fetch_and_add(&c->closing, (__s32)n);
}

// over_limit says whether a connection opened while its client, c, held at
// least its group's limit besides it: held is its count before. Its
// half-closed connections (CLOSE-WAIT: its FIN come, the agent's not yet)
// are not held by it: the limiter lets go of one as soon as the agent
// reads its end (but for a request under way), so that a connection made
// as another closes (a client coming round at its limit) is no refusal by
// the limiter's rule.
static __always_inline bool over_limit(const struct client_state *c, __u32 group, __s64 held)
{
	__u32 *limit = bpf_map_lookup_elem(&limits, &group);
	if (!c || !limit || !*limit)
		return false;
	__s32 closing = c->closing;
	if (closing > 0)
		held -= closing;
	return held >= (__s64)*limit;
}

// judge_whatif counts an open that each limit not set yet of its group
// would have refused: its client, c, held that many or more besides it
// (held, its count before, in the watched states, as the samples count
// them, so that the two judge alike). Unfollowed, it is not judged: the
// prediction never counts more.
static __always_inline void judge_whatif(struct group_totals *t, struct client_state *c, __u32 group, __s64 held)
{
	struct whatif_limits *w = bpf_map_lookup_elem(&whatif, &group);
	if (!w || !c || held < 0)
		return;
	for (int k = 0; k < WHATIF_LIMITS; k++) {
		__u32 limit = w->limits[k];
		if (limit && held >= (__s64)limit) {
			t->whatif[k]++;
			__sync_fetch_and_add(&c->whatif[k], 1);
		}
	}
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
	if (c && !st->over_limit)
		__sync_fetch_and_add(&c->freed, 1); // a slot the limiter held, let go
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

// joined says whether a server end is a subflow an MPTCP connection added
// (MP_JOIN): the connection is counted by its first subflow, once, as the
// agent's limiter counts it, by its first address.
static __always_inline bool joined(const struct tcp_sock *tp)
{
	if (!tp->is_mptcp)
		return false;
	struct mptcp_subflow_context *ctx = tp->inet_conn.icsk_ulp_data;
	return ctx && BPF_CORE_READ_BITFIELD_PROBED(ctx, mp_join);
}

// in_uses is the op a use word counts its connection under in its
// client's uses; OP_UNKNOWN for none.
static __always_inline __u32 in_uses(__u32 word)
{
	__u32 op = word & USE_OP;
	if (!(word & USE_COUNTED) || (word & USE_ASIDE) || op >= OPS)
		return OP_UNKNOWN;
	return op;
}

// How a use word changes.
enum {
	USE_DID,     // the agent moved data: arg is OP_READ, OP_SENT or OP_UNTOLD
	USE_COUNT,   // counted, or counted again: arg's op where none is known
		     // yet, and USE_ASIDE where it is not ESTABLISHED
	USE_HEARD,   // the census found data received that the agent has not
		     // read: a request in (OP_READ), where nothing was read
	USE_UNCOUNT, // no longer counted
};

static __always_inline __u32 next_use(__u32 old, int how, __u32 arg)
{
	switch (how) {
	case USE_DID:
		return (old & ~USE_OP) | arg;
	case USE_COUNT:
		if (!(old & USE_OP))
			old |= arg & USE_OP;
		return (old & ~USE_ASIDE) | USE_COUNTED | (arg & USE_ASIDE);
	case USE_HEARD:
		return (old & USE_OP) == OP_NONE ? (old & ~USE_OP) | OP_READ : old;
	}
	return old & ~(USE_COUNTED | USE_ASIDE);
}

// use_as changes a socket's use word as how says, and moves it in its
// client's uses where that changed its use there; it returns the word it
// changed (the new one where it could not: a change lost to others' four
// times over, which the next census makes again). The word is changed by
// compare-and-swap, and the uses as the swap that won says: a read and a
// send (no socket lock held) racing with a count or a close (under it)
// each move what the one before them left. A connection is in its client's
// uses only where the word says so (USE_KEPT): one counted while its client
// could not be followed (the clients' map full) is added once it can be,
// by its next change or census, and never taken from what it was not in.
static __always_inline __u32 use_as(struct socket_state *st, __u32 group, const __u8 client[16], int how, __u32 arg)
{
	struct client_key ck = {.group = group};
	__builtin_memcpy(&ck.client, client, sizeof(ck.client));
	struct client_state *c = bpf_map_lookup_elem(&clients_held, &ck);
	for (int i = 0; i < CAS_TRIES; i++) {
		__u32 old = st->use, want = next_use(old, how, arg) & ~USE_KEPT;
		__u32 to = in_uses(want);
		if (c && to != OP_UNKNOWN)
			want |= USE_KEPT;
		if (want == old)
			return old;
		if (__sync_val_compare_and_swap(&st->use, old, want) != old)
			continue;
		__u32 from = (old & USE_KEPT) ? in_uses(old) : OP_UNKNOWN;
		if (!c)
			return old;
		if (from != OP_UNKNOWN && from < OPS)
			__sync_fetch_and_add(&c->uses[from], -1);
		if ((want & USE_KEPT) && to < OPS)
			__sync_fetch_and_add(&c->uses[to], 1);
		return old;
	}
	return next_use(st->use, how, arg);
}

// aside is what USE_COUNT's arg adds for a connection in state.
static __always_inline __u32 aside(int state) { return state == TCP_ESTABLISHED ? 0 : USE_ASIDE; }

// A read shorter than this after an answer is no request, and a send
// shorter than this while a request waits no answer: HTTP/2's control
// frames, in TLS records, which a client sends after an answer as often as
// not, and the agent's acknowledgements of them while a request waits (a
// SETTINGS ACK is 31 bytes there, a PING or its ACK 39, the two
// WINDOW_UPDATEs after a body 48, all three 57; measured on Go's client and
// server, which Consul's are), a TLS 1.3 client's Finished (58), an
// HTTP/1.1 100 Continue. Such a read leaves the use untold until the next
// longer one; such a send leaves it as it was. A real HTTP/1.1 request is
// longer (its request line, Host and User-Agent alone are), and so is an
// answer of the agent's (its status line, Date, Content-Type and
// X-Consul-Index alone are); HTTP/2 compresses a repeated request's
// headers, and one that short reads untold, never wrong.
#define SHORTEST_MESSAGE 64

// did keeps what the agent last did on a server end of a watched port: a
// read or a send (op) that moved data (ret bytes; a read that only peeked
// moved none).
static __always_inline void did(const struct sock *sk, int ret, int flags, __u32 op)
{
	if (ret <= 0 || (flags & MSG_PEEK))
		return;
	__u32 group;
	struct tcp_sock *tp = server_end(&sk->__sk_common, &group);
	if (!tp)
		return;
	struct socket_state *st = bpf_sk_storage_get(&sockets, tp, 0, 0);
	if (!st)
		return; // not one the programs follow
	__u32 last = st->use & USE_OP;
	if (ret < SHORTEST_MESSAGE) {
		if (op == OP_SENT && (last == OP_READ || last == OP_UNTOLD))
			return; // an acknowledgement, no answer
		if (op == OP_READ && (last == OP_SENT || last == OP_UNTOLD))
			op = OP_UNTOLD; // a control frame, no request
	}
	if (last == op)
		return; // no change
	__u8 client[16];
	client_address(sk, client);
	st->use_ns = bpf_ktime_get_ns();
	use_as(st, group, client, USE_DID, op);
}

SEC("tp_btf/sock_recv_length")
int BPF_PROG(received, struct sock *sk, int ret, int flags)
{
	did(sk, ret, flags, OP_READ);
	return 0;
}

SEC("tp_btf/sock_send_length")
int BPF_PROG(sent, struct sock *sk, int ret, int flags)
{
	did(sk, ret, flags, OP_SENT);
	return 0;
}

// accepted marks a listener's new socket of a watched port as accepted,
// with the listener's user: its LISTEN to SYN-RECV change is traced while
// it is still the listener's copy (inet_csk_clone_lock), before it has an
// address of its own.
static __always_inline void accepted(const struct sock *sk)
{
	__u32 group;
	struct tcp_sock *tp = server_end(&sk->__sk_common, &group);
	if (!tp)
		return;
	struct socket_state *st = bpf_sk_storage_get(&sockets, tp, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!st) {
		struct group_totals *t = bpf_map_lookup_elem(&totals, &group);
		if (t)
			t->lost++;
		return;
	}
	st->accepted = ACCEPTED;
	st->listener_uid = sk->sk_uid.val;
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(changed, const struct sock *sk, int oldstate, int newstate)
{
	// Every change of every socket on the host comes here: the states,
	// which cost nothing, are asked first.
	if (oldstate == TCP_LISTEN) {
		if (newstate == TCP_SYN_RECV)
			accepted(sk);
		return 0;
	}
	if ((oldstate == TCP_SYN_SENT && newstate == TCP_ESTABLISHED) || newstate == TCP_CLOSE)
		dialed(sk, newstate);
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
	// Storage is made at a listener's accept, or by the census, which
	// counts what was open before; and at a connect's open, which is never
	// counted (a local user's socket bound to the port and connected out):
	// so that no census counts it either.
	bool opens = !was && is;
	struct socket_state *st = bpf_sk_storage_get(&sockets, tp, 0, opens && oldstate == TCP_SYN_SENT ? BPF_SK_STORAGE_GET_F_CREATE : 0);
	if (!st)
		return 0;
	if (opens && oldstate == TCP_SYN_SENT && !st->accepted)
		st->accepted = DIALED;
	if (own(st, sk, opens && st->accepted == ACCEPTED))
		return 0;
	struct connection_key key = {.port = bpf_ntohs(tp->inet_conn.icsk_inet.inet_sport)};
	addresses(sk, st, &key);
	bool counted = st->counted;
	__s64 before;
	__u32 counted_in = st->generation, now_in = generation;
	__u64 now;
	if (opens) {
		// Only a connection one of the agent's listeners accepted; one
		// of another user's listener, or of none, is left to the census,
		// which judges it again as the agent's listeners change.
		if (st->accepted != ACCEPTED || !agents(key.port, key.uid) || joined(tp))
			return 0;
		if (!recount(st, &key, newstate, now_in)) {
			lose(st, t);
			return 0;
		}
		t->opened++;
		now = bpf_ktime_get_ns();
		st->opened_ns = now;
		struct client_state *c = follow(group, key.client, t, st, held_delta(now_in, 1), 1, now, &before);
		if (c)
			__sync_fetch_and_add(&c->opened, 1);
		half_closed(c, newstate == TCP_CLOSE_WAIT);
		// Nothing read from it yet: silent; but an MPTCP connection's
		// data is read on its MPTCP socket, never seen here.
		st->use_ns = now;
		use_as(st, group, key.client, USE_COUNT, (follow_data && !tp->is_mptcp ? OP_NONE : OP_UNKNOWN) | aside(newstate));
		st->over_limit = over_limit(c, group, before) ? OVER_LIMIT : 0;
		judge_whatif(t, c, group, before);
		if (c)
			st->freed_at_open = c->freed;
		return 0;
	}
	if (!counted)
		return 0;
	__u8 was_state = st->state;
	if (is) { // from one watched state to another
		if (!recount(st, &key, newstate, now_in)) {
			t->misplaced++; // still counted, in the state it left
			return 0;
		}
		__s64 closing = (newstate == TCP_CLOSE_WAIT) - (was_state == TCP_CLOSE_WAIT);
		struct client_state *c = NULL;
		if ((counted_in ^ now_in) & 1)
			c = follow(group, key.client, t, st, held_move(counted_in, now_in), 0, 0, &before);
		else if (closing)
			c = client_of(group, key.client);
		half_closed(c, closing);
		use_as(st, group, key.client, USE_COUNT, aside(newstate));
		return 0;
	}
	count_as(&key, was_state, counted_in, -1);
	st->counted = 0;
	use_as(st, group, key.client, USE_UNCOUNT, 0);
	now = bpf_ktime_get_ns();
	struct client_state *c = follow(group, key.client, t, st, held_delta(counted_in, -1), -1, now, &before);
	half_closed(c, -(was_state == TCP_CLOSE_WAIT));
	closed(t, c, st, oldstate, newstate, now);
	return 0;
}

// What the census's last call does to each client.
struct settling {
	__u32 old;   // the generation moved from
	__u32 epoch; // of the peaks, now
	__u64 now;
	bool moved;  // every counted socket moved: the old generation is settled
};

// settle runs on every client once the census has moved every socket: what
// the old generation still holds is of connections gone, and no event
// writes it any more; it is dropped, so that the next census, which moves
// the counts into it, finds it empty. Then whether the client is at the
// limit is judged again, from its count now and the limit now (one
// changed since, or one a client reached before the start). A client that
// holds nothing, whose count did not change in this epoch of the peaks
// (its peak is 0) nor at all since the census before found it so (the
// word's version is the same), is dropped: its churn lives on in the
// totals. Every event that changed it is then an audit's interval old, its
// bookkeeping long done; one that took the entry before the drop finds its
// add made on a dropped one (follow), and makes it again.
static long settle(struct bpf_map *map, struct client_key *key, struct client_state *c, struct settling *s)
{
	__u64 held = c->held;
	if (held & HELD_DROPPED)
		return 0;
	if (!s->moved) {
		// The old generation still counts some (the map full): kept, and
		// each client only judged again, against the limit now.
		judge(key->group, c, s->now);
		return 0;
	}
	__s64 stale = held_in(held, s->old);
	if (stale)
		held = __sync_fetch_and_add(&c->held, held_delta(s->old, -stale)) + held_delta(s->old, -stale);
	judge(key->group, c, s->now);
	if ((held & HELD_COUNTS) == HELD_NONE) {
		// What missed closes left.
		c->closing = 0;
		for (int i = 0; i < OPS; i++)
			c->uses[i] = 0;
	}
	if ((held & HELD_COUNTS) != HELD_NONE || epoch_of(c->begin[s->epoch & 1]) == s->epoch || c->at_limit) {
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

// since_tick is when, on bpf_ktime_get_ns's clock (now is it), the
// kernel's clock tick was at; 0 where the tick's length is not known.
static __always_inline __u64 since_tick(__u32 at, __u64 now)
{
	if (!tick_ns)
		return 0;
	__u64 ago = (__u64)(__u32)((__u32)bpf_jiffies64() - at) * tick_ns;
	return ago < now ? now - ago : 0;
}

// told is what a connection's last data says its use is, from the
// kernel's own counts (tcp_info's), for one whose last read or send no
// program saw: silent with nothing received; waiting with nothing sent, or
// data received after the last sent; idle for the other way round; not
// known where both fell in one clock tick. since is when that use began,
// where the clock tick is known.
static __always_inline __u32 told(const struct tcp_sock *tp, __u64 now, __u64 *since)
{
	*since = 0;
	if (!tp->bytes_received)
		return OP_NONE;
	__u32 received = tp->inet_conn.icsk_ack.lrcvtime, sent = tp->lsndtime, at = received, op = OP_READ;
	if (tp->bytes_sent) {
		__s32 order = (__s32)(received - sent);
		if (order == 0)
			return OP_UNKNOWN;
		if (order < 0) {
			op = OP_SENT;
			at = sent;
		}
	}
	*since = since_tick(at, now);
	return op;
}

// census_use counts a connection the census found counted in its client's
// uses again, as its storage says (what a missed change left is made
// right), or, where no read or send of it was seen, as its tcp_info says;
// and keeps the longest each use has lasted.
static __always_inline void census_use(struct socket_state *st, const struct tcp_sock *tp, __u32 group,
				       const __u8 client[16], int state)
{
	__u64 now = bpf_ktime_get_ns(), since = 0;
	__u32 op = OP_UNKNOWN;
	if (follow_data && !(st->use & USE_OP) && !tp->is_mptcp)
		op = told(tp, now, &since);
	__u32 old = use_as(st, group, client, USE_COUNT, op | aside(state));
	if (!(old & USE_OP) && op != OP_UNKNOWN)
		st->use_ns = since;
	if (follow_data && (st->use & USE_OP) == OP_NONE && tp->bytes_received) {
		// Nothing read by the agent, and a request in: one the agent
		// has not read yet (too busy to), which waits all the same.
		st->use_ns = since_tick(tp->inet_conn.icsk_ack.lrcvtime, now);
		use_as(st, group, client, USE_HEARD, 0);
	}
	__u32 in = in_uses(st->use);
	__u64 began = st->use_ns;
	if ((in != OP_READ && in != OP_SENT) || !began || began > now)
		return;
	__u32 i = group * OPS + in;
	__u64 *l = bpf_map_lookup_elem(&longest, &i);
	if (l && now - began > *l)
		*l = now - began;
}

SEC("iter/tcp")
int census(struct bpf_iter__tcp *ctx)
{
	struct sock_common *skc = ctx->sk_common;
	if (!skc) {
		// The last call, after every socket: the clients are settled
		// where every counted socket moved (else the old generation
		// still holds some of them, and is kept), and judged again in
		// any case.
		struct settling s = {.old = generation - 1, .epoch = epoch, .now = bpf_ktime_get_ns(), .moved = !unmoved};
		bpf_for_each_map_elem(&clients_held, settle, &s, 0);
		settled = generation;
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
		__sync_fetch_and_add(&uncountable, 1);
		return 0;
	}
	struct sock *sk = (struct sock *)tp;
	if (st->accepted == DIALED || own(st, sk, !st->counted))
		return 0;
	struct connection_key key = {.port = bpf_ntohs(tp->inet_conn.icsk_inet.inet_sport)};
	addresses(sk, st, &key);
	bool counted = st->counted;
	__s64 before;
	__u32 counted_in = st->generation, now_in = generation;
	if (!agents(key.port, key.uid) || joined(tp)) {
		if (!counted)
			return 0;
		// Counted, and no longer the agent's as it is now judged (its
		// listeners' user changed): taken off, no close.
		count_as(&key, st->state, counted_in, -1);
		st->counted = 0;
		use_as(st, group, key.client, USE_UNCOUNT, 0);
		struct client_state *c = follow(group, key.client, t, st, held_delta(counted_in, -1), -1, bpf_ktime_get_ns(), &before);
		half_closed(c, -(st->state == TCP_CLOSE_WAIT));
		return 0;
	}
	if (counted && counted_in == now_in) {
		census_use(st, tp, group, key.client, skc->skc_state);
		return 0; // counted in this generation already, by an event
	}
	__u8 was_state = st->state;
	if (!recount(st, &key, skc->skc_state, now_in)) {
		if (counted) {
			__sync_fetch_and_add(&unmoved, 1);
			census_use(st, tp, group, key.client, skc->skc_state);
		} else {
			lose(st, t);
			__sync_fetch_and_add(&uncountable, 1);
		}
		return 0;
	}
	struct client_state *c;
	if (counted) {
		c = follow(group, key.client, t, st, held_move(counted_in, now_in), 0, 0, &before);
		half_closed(c, (skc->skc_state == TCP_CLOSE_WAIT) - (was_state == TCP_CLOSE_WAIT));
		census_use(st, tp, group, key.client, skc->skc_state);
		return 0;
	}
	t->seeded++;
	c = follow(group, key.client, t, st, held_delta(now_in, 1), 1, bpf_ktime_get_ns(), &before);
	half_closed(c, skc->skc_state == TCP_CLOSE_WAIT);
	census_use(st, tp, group, key.client, skc->skc_state);
	return 0;
}
