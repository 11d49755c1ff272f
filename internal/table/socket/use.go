package socket

// Use is what a server-side connection is doing with the slot it holds,
// as the kernel's counters of its last data tell it.
type Use uint8

// The uses. Unknown is a connection whose source gives no such counters
// (netstat, a --command without ss -i), or whose last data in each
// direction came in one tick of the kernel's clock: never guessed.
const (
	UseUnknown    Use = iota
	UseWaiting        // a request is in, the agent has not answered it yet
	UseIdle           // the agent answered last: kept in the client's pool
	UseSilent         // opened, and not a byte received from the client yet
	UseHalfClosed     // CLOSE-WAIT: the client shut its side, the agent holds on
)

// UseCount is how many uses there are: an array indexed by Use holds them.
const UseCount = int(UseHalfClosed) + 1

// Uses are every use, in the order the metrics and check list them.
var Uses = []Use{UseWaiting, UseIdle, UseSilent, UseHalfClosed, UseUnknown}

var useLabels = [...]string{UseUnknown: "unknown", UseWaiting: "waiting", UseIdle: "idle", UseSilent: "silent", UseHalfClosed: "half_closed"}

// Label is the use as a metric label value or a JSON key: "half_closed".
func (u Use) Label() string {
	if int(u) < len(useLabels) {
		return useLabels[u]
	}
	return useLabels[UseUnknown]
}

// Traffic is what the kernel counts of a connection's data (tcp_info).
type Traffic struct {
	// BytesReceived and BytesSent are the data bytes received from the
	// peer and sent to it.
	BytesReceived, BytesSent uint64
	// SinceReceived and SinceSent are how long ago, in ms, data was last
	// received and last sent (the kernel's clock tick, 4 ms at 250 Hz,
	// is their grain).
	SinceReceived, SinceSent uint32
}

// UseOf is what a server-side connection in state is doing, by its
// traffic: half-closed in CLOSE-WAIT; silent with nothing received; a
// first request not yet answered with nothing sent; else by which came
// last, a request (waiting) or an answer (idle); unknown where both came
// in one tick.
func UseOf(state State, t Traffic) Use {
	switch {
	case state == StateCloseWait:
		return UseHalfClosed
	case t.BytesReceived == 0:
		return UseSilent
	case t.BytesSent == 0:
		return UseWaiting
	case t.SinceReceived < t.SinceSent:
		return UseWaiting
	case t.SinceSent < t.SinceReceived:
		return UseIdle
	}
	return UseUnknown
}
