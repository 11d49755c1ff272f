// SPDX-License-Identifier: MIT OR GPL-2.0-only
//go:build ignore
//
// Counts the connections the agent refuses past its per-client limit, in
// the kernel, as they happen. The limiter (hashicorp/go-connlimit, and the
// RPC server's) closes an accepted connection before reading a byte of it;
// the kernel then resets it, at the close if the request had come, or when
// it comes. So a refusal is decided at the agent's close, while the full
// socket is there to say what the agent read, and counted at its reset:
//
//   inet_sock_set_state: the agent closes a connection of a watched port in
//     the exporter's network namespace (ESTABLISHED or CLOSE-WAIT to
//     FIN-WAIT-1, LAST-ACK, or CLOSE with the socket shut down), having
//     read nothing of it. To CLOSE, the request is there unread and the
//     kernel resets the connection at once: counted. Else its verdict is
//     kept, by the socket's cookie, for the request still to come. A
//     close a second or more after the accept is counted as untracked
//     instead: it may be a refusal held up in a busy agent's accept queue,
//     or a timeout's (the TLS handshake's, https_handshake_timeout, whose
//     client then sends is reset too). The accept's time is kept in the
//     socket's storage, at its LISTEN to SYN-RECV (an MPTCP connection's
//     LISTEN to ESTABLISHED); a connection accepted before the program is
//     not judged.
//   tcp_send_reset: the socket (or the TIME-WAIT one that took over its
//     cookie) resets the connection: a verdict found is taken, and counted.
//
// The cookie is the socket's own, not its addresses: a client whose ports
// come round again is counted once per connection, however often.
//
// Only the agent's connections are judged: those of a listener of the
// agent's user (agent_users, as the exporter judges the listeners; the
// kernel gives an accepted socket its listener's user), never a socket a
// local user bound to the port itself.
//
// With the events' counts beside it (--source events: their maps are
// shared), each refusal is also judged by the limiter's own rule: at the
// agent's close, the client held at least the limit besides this
// connection. One where it held fewer is counted apart (below_limit): the
// limiter held slots the kernel had freed (hashicorp/consul#11030). And on
// the agent's TLS ports, where it reads the handshake before its 429 (so
// nothing says it read nothing), a connection that opened while its client
// held the limit besides it (the events keep that in its storage) and ends
// within its first second, whoever ends it, with no slot of its client's
// let go meanwhile, is a refusal by the limiter's rule alone (else, or
// closed by the agent later, untracked): a suspect, counted by the exporter once a read of the
// agent's limit after it confirms the limit it was judged against (a
// `consul reload` that raised it leaves none counted).

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_endian.h>
#include "counts.h"

#define SEND_SHUTDOWN 2 // include/net/sock.h
#define REFUSED_WITHIN_NS 1000000000ULL // the limiter refuses at the accept: a second is ample

char LICENSE[] SEC("license") = "Dual MIT/GPL";

// The network namespace of the exporter (its /proc/self/ns/net inode): a
// listener on a watched port in any other namespace is someone else's.
const volatile __u32 netns_inum = 0;
// Whether the maps of counts.h are the events', shared: else they are
// empty stand-ins.
const volatile __u32 with_counts = 0;

struct verdict {
	__u32 group;
	__u32 below_limit; // the client held fewer than the limit besides it
	__u8 client[16];   // IPv4 v4-mapped
	__u64 closed_ns; // bpf_ktime_get_ns at the close: the exporter sweeps
			 // those no reset can come for any more
	__u32 doubtful;	 // closed a second or more after its accept (a
			 // refusal held up before the agent's accept, or a
			 // timeout's), or on a port where the agent's listener
			 // could not be told: counted as untracked
	__u32 unused;
};

// The refusals decided at the agent's close whose request, and so whose
// reset, has not come yet (a request already there is reset at the close,
// and counted then). An entry lives from the close to the reset (the
// request is on its way); one whose connection ends without a reset is
// swept by the exporter. Made as needed: the map costs what is pending.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u64); // socket cookie
	__type(value, struct verdict);
} verdicts SEC(".maps");

// The agent's TLS ports (host order), where the exporter reads the limit
// from the agent (its ports.https): the only ports the limiter's rule
// judges. The exporter sets max_entries to the number of ports.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1);
	__type(key, __u16);
	__type(value, __u8);
} tls_ports SEC(".maps");

// A refusal by the limiter's rule alone, until a read of the agent's
// limit after it says whether the limit it was judged against held.
struct suspect {
	__u32 group;
	__u32 limit;	 // as the kernel had it
	__u8 client[16]; // IPv4 v4-mapped
	__u64 judged_ns; // bpf_ktime_get_ns
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u64); // socket cookie
	__type(value, struct suspect);
} suspects SEC(".maps");

