/* SPDX-License-Identifier: MIT OR GPL-2.0-only */
/*
 * What the events' programs keep per socket and per client
 * (events/events.bpf.c), which the refusals' program reads too
 * (refusals/refusals.bpf.c): one layout, and one definition of the maps
 * they share, and how both write a client's address. Include it after
 * bpf/bpf_helpers.h (the maps use its macros).
 */
#ifndef CCX_COUNTS_H
#define CCX_COUNTS_H

#define AF_INET6 10 // include/linux/socket.h
#define BPF_F_NO_PREALLOC 1 // include/uapi/linux/bpf.h: a hash map that costs what it holds

// v4mapped writes an IPv4 address as ::ffff:a.b.c.d, so that a client has
// one key whichever family its socket is.
static __always_inline void v4mapped(__u8 out[16], __be32 addr)
{
	__builtin_memset(out, 0, 10);
	out[10] = 0xff;
	out[11] = 0xff;
	__builtin_memcpy(&out[12], &addr, sizeof(addr));
}

// client_address writes sk's peer, the client, into out: as it is for an
// IPv6 socket, v4-mapped for an IPv4 one.
static __always_inline const __u8 *client_address(const struct sock *sk, __u8 out[16])
{
	if (sk->__sk_common.skc_family == AF_INET6)
		__builtin_memcpy(out, &sk->__sk_common.skc_v6_daddr, 16);
	else
		v4mapped(out, sk->__sk_common.skc_daddr);
	return out;
}

// Each port, by its number, to 1 + its group; 0 for a port not watched.
// Set at load, read by both programs: 64 KiB of constants, asked without a
// helper call by every change of every TCP socket on the host.
const volatile __u8 port_groups[65536] = {};

// group_of is the group of a port (host order): false for one not watched.
static __always_inline bool group_of(__u16 port, __u32 *group)
{
	__u8 g = port_groups[port];
	if (!g)
		return false;
	*group = g - 1;
	return true;
}

// add_to adds n to the count under key in map, made where missing; false
// where the map is full.
static __always_inline bool add_to(void *map, const void *key, __s64 n)
{
	__s64 *count = bpf_map_lookup_elem(map, key);
	if (!count) {
		if (bpf_map_update_elem(map, key, &n, BPF_NOEXIST) == 0)
			return true;
		count = bpf_map_lookup_elem(map, key); // another CPU's first
		if (!count)
			return false;
	}
	__sync_fetch_and_add(count, n);
	return true;
}

// What one socket's counting left in its own storage.
struct socket_state {
	__u64 opened_ns;  // bpf_ktime_get_ns when it entered the watched
			  // states; 0 for one the census found already open
	__u32 generation; // of its count, when counted
	__u32 listener_uid; // the user of the listener that accepted it (accepted)
	__u8 counted;	  // counted in connections under state and generation
	__u8 state;
	__u8 over_limit; // OVER_LIMIT: it opened while its client held at least
			 // the limit besides it, to be refused by the limiter's
			 // rule; OVER_LIMIT_JUDGED once the refusals judged it
	__u8 own; // OWN_READ, OWN_DIAL: the exporter's own (below)
	__u8 accepted; // ACCEPTED: a listener's, its LISTEN to SYN-RECV change
		       // seen, which only a listener's accept makes (a
		       // self-connect goes SYN-SENT to SYN-RECV); DIALED: its
		       // open was a connect's (SYN-SENT to ESTABLISHED), never
		       // counted; 0: not known (open before the programs)
	__u8 lost;     // counted once in the lost: a full map could not count it
	__u8 unfollowed; // counted once in the unfollowed: a full map could not
			 // follow its client
	__u8 unused;
	__u64 accepted_ns; // the refusals': bpf_ktime_get_ns at a listener's
			   // accept of it (LISTEN to SYN-RECV; an MPTCP
			   // connection's LISTEN to ESTABLISHED), 0 if not seen
	__u32 freed_at_open; // its client's freed when it opened
	__u32 use; // what its slot is doing: its client's uses (below), changed
		   // only by compare-and-swap, which orders the changes of the
		   // programs that read and send (no socket lock held) with those
		   // of the ones that count it (under it)
	__u64 use_ns; // bpf_ktime_get_ns when its use began; 0 where not known
};

// What a connection's slot is doing, by the agent's last read or send of
// data on it: a use word's last three bits (USE_OP).
enum {
	OP_UNKNOWN, // nothing seen to tell: open before the programs, and the
		    // census could not tell either (both in one clock tick), or an
		    // MPTCP subflow (its data is read on the MPTCP socket)
	OP_NONE,    // nothing read from it yet: silent
	OP_READ,    // a read last: a request in, not answered (waiting)
	OP_SENT,    // a send last: answered, kept open (idle)
	OPS,	    // the uses kept per client: the ops above
	OP_UNTOLD = OPS, // a read too short to be a request, after an answer:
			 // an HTTP/2 client's control frames (a SETTINGS ACK, a
			 // WINDOW_UPDATE, a PING, each in a TLS record), which say
			 // no request came; not told until the next read or send
};
#define USE_OP 7U
#define USE_COUNTED 8U // counted, in the connections' counts
#define USE_ASIDE 16U  // counted in a state other than ESTABLISHED: its state
		       // says its use (CLOSE-WAIT: half-closed), not its uses
#define USE_KEPT 32U   // its client's uses have it (its client followed)

enum {
	OVER_LIMIT = 1,
	OVER_LIMIT_JUDGED = 2,
};

enum {
	ACCEPTED = 1,
	DIALED = 2,
};

