// Package sockdiag reads the kernel's TCP socket table itself, over
// NETLINK_SOCK_DIAG, as ss does: no ss, no netstat, no /proc, no process
// started. The kernel filters the table to the watched ports and states,
// so it sends only the sockets that count; each is decoded in place.
package sockdiag

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"syscall"
	"time"
	"unsafe"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/consul-conn-exporter/consul-conn-exporter/internal/table/socket"
)

// From linux/inet_diag.h and linux/sock_diag.h.
const (
	sockDiagByFamily    = 20 // SOCK_DIAG_BY_FAMILY
	tcpDiagGetSock      = 18 // TCPDIAG_GETSOCK: inet_diag's request of TCP sockets, any family
	inetDiagReqBytecode = 1  // INET_DIAG_REQ_BYTECODE
	bcJmp               = 1  // INET_DIAG_BC_JMP
	bcSCond             = 7  // INET_DIAG_BC_S_COND
	bcDCond             = 8  // INET_DIAG_BC_D_COND
	reqV1Len            = 60 // struct inet_diag_req
	msgLen              = 72 // struct inet_diag_msg
)

// Reader dumps the server-side TCP sockets of some ports in some states.
type Reader struct {
	states   uint32 // idiag_states: a bit per TCP state
	bytecode []byte // INET_DIAG_REQ_BYTECODE: local port is one of the ports
	timeout  time.Duration
	uses     bool // ask for each socket's tcp_info, for its use
}

// MaxFilteredPorts are the most ports the kernel is asked to filter by: a
// condition takes 20 bytes of a request whose filter the kernel reads up to
// 64 KiB (and echoes whole in its error). Past it, the table of every port
// is read, and the ports are told apart here, as every reader of the
// records does.
const MaxFilteredPorts = 1024

// New reads the sockets whose local port is one of ports, and those whose
// peer port is one of clientPorts (the client ends of local connections),
// in states; a read taking longer than timeout fails. Past
// MaxFilteredPorts, it reads those of every port: what reads the records
// keeps those of its ports.
func New(ports, clientPorts []uint16, states []socket.State, timeout time.Duration) *Reader {
	r := &Reader{timeout: timeout}
	if len(ports)+len(clientPorts) <= MaxFilteredPorts {
		r.bytecode = portFilter(ports, clientPorts)
	}
	for _, s := range states {
		r.states |= 1 << s // socket.State numbers the states as the kernel does
	}
	return r
}

// WithUses is r reading each socket's use too, from its tcp_info in the
// same dump: no second walk of the table.
func (r Reader) WithUses() *Reader {
	r.uses = true
	return &r
}

// String names the source, for messages.
func (r *Reader) String() string { return "the kernel's socket table (netlink sock_diag)" }

// portFilter compiles "local port is one of ports, or peer port one of
// clientPorts" as ss compiles `sport = :A or dport = :B`: a host condition
// with no address per port (INET_DIAG_BC_S_COND, _D_COND, in every kernel
// with sock_diag), joined by jumps. A condition that holds jumps past its
// own end; one that fails jumps 4 bytes further, over the JMP that follows
// a held one, into the next condition, or past the end of the program: no
// match.
func portFilter(ports, clientPorts []uint16) []byte {
	const condLen = 16 // op (4) + inet_diag_hostcond (8) + an unused address (4)
	type condition struct {
		op   byte
		port uint16
	}
	var conditions []condition
	for _, p := range ports {
		conditions = append(conditions, condition{bcSCond, p})
	}
	for _, p := range clientPorts {
		conditions = append(conditions, condition{bcDCond, p})
	}
	var program []byte
	for i := len(conditions) - 1; i >= 0; i-- {
		cond := make([]byte, condLen)
		cond[0], cond[1] = conditions[i].op, condLen
		binary.NativeEndian.PutUint16(cond[2:], condLen+4)
		cond[4] = unix.AF_UNSPEC // hostcond.family; prefix_len 0: any address
		binary.NativeEndian.PutUint32(cond[8:], uint32(conditions[i].port))
		if len(program) > 0 {
			jump := []byte{bcJmp, 4, 0, 0}
			binary.NativeEndian.PutUint16(jump[2:], uint16(len(program)+4))
			cond = append(append(cond, jump...), program...)
		}
		program = cond
	}
	return program
}

// errInterrupted is a dump during which the table changed
// (NLM_F_DUMP_INTR): what it sent may miss or repeat sockets.
var errInterrupted = errors.New("the socket table changed during the dump")

// Read calls add with each socket that counts, IPv4 then IPv6. A dump the
// kernel marks as interrupted is read again once, after reset; twice, and
// the read fails. An error means nothing added counts.
func (r *Reader) Read(ctx context.Context, add func(socket.Socket), reset func()) error {
	return retryOnce(func() error { return r.dump(ctx, add) }, reset)
}

func retryOnce(dump func() error, reset func()) error {
	err := dump()
	if errors.Is(err, errInterrupted) {
		reset()
		if err = dump(); errors.Is(err, errInterrupted) {
			return describe(err)
		}
	}
	return err
}

