// Package parser turns the socket tables printed by ss (iproute2) and netstat
// (net-tools, busybox) into socket records, one line at a time.
//
// It detects the format of each line by itself, so the same parser reads
// ss with or without a header, a State column, a Netid column or the -p, -e,
// -o and -i extras, and netstat with or without -W. It knows nothing of the
// command that printed the table nor of what is done with the sockets.
package parser

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"github.com/consul-conn-exporter/consul-conn-exporter/internal/table/socket"
)

// Kind says what a line of the table is.
type Kind uint8

const (
	// NotSocket is a title, header, blank or continuation (ss -i) line.
	NotSocket Kind = iota
	// TCPSocket is a row for a TCP socket: the Socket is filled in.
	TCPSocket
	// OtherSocket is a row for a socket of another protocol (udp, unix ...).
	OtherSocket
	// TCPInfo is ss -i's line of the kernel's counts of the row above's
	// data (tcp_info): the Socket's Traffic is filled in, nothing else.
	TCPInfo
)

// Parser reads lines of one table.
type Parser struct {
	// ImpliedState is the state of rows printed without a State column,
	// which ss drops when its filter names a single state
	// (`ss -tn state established`). socket.StateUnknown makes such rows an error.
	ImpliedState socket.State
	// Processes reads the name of the program owning each row (ss -p,
	// netstat -p). Its user and inode (ss -e, netstat -e) are read
	// wherever the row has them.
	Processes bool
}

// ParseLine reads one line. An error means a line that is none of the known
// kinds: the table is not one this parser understands.
func (p Parser) ParseLine(line string) (socket.Socket, Kind, error) {
	w := words{rest: line}
	s, kind, err := p.parseLine(&w)
	if kind == TCPSocket && err == nil {
		s.UID, s.Inode, s.UIDKnown = owner(w.rest)
		if p.Processes {
			s.Process = socket.ProcessName(program(w.rest))
		}
	}
	return s, kind, err
}

// program is the first program named in what follows a row's addresses
// (and netstat's State): ss's users:(("nomad",pid=1,fd=7),...) anywhere
// among its extras, or netstat's PID/Program name column (after User and
// Inode with -e); "" if neither.
func program(rest string) string {
	if i := strings.Index(rest, `users:(("`); i >= 0 {
		name := rest[i+len(`users:(("`):]
		if end := strings.IndexByte(name, '"'); end > 0 {
			return name[:end]
		}
		return ""
	}
	w := words{rest: rest}
	for range 3 {
		word := w.next()
		if slash := strings.IndexByte(word, '/'); slash > 0 && isCount(word[:slash]) {
			return word[slash+1:]
		}
	}
	return ""
}

// owner is the socket's user and inode, known where the row has them: ss
// -e's extras (ino:12345, and uid:100, which ss prints only for a user
// other than root), or netstat -e's User and Inode columns (numeric with
// -n).
func owner(rest string) (uid uint32, inode uint64, known bool) {
	if i := strings.Index(rest, " ino:"); i >= 0 {
		w := words{rest: rest[i+len(" ino:"):]}
		inode, _ = number(w.next())
		if j := strings.Index(rest, " uid:"); j >= 0 {
			w = words{rest: rest[j+len(" uid:"):]}
			n, ok := number(w.next())
			if !ok || n > 1<<32-1 {
				return 0, inode, false
			}
			uid = uint32(n)
		}
		return uid, inode, true
	}
	w := words{rest: rest}
	user, ok := number(w.next())
	if !ok || user > 1<<32-1 {
		return 0, 0, false
	}
	if inode, ok = number(w.next()); !ok {
		return 0, 0, false
	}
	return uint32(user), inode, true
}

// number reads a decimal number of at most 19 digits, without allocating
// (strconv's errors do).
func number(s string) (uint64, bool) {
	if !isCount(s) || len(s) > 19 {
		return 0, false
	}
	var n uint64
	for i := 0; i < len(s); i++ {
		n = n*10 + uint64(s[i]-'0')
	}
	return n, true
}

