// Package socket is the record every source of sockets yields: ss and
// netstat through the parser, and the built-in netlink reader.
package socket

import (
	"fmt"
	"net/netip"
	"strings"
)

// Socket is one TCP socket of the table: a row of ss or netstat, or a
// message of the kernel's socket table.
type Socket struct {
	State State
	// Local and Peer are the addresses as printed, without brackets or zone.
	// A v4-mapped address stays mapped, a wildcard is the unspecified
	// address, a wildcard port ("*") is 0.
	Local, Peer netip.AddrPort
	// Process is the command name of the program holding the socket, as
	// `ss -p` (users:(("nomad",pid=…))) or `netstat -p` (1234/nomad) print
	// it; "" when not printed (not asked for, not permitted, or none).
	Process string
	// Inode is the socket's inode (ss -e's ino:, sock_diag's idiag_inode),
	// by which /proc/PID/fd names its program; 0 when not known.
	Inode uint64
	// UID is the user owning the socket as the kernel keeps it, where
	// UIDKnown: the built-in reader's idiag_uid, ss -e's uid: (not printed
	// for root), net-tools netstat -e's User, the user of the listener
	// that accepted a connection the kernel's events counted. Busybox's
	// netstat, and ss and netstat without -e, print none.
	UID      uint32
	UIDKnown bool
	// V6Only is an IPv6 listener's IPV6_V6ONLY, as the built-in reader
	// reads it: a wildcard that takes no IPv4 connection.
	V6Only bool
	// Sockets is how many sockets the record stands for, where a source
	// keeps counts rather than rows (the kernel's events); 0 is one.
	Sockets int
	// Use is what a server-side connection is doing with its slot, where
	// the source tells it (the built-in reader, from tcp_info, which
	// Traffic holds).
	Use     Use
	Traffic Traffic
}

// State is a TCP socket state as the kernel names it.
type State uint8

// The TCP states, in the kernel's order.
const (
	StateUnknown State = iota
	StateEstablished
	StateSynSent
	StateSynRecv
	StateFinWait1
	StateFinWait2
	StateTimeWait
	StateClose
	StateCloseWait
	StateLastAck
	StateListen
	StateClosing
)

// ClientEndStates are the states a local client end can still be a
// program's in: established, or shut down on its side and not closed
// (FIN-WAIT-1 and -2, while the program holds the socket: one closed
// lingers orphaned, with no inode).
var ClientEndStates = []State{StateEstablished, StateFinWait1, StateFinWait2}

// names are ss's spellings, the ones `ss state X` and --states accept.
var names = [...]string{
	StateUnknown:     "unknown",
	StateEstablished: "established",
	StateSynSent:     "syn-sent",
	StateSynRecv:     "syn-recv",
	StateFinWait1:    "fin-wait-1",
	StateFinWait2:    "fin-wait-2",
	StateTimeWait:    "time-wait",
	StateClose:       "close",
	StateCloseWait:   "close-wait",
	StateLastAck:     "last-ack",
	StateListen:      "listen",
	StateClosing:     "closing",
}

// String is the ss filter name, e.g. "close-wait".
func (s State) String() string {
	if int(s) < len(names) {
		return names[s]
	}
	return names[StateUnknown]
}

// ParseState reads a state as a user or `ss state X` writes it
// ("close-wait"; case and '_' or '-' do not matter).
func ParseState(name string) (State, bool) {
	name = strings.ReplaceAll(strings.ToLower(name), "_", "-")
	for s, n := range names {
		if n == name && State(s) != StateUnknown {
			return State(s), true
		}
	}
	return StateUnknown, false
}

// Label is the state as a metric label value or a JSON key: "close_wait".
func (s State) Label() string { return strings.ReplaceAll(s.String(), "-", "_") }

// maxProcessName caps a program's name: the kernel's comm is at most 15
// bytes, so a longer name is not one.
const maxProcessName = 64

// ProcessName is a program's name as its owner chose it (any bytes but NUL,
// prctl(PR_SET_NAME)) made safe to show and to use as a label value: bytes
// that are not UTF-8 become U+FFFD, control characters \xNN, and the length
// is capped.
func ProcessName(raw string) string {
	var b strings.Builder
	for _, r := range strings.ToValidUTF8(raw, "\uFFFD") {
		switch {
		case b.Len() >= maxProcessName:
			return b.String()
		case r < 0x20 || r == 0x7f:
			fmt.Fprintf(&b, `\x%02x`, r)
		default:
			b.WriteRune(r)
		}
	}
	return b.String()
}