// Refusals per client: an LRU, so a flood of addresses evicts the least
// recent instead of growing; totals are exact whatever it evicts.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct client_key);
	__type(value, __u64);
} clients SEC(".maps");

struct total {
	__u64 refused;
	__u64 untracked;   // verdicts or suspects the full maps could not take: maybe refusals
	__u64 below_limit; // of refused, while the kernel held the client below the limit
};

// Per group; the exporter sets max_entries to the number of groups.
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct total);
} totals SEC(".maps");

// count counts one refusal of client in group.
static __always_inline void count(__u32 group, const __u8 client[16], bool below_limit)
{
	struct total *t = bpf_map_lookup_elem(&totals, &group);
	if (t) {
		__sync_fetch_and_add(&t->refused, 1);
		if (below_limit)
			__sync_fetch_and_add(&t->below_limit, 1);
	}
	struct client_key key = {.group = group};
	__builtin_memcpy(&key.client, client, sizeof(key.client));
	add_to(&clients, &key, 1);
}

// The limiter's rule's verdicts on a connection.
enum {
	NOT_OVER, // opened below the limit: the rule of the read nothing judges it
	REFUSED,  // opened past it, and ends within its first second: refused
	MAYBE,	  // opened past it, but the agent may have accepted it below
		  // it: counted as untracked
	JUDGED,	  // opened past it, and judged already (or answered)
};

// freed_since says whether the client of a connection let go of a slot
// since the connection opened: the kernel counts a connection at its
// handshake, the limiter at the agent's accept of it, which may come
// after (a busy accept loop: the HTTPS one waits up to 10 ms on each
// client it refuses).
static __always_inline bool freed_since(const struct sock *sk, const struct socket_state *st, __u32 group)
{
	struct client_key key = {.group = group};
	client_address(sk, key.client);
	struct client_state *c = bpf_map_lookup_elem(&clients_held, &key);
	return c && c->freed != st->freed_at_open;
}

// by_the_limiters_rule judges a connection of a TLS port by the limiter's
// own rule, once: the events found it opened while its client held the
// limit besides it. Ending within its first second, whoever ends it first
// (over HTTPS the agent reads the TLS handshake before its 429, and a real
// agent's refused clients close first, now and then: one in twenty here),
// it is refused, unless its client let go of a slot meanwhile. Closed by
// the agent later, it may be a refusal held up before the accept.
static __always_inline int by_the_limiters_rule(const struct sock *sk, struct socket_state *st, __u16 port,
						__u32 group, __u64 now, bool agent_first)
{
	if (!st || !st->over_limit || !bpf_map_lookup_elem(&tls_ports, &port))
		return NOT_OVER;
	if (st->over_limit != OVER_LIMIT)
		return JUDGED;
	st->over_limit = OVER_LIMIT_JUDGED;
	if (!st->opened_ns)
		return JUDGED;
	if (now - st->opened_ns >= REFUSED_WITHIN_NS)
		return agent_first ? MAYBE : JUDGED;
	return freed_since(sk, st, group) ? MAYBE : REFUSED;
}

// untracked counts a close of group that may be a refusal, or not.
static __always_inline void untracked(__u32 group)
{
	struct total *t = bpf_map_lookup_elem(&totals, &group);
	if (t)
		__sync_fetch_and_add(&t->untracked, 1);
}

// decided counts a verdict come true: a refusal, or, a doubtful one, a
// close that may be one.
static __always_inline void decided(const struct verdict *v)
{
	if (v->doubtful)
		untracked(v->group);
	else
		count(v->group, v->client, v->below_limit);
}

// late says whether the agent's close at now is a second or more after its
// accept of the connection: the limiter refuses at the accept, and a close
// later is a timeout's, or a refusal held up in a busy agent's accept
// queue. st is the connection's storage: a connection with no accept seen
// (open before the program) is neither, and not judged (false, with
// known false).
static __always_inline bool late(const struct socket_state *st, __u64 now, bool *known)
{
	*known = st && st->accepted_ns;
	return *known && now - st->accepted_ns >= REFUSED_WITHIN_NS;
}

