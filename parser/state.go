package parser

import "strings"

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

// tableState reads the State column of ss (ESTAB, CLOSE-WAIT) or netstat
// (ESTABLISHED, CLOSE_WAIT, FIN_WAIT2).
func tableState(col string) (State, bool) {
	switch col {
	case "ESTAB", "ESTABLISHED":
		return StateEstablished, true
	case "SYN-SENT", "SYN_SENT":
		return StateSynSent, true
	case "SYN-RECV", "SYN_RECV":
		return StateSynRecv, true
	case "FIN-WAIT-1", "FIN_WAIT1":
		return StateFinWait1, true
	case "FIN-WAIT-2", "FIN_WAIT2":
		return StateFinWait2, true
	case "TIME-WAIT", "TIME_WAIT":
		return StateTimeWait, true
	case "UNCONN", "CLOSE":
		return StateClose, true
	case "CLOSE-WAIT", "CLOSE_WAIT":
		return StateCloseWait, true
	case "LAST-ACK", "LAST_ACK":
		return StateLastAck, true
	case "LISTEN":
		return StateListen, true
	case "CLOSING":
		return StateClosing, true
	case "UNKNOWN":
		return StateUnknown, true
	}
	return StateUnknown, false
}