func (p Parser) parseLine(w *words) (socket.Socket, Kind, error) {
	if strings.HasPrefix(w.rest, "\t") { // ss -i, -m: details of the row above
		if t, ok := traffic(w.rest); ok {
			return socket.Socket{Traffic: t}, TCPInfo, nil
		}
		return socket.Socket{}, NotSocket, nil
	}
	first := w.next()
	switch {
	case first == "" || isHeaderWord(first):
		return socket.Socket{}, NotSocket, nil
	case isCount(first): // ss with one `state X` filter: Recv-Q Send-Q Local Peer
		return p.stateless(w, first)
	case first == "tcp" || first == "tcp6":
		return p.tcpRow(w, first == "tcp6")
	}
	if state, ok := tableState(first); ok { // ss: State Recv-Q Send-Q Local Peer
		return row(w, w.next(), state)
	}
	if otherProtocols[first] {
		return socket.Socket{}, OtherSocket, nil
	}
	return socket.Socket{}, NotSocket, errNotRow
}

var errNotRow = errors.New("not a socket row of ss or netstat")

// traffic reads ss -i's counts of a socket's data from its info line:
// the last data sent and received, in ms, which ss prints for every TCP
// socket with tcp_info, and the bytes each way, which it leaves out where
// they are 0. False for a line without the former (ss -m's alone).
func traffic(line string) (socket.Traffic, bool) {
	sinceSent, okSent := field(line, " lastsnd:")
	sinceReceived, okReceived := field(line, " lastrcv:")
	if !okSent || !okReceived {
		return socket.Traffic{}, false
	}
	sent, _ := field(line, " bytes_sent:")
	received, _ := field(line, " bytes_received:")
	return socket.Traffic{BytesSent: sent, BytesReceived: received,
		SinceSent: uint32(min(sinceSent, 1<<32-1)), SinceReceived: uint32(min(sinceReceived, 1<<32-1))}, true
}

// field is the number after key in line; false where key is not there,
// or not followed by a number.
func field(line, key string) (uint64, bool) {
	i := strings.Index(line, key)
	if i < 0 {
		return 0, false
	}
	rest := line[i+len(key):]
	end := 0
	for end < len(rest) && rest[end] >= '0' && rest[end] <= '9' {
		end++
	}
	return number(rest[:end])
}

// tcpRow reads the rest of a row that starts with "tcp" or "tcp6": ss with
// a Netid column (tcp State Recv-Q ...) or netstat (tcp Recv-Q Send-Q Local
// Foreign socket.State). net-tools' netstat prints a v4-mapped address of
// an IPv6 socket ("tcp6") bare: it is made v4-mapped again, the socket
// being IPv6 (a dual-stack listener's connection).
func (p Parser) tcpRow(w *words, ipv6 bool) (socket.Socket, Kind, error) {
	second := w.next()
	if state, ok := tableState(second); ok {
		return row(w, w.next(), state)
	}
	s, kind, err := row(w, second, socket.StateUnknown)
	if err != nil {
		return s, kind, err
	}
	if ipv6 {
		s.Local, s.Peer = mapped(s.Local), mapped(s.Peer)
	}
	if state, ok := tableState(w.next()); ok { // netstat's State column
		s.State = state
		return s, kind, nil
	}
	return p.implied(s) // ss with Netid and one `state X` filter
}

// mapped is ap as an IPv6 socket has it: an IPv4 address v4-mapped.
func mapped(ap netip.AddrPort) netip.AddrPort {
	if ap.Addr().Is4() {
		return netip.AddrPortFrom(netip.AddrFrom16(ap.Addr().As16()), ap.Port())
	}
	return ap
}

func (p Parser) stateless(w *words, recvQ string) (socket.Socket, Kind, error) {
	s, kind, err := row(w, recvQ, socket.StateUnknown)
	if err != nil {
		return s, kind, err
	}
	return p.implied(s)
}

func (p Parser) implied(s socket.Socket) (socket.Socket, Kind, error) {
	if p.ImpliedState == socket.StateUnknown {
		return socket.Socket{}, NotSocket, errors.New("row has no State column, and the command names no single state")
	}
	s.State = p.ImpliedState
	return s, TCPSocket, nil
}