// accepted keeps the time of a listener's accept of sk, a connection of a
// watched port, in its storage, for late.
static __always_inline void accepted(const struct sock *sk, __u16 port)
{
	__u32 group;
	if (!group_of(port, &group))
		return;
	struct socket_state *st = bpf_sk_storage_get(&sockets, (void *)sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (st)
		st->accepted_ns = bpf_ktime_get_ns();
}

// below_limit says whether the client of a connection the agent refuses
// held fewer than the limit besides it, as the events count: the count
// still has the connection if their program has not taken it off yet
// (both follow the same change, in either order). st is the connection's
// storage, NULL for none.
static __always_inline bool below_limit(const struct socket_state *st, const struct verdict *v)
{
	if (!with_counts)
		return false;
	__u32 *limit = bpf_map_lookup_elem(&limits, &v->group);
	if (!limit || !*limit)
		return false; // no limit known: nothing is below it
	struct client_key key = {.group = v->group};
	__builtin_memcpy(&key.client, v->client, sizeof(key.client));
	struct client_state *c = bpf_map_lookup_elem(&clients_held, &key);
	__s64 held = c ? held_count(c->held) : 0;
	if (st && st->counted)
		held--; // this one
	return held < *limit;
}

// suspect keeps a refusal by the limiter's rule, for the exporter to count
// once a read of the agent's limit confirms it.
static __always_inline void suspect(const struct sock *sk, __u32 group, __u64 now)
{
	struct suspect s = {.group = group, .judged_ns = now};
	__u32 *limit = bpf_map_lookup_elem(&limits, &group);
	if (limit)
		s.limit = *limit;
	client_address(sk, s.client);
	__u64 cookie = bpf_get_socket_cookie((void *)sk);
	if (bpf_map_update_elem(&suspects, &cookie, &s, BPF_NOEXIST) != 0)
		untracked(group);
}

// pend keeps a verdict of the agent's close until what decides it comes,
// under the socket's cookie (made now); a verdict the full map cannot take
// is counted as untracked.
static __always_inline void pend(const struct sock *sk, const struct verdict *v)
{
	__u64 cookie = bpf_get_socket_cookie((void *)sk);
	if (bpf_map_update_elem(&verdicts, &cookie, v, BPF_NOEXIST) != 0)
		untracked(v->group);
}

// mptcp_changed judges an MPTCP connection (the agent's Go listeners are
// MPTCP's, and an MPTCP client keeps the connection MPTCP), as its
// application sees it: its subflows' data is moved into it whether the
// agent reads it or not, so they say nothing of what the agent read. The
// agent's close (closes, to newstate) having read nothing of it is a
// refusal where its client's data is there (counted then), or comes before
// its end (ends: counted then). No reset comes of it.
static __always_inline void mptcp_changed(const struct sock *sk, int newstate, bool closes, bool ends)
{
	__u32 group;
	__u16 port = bpf_ntohs(BPF_CORE_READ((struct inet_sock *)sk, inet_sport));
	if (!group_of(port, &group))
		return;
	if (!closes && !ends) {
		accepted(sk, port); // its LISTEN to ESTABLISHED
		return;
	}
	if (sk->__sk_common.skc_net.net->ns.inum != netns_inum)
		return;
	int of = whose(port, sk->sk_uid.val);
	if (of == OTHERS)
		return; // not a connection the agent accepted
	bool doubt = of == NOT_TOLD;
	struct mptcp_sock *msk = (void *)sk;
	__u64 received = BPF_CORE_READ(msk, bytes_received);
	if (closes) {
		if (newstate == TCP_CLOSE && !(BPF_CORE_READ_BITFIELD(sk, sk_shutdown) & SEND_SHUTDOWN))
			return; // a reset from the client, not the agent's close
		if (BPF_CORE_READ(msk, bytes_consumed))
			return; // answered: the agent read a request
		struct verdict v = {.group = group, .closed_ns = bpf_ktime_get_ns()};
		bool known;
		v.doubtful = late(bpf_sk_storage_get(&sockets, (void *)sk, 0, 0), v.closed_ns, &known) || doubt;
		if (!known)
			return; // accepted before the program
		client_address(sk, v.client);
		v.below_limit = below_limit(NULL, &v);
		if (received) {
			decided(&v);
			return;
		}
		pend(sk, &v);
		return;
	}
	if (!ends)
		return;
	__u64 cookie = sk->__sk_common.skc_cookie.counter;
	if (!cookie)
		return;
	struct verdict *found = bpf_map_lookup_elem(&verdicts, &cookie);
	if (!found)
		return;
	struct verdict v = *found;
	if (bpf_map_delete_elem(&verdicts, &cookie) != 0)
		return;
	if (received)
		decided(&v);
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(agent_closed, const struct sock *sk, int oldstate, int newstate)
{
	// Every change of state of every socket on the host comes here: what
	// costs nothing (the states) is asked first. FIN-WAIT-1 and LAST-ACK:
	// only the application's close or shutdown goes there.
	bool closes = (oldstate == TCP_ESTABLISHED || oldstate == TCP_CLOSE_WAIT) &&
		      (newstate == TCP_FIN_WAIT1 || newstate == TCP_LAST_ACK || newstate == TCP_CLOSE ||
		       (with_counts && newstate == TCP_CLOSE_WAIT));
	bool ends = newstate == TCP_CLOSE;
	// A listener's accept: a TCP connection's LISTEN to SYN-RECV, an MPTCP
	// one's LISTEN to ESTABLISHED.
	bool accepts = oldstate == TCP_LISTEN && (newstate == TCP_SYN_RECV || newstate == TCP_ESTABLISHED);
	if (!closes && !ends && !accepts)
		return 0;
	if (sk->sk_protocol == IPPROTO_MPTCP) {
		if (!accepts || newstate == TCP_ESTABLISHED)
			mptcp_changed(sk, newstate, closes && newstate != TCP_CLOSE_WAIT, ends);
		return 0;
	}
	if (accepts) {
		if (newstate == TCP_SYN_RECV)
			accepted(sk, sk->__sk_common.skc_num); // host order
		return 0;
	}
	if (!closes)
		return 0;
	struct tcp_sock *tp = bpf_skc_to_tcp_sock((void *)sk);
	if (!tp)
		return 0; // the tracepoint is DCCP's and SCTP's too
	__u32 group;
	__u16 port = bpf_ntohs(tp->inet_conn.icsk_inet.inet_sport);
	if (!group_of(port, &group))
		return 0;
	if (sk->__sk_common.skc_net.net->ns.inum != netns_inum)
		return 0;
	// Where the agent's listener cannot be told, a close that would be a
	// refusal of its is untracked: counted for no one, never dropped.
	int of = whose(port, sk->sk_uid.val);
	if (of == OTHERS)
		return 0; // not a connection the agent accepted
	bool doubt = of == NOT_TOLD;
	struct verdict v = {.group = group, .closed_ns = bpf_ktime_get_ns()};
	struct socket_state *st = bpf_sk_storage_get(&sockets, (void *)sk, 0, 0);
	// To CLOSE: the agent's close with data unread (tcp_close shuts the
	// socket down, then resets it), not a reset from the client or a
	// timeout, which close it before it is shut down.
	bool agents_close = newstate == TCP_FIN_WAIT1 || newstate == TCP_LAST_ACK ||
			    (newstate == TCP_CLOSE && (BPF_CORE_READ_BITFIELD(sk, sk_shutdown) & SEND_SHUTDOWN));
	switch (doubt ? NOT_OVER : by_the_limiters_rule(sk, with_counts ? st : NULL, port, group, v.closed_ns,
						    agents_close && oldstate == TCP_ESTABLISHED)) {
	case REFUSED:
		suspect(sk, group, v.closed_ns);
		return 0;
	case MAYBE:
		untracked(group);
		return 0;
	case JUDGED:
		return 0;
	}
	if (!agents_close && newstate != TCP_CLOSE)
		return 0; // the client's FIN: for the limiter's rule alone
	bool known;
	v.doubtful = late(st, v.closed_ns, &known) || doubt;
	if (!known)
		return 0; // accepted before the program: not known to be the limiter's
	// Read nothing: every byte received (and the FIN, which reading
	// consumes too) is still unread. rcv_nxt - bytes_received is where
	// the connection's data began (both count the FIN, as
	// tcp_rcv_nxt_update adds to both).
	if (tp->copied_seq != tp->rcv_nxt - (__u32)tp->bytes_received)
		return 0; // answered: the agent read a request
	if (!agents_close) {
		// The client's reset while the agent held the connection, having
		// read nothing of it and written to it: Consul's plain HTTP
		// limiter writes its 429 unread, then closes, and a client that
		// resets in between (it read part of the answer, and closed)
		// leaves no close of the agent's to judge. Maybe a refusal.
		if (tp->bytes_sent)
			untracked(group);
		return 0;
	}
	client_address(sk, v.client);
	v.below_limit = below_limit(with_counts ? st : NULL, &v);
	if (newstate == TCP_CLOSE) {
		// The request came and is unread: tcp_close resets the
		// connection right after this, always. Counted now.
		decided(&v);
		return 0;
	}
	// The request is still to come, and the reset with it: the verdict
	// waits for it, under the cookie made now so that the TIME-WAIT
	// socket that may take over from this one carries it too.
	pend(sk, &v);
	return 0;
}

SEC("tp_btf/tcp_send_reset")
int BPF_PROG(agent_reset, const struct sock *sk, const struct sk_buff *skb)
{
	if (!sk)
		return 0; // a reset for no socket: nothing listens there
	// Read, not made: a socket without a cookie has no verdict.
	__u64 cookie = sk->__sk_common.skc_cookie.counter;
	if (!cookie)
		return 0;
	struct verdict *found = bpf_map_lookup_elem(&verdicts, &cookie);
	if (!found)
		return 0;
	struct verdict v = *found;
	// Once per connection: a second reset of it (or one on another CPU at
	// the same moment) finds the verdict gone.
	if (bpf_map_delete_elem(&verdicts, &cookie) != 0)
		return 0;

	decided(&v);
	return 0;
}
