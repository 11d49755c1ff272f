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
)

// Socket is one row of the table.
type Socket struct {
	State State
	// Local and Peer are the addresses as printed, without brackets or zone.
	// A v4-mapped address stays mapped, a wildcard is the unspecified
	// address, a wildcard port ("*") is 0.
	Local, Peer netip.AddrPort
}

// Kind says what a line of the table is.
type Kind uint8

const (
	// NotSocket is a title, header, blank or continuation (ss -i) line.
	NotSocket Kind = iota
	// TCPSocket is a row for a TCP socket: the Socket is filled in.
	TCPSocket
	// OtherSocket is a row for a socket of another protocol (udp, unix ...).
	OtherSocket
)

// Parser reads lines of one table.
type Parser struct {
	// ImpliedState is the state of rows printed without a State column,
	// which ss drops when its filter names a single state
	// (`ss -tn state established`). StateUnknown makes such rows an error.
	ImpliedState State
}

// maxFields is the most columns a row needs before the extras that follow
// the addresses (Process, -e, -o), which are never read.
const maxFields = 6

// ParseLine reads one line. An error means a line that is none of the known
// kinds: the table is not one this parser understands.
func (p Parser) ParseLine(line string) (Socket, Kind, error) {
	if strings.HasPrefix(line, "\t") { // ss -i, -m: details of the row above
		return Socket{}, NotSocket, nil
	}
	var f [maxFields]string
	n := splitFields(line, &f)
	if n == 0 {
		return Socket{}, NotSocket, nil
	}
	if isHeaderWord(f[0]) {
		return Socket{}, NotSocket, nil
	}
	if state, ok := tableState(f[0]); ok { // ss: State Recv-Q Send-Q Local Peer
		return row(f[:n], 1, state)
	}
	if isCount(f[0]) { // ss with one `state X` filter: Recv-Q Send-Q Local Peer
		return p.stateless(f[:n], 0)
	}
	if f[0] == "tcp" || f[0] == "tcp6" {
		if n > 1 {
			if state, ok := tableState(f[1]); ok { // ss -a with Netid
				return row(f[:n], 2, state)
			}
		}
		if n > 5 {
			if state, ok := tableState(f[5]); ok { // netstat: Proto Recv-Q Send-Q Local Foreign State
				return row(f[:n], 1, state)
			}
		}
		return p.stateless(f[:n], 1) // ss with Netid and one `state X` filter
	}
	if otherProtocols[f[0]] {
		return Socket{}, OtherSocket, nil
	}
	return Socket{}, NotSocket, errNotRow
}

var errNotRow = errors.New("not a socket row of ss or netstat")

func (p Parser) stateless(f []string, queues int) (Socket, Kind, error) {
	if p.ImpliedState == StateUnknown {
		return Socket{}, NotSocket, errors.New("row has no State column, and the command names no single state")
	}
	return row(f, queues, p.ImpliedState)
}

// row reads Recv-Q, Send-Q, local and peer address starting at f[queues].
func row(f []string, queues int, state State) (Socket, Kind, error) {
	if len(f) < queues+4 || !isCount(f[queues]) || !isCount(f[queues+1]) {
		return Socket{}, NotSocket, errNotRow
	}
	local, err := parseEndpoint(f[queues+2])
	if err != nil {
		return Socket{}, NotSocket, err
	}
	peer, err := parseEndpoint(f[queues+3])
	if err != nil {
		return Socket{}, NotSocket, err
	}
	return Socket{State: state, Local: local, Peer: peer}, TCPSocket, nil
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

// splitFields fills f with the first len(f) whitespace-separated words of
// line without allocating, and returns how many it found.
func splitFields(line string, f *[maxFields]string) int {
	n := 0
	for i := 0; i < len(line) && n < len(f); {
		for i < len(line) && (line[i] == ' ' || line[i] == '\t') {
			i++
		}
		start := i
		for i < len(line) && line[i] != ' ' && line[i] != '\t' {
			i++
		}
		if i > start {
			f[n] = line[start:i]
			n++
		}
	}
	return n
}