// row reads the columns Send-Q, Local and Peer that follow recvQ.
func row(w *words, recvQ string, state socket.State) (socket.Socket, Kind, error) {
	if !isCount(recvQ) || !isCount(w.next()) {
		return socket.Socket{}, NotSocket, errNotRow
	}
	localWord, peerWord := w.next(), w.next()
	if peerWord == "" {
		return socket.Socket{}, NotSocket, errNotRow
	}
	local, err := parseEndpoint(localWord)
	if err != nil {
		return socket.Socket{}, NotSocket, err
	}
	peer, err := parseEndpoint(peerWord)
	if err != nil {
		return socket.Socket{}, NotSocket, err
	}
	return socket.Socket{State: state, Local: local, Peer: peer}, TCPSocket, nil
}

// parseEndpoint reads the address forms of ss and netstat:
// 127.0.0.1:8500, 127.0.0.1%lo:8500, [::1]:8500, [::1]%lo:8500,
// [::ffff:10.0.0.5]:8500, *:8500, 0.0.0.0:*, and netstat's unbracketed
// ::1:8500 and :::* (the port is after the last colon).
func parseEndpoint(s string) (netip.AddrPort, error) {
	var host, port string
	if strings.HasPrefix(s, "[") {
		end := strings.IndexByte(s, ']')
		if end < 0 {
			return netip.AddrPort{}, fmt.Errorf("address %q: no closing bracket", s)
		}
		host, port = s[1:end], s[end+1:]
		if zone := strings.IndexByte(port, ':'); strings.HasPrefix(port, "%") && zone > 0 {
			port = port[zone:]
		}
		if !strings.HasPrefix(port, ":") {
			return netip.AddrPort{}, fmt.Errorf("address %q: no port", s)
		}
		port = port[1:]
	} else {
		colon := strings.LastIndexByte(s, ':')
		if colon < 0 {
			return netip.AddrPort{}, fmt.Errorf("address %q: no port", s)
		}
		host, port = s[:colon], s[colon+1:]
	}
	if zone := strings.IndexByte(host, '%'); zone >= 0 {
		host = host[:zone]
	}
	var addr netip.Addr
	if host == "*" {
		addr = netip.IPv6Unspecified()
	} else {
		var err error
		if addr, err = netip.ParseAddr(host); err != nil {
			return netip.AddrPort{}, fmt.Errorf("address %q: not numeric (run ss or netstat with -n)", s)
		}
	}
	if port == "*" {
		return netip.AddrPortFrom(addr, 0), nil
	}
	number, ok := parsePort(port)
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("address %q: port is not a number (run ss or netstat with -n)", s)
	}
	return netip.AddrPortFrom(addr, number), nil
}

func parsePort(s string) (uint16, bool) {
	if s == "" || len(s) > 5 {
		return 0, false
	}
	n := 0
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, false
		}
		n = n*10 + int(s[i]-'0')
	}
	return uint16(n), n <= 65535
}

func isCount(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return s != ""
}

// isHeaderWord is the first word of a title or header line:
// ss's "State"/"Recv-Q"/"Netid", netstat's "Active ..." and "Proto".
func isHeaderWord(s string) bool {
	switch s {
	case "State", "Recv-Q", "Netid", "Proto", "Active":
		return true
	}
	return false
}

// otherProtocols are the first column of rows for non-TCP sockets: ss's
// Netid and netstat's Proto.
var otherProtocols = map[string]bool{
	"udp": true, "udp6": true, "udpl": true, "raw": true, "raw6": true, "unix": true,
	"u_str": true, "u_dgr": true, "u_seq": true, "nl": true, "p_raw": true, "p_dgr": true,
	"dccp": true, "sctp": true, "mptcp": true, "v_str": true, "v_dgr": true, "xdp": true, "tipc": true,
}

// words hands out the whitespace-separated words of a line one at a time,
// without allocating; a row's columns are read only as far as needed, never
// into the padding ss and netstat put after them.
type words struct{ rest string }

// next is the next word, or "" at the end of the line.
func (w *words) next() string {
	i := 0
	for i < len(w.rest) && (w.rest[i] == ' ' || w.rest[i] == '\t') {
		i++
	}
	start := i
	for i < len(w.rest) && w.rest[i] != ' ' && w.rest[i] != '\t' {
		i++
	}
	word := w.rest[start:i]
	w.rest = w.rest[i:]
	return word
}