// dump reads the IPv4 table, then the IPv6 one, in this goroutine, into
// one buffer. Measured at 100,000 sockets: handing batches to another
// goroutine, or receiving through netlink.Conn.Receive (a buffer and a
// blocking system call per datagram), cost a third more CPU than the kernel's
// own dump, in futex, nanosleep and epoll calls of Go's scheduler around
// each long recvmsg. A raw non-blocking recvfrom into one buffer costs
// none of that; the netpoller waits only when the kernel has nothing yet.
func (r *Reader) dump(ctx context.Context, add func(socket.Socket)) error {
	deadline := time.Now().Add(r.timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	conn, err := netlink.Dial(unix.NETLINK_SOCK_DIAG, nil)
	if err != nil {
		return describe(err)
	}
	defer conn.Close()
	if err := conn.SetDeadline(deadline); err != nil {
		return describe(err)
	}
	raw, err := conn.SyscallConn()
	if err != nil {
		return describe(err)
	}
	buf := make([]byte, bufferSize)
	// One request for both families (inet_diag's older TCPDIAG_GETSOCK,
	// whose AF_UNSPEC SOCK_DIAG_BY_FAMILY lacks): the kernel walks its TCP
	// hash table once, where a request per family walks it twice.
	request := netlink.Message{
		Header: netlink.Header{Type: tcpDiagGetSock, Flags: netlink.Request | netlink.Dump},
		Data:   r.request(),
	}
	if _, err := conn.Send(request); err != nil {
		return describe(err)
	}
	return receive(raw, buf, add)
}

// bufferSize holds the largest datagram the kernel makes of a dump (it
// caps them at 32 KiB).
const bufferSize = 64 << 10

// receive reads one dump's datagrams until its NLMSG_DONE.
func receive(raw syscall.RawConn, buf []byte, add func(socket.Socket)) error {
	interrupted := false
	for {
		var n int
		var errno syscall.Errno
		err := raw.Read(func(fd uintptr) bool {
			r, _, e := unix.RawSyscall6(unix.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&buf[0])), uintptr(len(buf)), unix.MSG_TRUNC, 0, 0)
			n, errno = int(r), e
			return errno != unix.EAGAIN
		})
		switch {
		case err != nil:
			return describe(err)
		case errno == unix.EINTR:
			continue
		case errno != 0:
			return describe(errno)
		case n > len(buf):
			return fmt.Errorf("netlink sock_diag: a datagram of %d bytes, more than the %d this reader takes", n, len(buf))
		}
		done, intr, err := datagram(buf[:n], add)
		interrupted = interrupted || intr
		if err != nil {
			return err
		}
		if done {
			if interrupted {
				return errInterrupted
			}
			return nil
		}
	}
}

// datagram decodes the messages of one datagram of a dump in place: done
// at its NLMSG_DONE, interrupted when the kernel marks the dump
// inconsistent (NLM_F_DUMP_INTR), an error for an NLMSG_ERROR or anything
// malformed.
func datagram(b []byte, add func(socket.Socket)) (done, interrupted bool, err error) {
	const headerLen = 16 // struct nlmsghdr
	for len(b) > 0 {
		if len(b) < headerLen {
			return false, interrupted, fmt.Errorf("netlink sock_diag: %d stray bytes after the messages", len(b))
		}
		length := int(binary.NativeEndian.Uint32(b))
		kind := netlink.HeaderType(binary.NativeEndian.Uint16(b[4:]))
		flags := netlink.HeaderFlags(binary.NativeEndian.Uint16(b[6:]))
		if length < headerLen || length > len(b) {
			return false, interrupted, fmt.Errorf("netlink sock_diag: a message of %d bytes in %d", length, len(b))
		}
		interrupted = interrupted || flags&netlink.DumpInterrupted != 0
		body := b[headerLen:length]
		switch kind {
		case netlink.Done:
			return true, interrupted, nil
		case netlink.Error:
			if len(body) < 4 {
				return false, interrupted, errors.New("netlink sock_diag: a short error message")
			}
			if errno := -int32(binary.NativeEndian.Uint32(body)); errno != 0 {
				return false, interrupted, describe(syscall.Errno(errno))
			}
		case sockDiagByFamily, tcpDiagGetSock:
			s, err := Decode(body)
			if err != nil {
				return false, interrupted, err
			}
			add(s)
		default:
			return false, interrupted, fmt.Errorf("netlink sock_diag: a message of type %d in the dump", kind)
		}
		b = b[min(len(b), (length+3)&^3):] // messages are 4-byte aligned
	}
	return false, interrupted, nil
}

// request is an inet_diag_req_v2 for TCP sockets of family in the watched
// states, followed by the port filter.
func (r *Reader) request() []byte {
	// struct inet_diag_req: family (AF_UNSPEC: both), src_len, dst_len,
	// ext, the socket id (48), states, dbs.
	b := make([]byte, reqV1Len, reqV1Len+4+len(r.bytecode))
	b[0] = unix.AF_UNSPEC
	if r.uses {
		b[3] = 1 << (inetDiagInfo - 1) // idiag_ext: the tcp_info attribute
	}
	binary.NativeEndian.PutUint32(b[52:], r.states)
	if len(r.bytecode) == 0 {
		return b
	}
	attr := make([]byte, 4)
	binary.NativeEndian.PutUint16(attr, uint16(4+len(r.bytecode)))
	binary.NativeEndian.PutUint16(attr[2:], inetDiagReqBytecode)
	return append(append(b, attr...), r.bytecode...)
}

