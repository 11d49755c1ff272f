/* SPDX-License-Identifier: MIT OR GPL-2.0-only */
/*
 * What the events' programs keep per socket and per client
 * (events/events.bpf.c), which the refusals' program reads too
 * (refusals/refusals.bpf.c): one layout for both, as the maps are shared.
 */
#ifndef CCX_COUNTS_H
#define CCX_COUNTS_H

// What one socket's counting left in its own storage.
struct socket_state {
	__u64 opened_ns;  // bpf_ktime_get_ns when it entered the watched
			  // states; 0 for one the census found already open
	__u32 generation; // of its count, when counted
	__u8 counted;	  // counted in connections under state and generation
	__u8 state;
	__u8 over_limit; // OVER_LIMIT: it opened while its client held at least
			 // the limit besides it, to be refused by the limiter's
			 // rule; OVER_LIMIT_JUDGED once the refusals judged it
	__u8 unused;
};

enum {
	OVER_LIMIT = 1,
	OVER_LIMIT_JUDGED = 2,
};

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

// What each client did since the program was attached, and holds.
//
// held is its count in its group, per generation as the connections'
// (the one a census moves from, the one it moves to); once a census is
// over, what the old one still holds is of connections gone, and a walk of
// every client drops it (events/events.bpf.c's settle).
//
// The peaks are per epoch, two by its last bit (the one being made, the
// one being read), each an epoch << 32 | a count, changed as one by
// compare-and-swap: begin is the count before the epoch's first change (it
// held from the epoch's start), peak the most the count was in the epoch.
struct client_state {
	__u64 opened;
	__u64 closed[CLOSE_KINDS];
	__s64 held[2];
	__u64 begin[2];
	__u64 peak[2];
	__u32 at_limit; // 1 while counted in its group's clients at the limit
	__u32 unused;
};

// The maps' sizes: never an LRU for counts (an eviction would lose a close
// silently); a full map is a failed insert, counted. The exporter sizes
// them at load (--events.keys); this is the size compiled in.
#define MAX_KEYS (1 << 20)

#endif
