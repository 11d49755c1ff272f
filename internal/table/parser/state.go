package parser

import "github.com/consul-conn-exporter/consul-conn-exporter/internal/table/socket"

// tableState reads the State column of ss (ESTAB, CLOSE-WAIT) or netstat
// (ESTABLISHED, CLOSE_WAIT, FIN_WAIT2).
func tableState(col string) (socket.State, bool) {
	switch col {
	case "ESTAB", "ESTABLISHED":
		return socket.StateEstablished, true
	case "SYN-SENT", "SYN_SENT":
		return socket.StateSynSent, true
	case "SYN-RECV", "SYN_RECV":
		return socket.StateSynRecv, true
	case "FIN-WAIT-1", "FIN_WAIT1":
		return socket.StateFinWait1, true
	case "FIN-WAIT-2", "FIN_WAIT2":
		return socket.StateFinWait2, true
	case "TIME-WAIT", "TIME_WAIT":
		return socket.StateTimeWait, true
	case "UNCONN", "CLOSE":
		return socket.StateClose, true
	case "CLOSE-WAIT", "CLOSE_WAIT":
		return socket.StateCloseWait, true
	case "LAST-ACK", "LAST_ACK":
		return socket.StateLastAck, true
	case "LISTEN":
		return socket.StateListen, true
	case "CLOSING":
		return socket.StateClosing, true
	case "UNKNOWN":
		return socket.StateUnknown, true
	}
	return socket.StateUnknown, false
}