enum {
	OWN_READ = 1, // the server end of one of the exporter's own reads of
		      // the agent: never counted, whatever it does next
	OWN_DIAL = 2, // the client end the exporter reads from, so marked by
		      // the exporter before it connects
};

// The agent's user on each watched port (host order), as the exporter
// last judged the listeners (listeners.Judge): only the connections one of
// that user's listeners accepted count. A port without an entry has no
// agent's listener: nothing there counts. ANY_USER where the listeners
// are not known: every listener's connections count. UNTOLD where which
// listener is the agent's cannot be told: nothing counts, and a close
// that may be a refusal is untracked. The exporter sets max_entries to the
// number of ports.
#define ANY_USER 0xffffffffU
#define UNTOLD 0xfffffffeU
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1);
	__type(key, __u16);
	__type(value, __u32);
} agent_users SEC(".maps");

// Whose a connection is, by its port and its listener's user.
enum {
	OTHERS,	   // not the agent's
	AGENTS,	   // one the agent accepted
	NOT_TOLD,  // on a port where which listener is the agent's cannot be told
};

// whose says whose a connection on port whose listener (or socket, where
// no accept was seen) is uid's is.
static __always_inline int whose(__u16 port, __u32 uid)
{
	__u32 *want = bpf_map_lookup_elem(&agent_users, &port);
	if (!want)
		return OTHERS;
	if (*want == UNTOLD)
		return NOT_TOLD;
	return *want == ANY_USER || *want == uid ? AGENTS : OTHERS;
}

// agents says whether a connection on port whose listener (or socket,
// where no accept was seen) is uid's is one the agent accepted.
static __always_inline bool agents(__u16 port, __u32 uid) { return whose(port, uid) == AGENTS; }

struct client_key {
	__u32 group;
	__u8 client[16]; // IPv4 v4-mapped
};

enum {
	CLOSED_BY_AGENT,  // the agent's FIN first
	CLOSED_BY_CLIENT, // the client's FIN first
	CLOSED_BY_RESET,  // a reset, either way
	CLOSE_KINDS,
};

// The limits not set yet each group's opens are judged against
// (--whatif.limit), at most this many a group.
#define WHATIF_LIMITS 4

// What each client did since the program was attached, and holds.
//
// held is its count in its group per generation as the connections' (the
// one a census moves from, the one it moves to), in one word, laid out as
// held.h says (made from internal/kernel/held.go, where the layout is
// defined once): each generation's count plus HELD_BIAS, a bit once the
// entry is dropped, a version every change adds one to. Once a census is
// over, what the old generation still holds is of connections gone, and
// the census's last call drops it (events/events.bpf.c).
//
// The peaks are per epoch, two by its last bit (the one being made, the
// one being read), each an epoch << 32 | a count, changed as one by
// compare-and-swap: begin is the count before the epoch's first change (it
// held from the epoch's start), peak the most the count was in the epoch.
struct client_state {
	__u64 opened;
	__u64 closed[CLOSE_KINDS];
	__u64 held;
	__u64 begin[2];
	__u64 peak[2];
	__u32 at_limit; // 1 while counted in its group's clients at the limit
	__u32 idle;	// the held word's version | IDLE, where a census last
			// found the client holding nothing: dropped at the next
			// census that finds the word unchanged
	__s32 closing;	// of held, in CLOSE-WAIT: its FIN come, the agent's not
			// yet (none once it holds nothing)
	__u32 freed;	// closes of its connections that did not open past the
			// limit: slots the limiter let go (the refusals' rule
			// asks whether one came while a connection of it waited
			// to be accepted)
	__s32 uses[OPS]; // of held, ESTABLISHED, by what each last did (OP_*;
			 // OP_UNKNOWN's is not kept): none once it holds nothing
	__u64 whatif[WHATIF_LIMITS]; // its opens each limit not set yet would
				     // have refused (events/events.bpf.c)
};

#include "held.h"
#define IDLE (1U << 31)

// held_delta is what adds n to a client's count in generation gen.
static __always_inline __u64 held_delta(__u32 gen, __s64 n)
{
	return (__u64)n << ((gen & 1) * HELD_BITS);
}

// held_move is what moves one of a client's count from generation from to
// generation to.
static __always_inline __u64 held_move(__u32 from, __u32 to)
{
	return held_delta(to, 1) + held_delta(from, -1);
}

// held_in is a client's count in generation gen, from its held word.
static __always_inline __s64 held_in(__u64 held, __u32 gen)
{
	return (__s64)((held >> ((gen & 1) * HELD_BITS)) & HELD_MASK) - (__s64)HELD_BIAS;
}

// held_count is a client's count, both generations: 0 for an entry dropped.
static __always_inline __s64 held_count(__u64 held)
{
	if (held & HELD_DROPPED)
		return 0;
	return held_in(held, 0) + held_in(held, 1);
}

// The maps' sizes: never an LRU for counts (an eviction would lose a close
// silently); a full map is a failed insert, counted. The exporter sizes
// them at load (--events.keys); this is the size compiled in.
#define MAX_KEYS (1 << 20)

// The maps both programs use: the events' own, shared with the refusals'
// program (which the exporter loads with these in their place).

// Each socket's counting, in the socket's own storage.
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC); // storage needs it
	__type(key, int);
	__type(value, struct socket_state);
} sockets SEC(".maps");

// What each client of each group did, and holds.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_KEYS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct client_key);
	__type(value, struct client_state);
} clients_held SEC(".maps");

// Each group's per-client limit, as the exporter last read it (0: not
// known); the exporter sets max_entries to the number of groups.
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} limits SEC(".maps");

#endif