// Decode reads one inet_diag_msg: the socket's state, its local and peer
// addresses, as the kernel has them (a v4-mapped peer stays mapped), its
// user and inode, for an IPv6 listener whether it is IPV6_V6ONLY, and,
// where its tcp_info came with it, its use.
func Decode(b []byte) (socket.Socket, error) {
	if len(b) < msgLen {
		return socket.Socket{}, fmt.Errorf("netlink sock_diag: a socket message of %d bytes, want %d", len(b), msgLen)
	}
	var local, peer netip.Addr
	switch b[0] {
	case unix.AF_INET:
		local, peer = netip.AddrFrom4([4]byte(b[8:12])), netip.AddrFrom4([4]byte(b[24:28]))
	case unix.AF_INET6:
		local, peer = netip.AddrFrom16([16]byte(b[8:24])), netip.AddrFrom16([16]byte(b[24:40]))
	default:
		return socket.Socket{}, fmt.Errorf("netlink sock_diag: a socket of address family %d", b[0])
	}
	state := socket.State(b[1])
	if state == socket.StateUnknown || state > socket.StateClosing {
		return socket.Socket{}, fmt.Errorf("netlink sock_diag: a socket in TCP state %d", b[1])
	}
	s := socket.Socket{
		State:    state,
		Local:    netip.AddrPortFrom(local, binary.BigEndian.Uint16(b[4:6])),
		Peer:     netip.AddrPortFrom(peer, binary.BigEndian.Uint16(b[6:8])),
		UID:      binary.NativeEndian.Uint32(b[64:68]), // idiag_uid
		UIDKnown: true,
		Inode:    uint64(binary.NativeEndian.Uint32(b[68:72])), // idiag_inode
	}
	for attrs := b[msgLen:]; len(attrs) >= 4; {
		length := int(binary.NativeEndian.Uint16(attrs))
		if length < 4 || length > len(attrs) {
			break
		}
		switch value := attrs[4:length]; binary.NativeEndian.Uint16(attrs[2:]) {
		case inetDiagSkV6Only:
			s.V6Only = state == socket.StateListen && b[0] == unix.AF_INET6 && len(value) > 0 && value[0] != 0
		case inetDiagInfo:
			if traffic, ok := trafficOf(value); ok {
				s.Use, s.Traffic = socket.UseOf(state, traffic), traffic
			}
		}
		attrs = attrs[min(len(attrs), (length+3)&^3):]
	}
	return s, nil
}

// The attributes of a socket's message read here: INET_DIAG_INFO, its
// struct tcp_info (asked for), and INET_DIAG_SKV6ONLY, which the kernel
// adds to every IPv6 listener's.
const (
	inetDiagInfo     = 2
	inetDiagSkV6Only = 11
)

// Where struct tcp_info (linux/tcp.h) keeps what a use is read from.
const (
	tcpiLastDataSent = 44
	tcpiLastDataRecv = 52
	tcpiBytesRecv    = 128 // Linux 4.1
	tcpiBytesSent    = 200 // Linux 4.19
	tcpInfoMinLen    = tcpiBytesSent + 8
)

// trafficOf reads a tcp_info; false where the kernel's is too old to
// have every counter a use is read from.
func trafficOf(info []byte) (socket.Traffic, bool) {
	if len(info) < tcpInfoMinLen {
		return socket.Traffic{}, false
	}
	return socket.Traffic{
		BytesReceived: binary.NativeEndian.Uint64(info[tcpiBytesRecv:]),
		BytesSent:     binary.NativeEndian.Uint64(info[tcpiBytesSent:]),
		SinceReceived: binary.NativeEndian.Uint32(info[tcpiLastDataRecv:]),
		SinceSent:     binary.NativeEndian.Uint32(info[tcpiLastDataSent:]),
	}, true
}

// describe says what a netlink error means for this reader.
func describe(err error) error {
	switch {
	case errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES) || errors.Is(err, unix.EAFNOSUPPORT):
		return fmt.Errorf("netlink sock_diag: %w: netlink sockets are not allowed here (a seccomp filter, or systemd's RestrictAddressFamilies without AF_NETLINK)", err)
	case errors.Is(err, unix.ENOENT):
		return fmt.Errorf("netlink sock_diag: %w: this kernel has no sock_diag for TCP (modprobe tcp_diag)", err)
	case errors.Is(err, unix.EINVAL):
		return fmt.Errorf("netlink sock_diag: %w: the kernel refused the request", err)
	case errors.Is(err, errInterrupted):
		return fmt.Errorf("netlink sock_diag: %w, twice in a row", err)
	}
	return fmt.Errorf("netlink sock_diag: %w", err)
}
