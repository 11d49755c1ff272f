// SPDX-License-Identifier: MIT OR GPL-2.0-only
//
// The kernel program of this file is licensed MIT or GPL-2.0 (the kernel
// loads tracing programs only under a GPL-compatible licence); the rest of
// the exporter is Apache-2.0.

package refusals

import (
	"errors"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/btf"

	"github.com/consul-conn-exporter/consul-conn-exporter/internal/kernelbtf"
)

// layout is where struct sock_common keeps what the program reads, from
// the running kernel's BTF: the program follows the kernel it runs on.
type layout struct {
	family, state, num, dport, daddr, v6daddr int16 // struct sock_common
	sport                                     int16 // struct inet_sock
}

// readLayout finds sock_common's fields in the kernel's BTF, and checks
// that the tracepoint hands the program a struct sock first.
func readLayout(spec *btf.Spec) (layout, error) {
	var proto *btf.Typedef
	if err := spec.TypeByName("btf_trace_tcp_send_reset", &proto); err != nil {
		return layout{}, errors.New("this kernel has no tcp_send_reset tracepoint (Linux 4.15 or later)")
	}
	var l layout
	for _, f := range []struct {
		in, name string
		field    *int16
	}{{"sock_common", "skc_family", &l.family}, {"sock_common", "skc_state", &l.state}, {"sock_common", "skc_num", &l.num},
		{"sock_common", "skc_dport", &l.dport}, {"sock_common", "skc_daddr", &l.daddr}, {"sock_common", "skc_v6_daddr", &l.v6daddr},
		{"inet_sock", "inet_sport", &l.sport}} {
		var err error
		if *f.field, err = kernelbtf.Offset(spec, f.in, f.name); err != nil {
			return layout{}, err
		}
	}
	return l, nil
}

// Map sizes.
const (
	maxPorts   = 64
	maxClients = 65536
	keySize    = 20 // group (4) and the client's address (16, v4-mapped for IPv4)
	// The connections counted lately, to count each once: far more than
	// a connection's resets can be apart.
	maxSeen     = 16384
	seenKeySize = 20 // client address (16), client port (2), local port (2)
)

// maps are what the program and the exporter share.
type maps struct {
	// ports: local port (u16, network order) -> group (u32); only these
	// ports' resets count.
	ports *ebpf.Map
	// clients: group and client address -> refusals (u64); an LRU, so a
	// flood of addresses evicts the least recent instead of growing.
	clients *ebpf.Map
	// totals: group (u32) -> refusals (u64), exact whatever is evicted.
	totals *ebpf.Map
	// seen: the connections already counted (client address, client port,
	// local port): a refused connection can be reset twice, by its socket
	// and then by the TIME-WAIT one the kernel keeps for it.
	seen *ebpf.Map
}

func newMaps(groups int) (*maps, error) {
	m := &maps{}
	for _, made := range []struct {
		to   **ebpf.Map
		spec ebpf.MapSpec
	}{
		{&m.ports, ebpf.MapSpec{Name: "ccx_ports", Type: ebpf.Hash, KeySize: 2, ValueSize: 4, MaxEntries: maxPorts}},
		{&m.clients, ebpf.MapSpec{Name: "ccx_clients", Type: ebpf.LRUHash, KeySize: keySize, ValueSize: 8, MaxEntries: maxClients}},
		{&m.totals, ebpf.MapSpec{Name: "ccx_totals", Type: ebpf.Array, KeySize: 4, ValueSize: 8, MaxEntries: uint32(groups)}},
		{&m.seen, ebpf.MapSpec{Name: "ccx_seen", Type: ebpf.LRUHash, KeySize: seenKeySize, ValueSize: 8, MaxEntries: maxSeen}},
	} {
		var err error
		if *made.to, err = ebpf.NewMap(&made.spec); err != nil {
			m.Close() // the ones made; a nil map closes as nothing
			return nil, err
		}
	}
	return m, nil
}

func (m *maps) Close() {
	m.ports.Close()
	m.clients.Close()
	m.totals.Close()
	m.seen.Close()
}

// program counts, at tcp_send_reset, each reset a socket of a watched local
// port sends: a refusal (Consul closing a connection past its per-client
// limit before reading the request). A reset sent for no socket at all
// (nothing listens: NO_SOCKET) has no sk, and is not counted.
//
// A socket closed with its request unread has given its port back by the
// time it resets (skc_num is 0), so the port is read where the tracepoint
// itself reads it, inet_sport; a TIME-WAIT socket has no inet_sock, and
// keeps skc_num.
//
//	sk = ctx[0]; if !sk or sk is a listener or a request return
//	port = sk is TIME-WAIT ? htons(sk->skc_num) : inet_sk(sk)->inet_sport
//	group = ports[port]; if !group return
//	key = {group, sk's peer address (v4-mapped for IPv4)}
//	if seen[{address, peer port, port}] return; seen[...] = 1
//	totals[group]++; clients[key]++ (or 1)
func program(l layout, m *maps) asm.Instructions {
	const (
		fpKey   = -24 // key: group at -24, address at -20 .. -5
		fpPort  = -28
		fpGroup = -32
		fpOne   = -40
		fpSeen  = -64 // address at -64 .. -49, peer port at -48, port at -46
	)
	var p asm.Instructions
	add := func(insns ...asm.Instruction) { p = append(p, insns...) }
	add(
		asm.LoadMem(asm.R7, asm.R1, 0, asm.DWord), // sk
		asm.JEq.Imm(asm.R7, 0, "out"),

		// A listener's reset (to a stray segment of a connection gone) or a
		// request socket's is not a refusal: Consul refuses what it accepted.
		asm.LoadMem(asm.R2, asm.R7, l.state, asm.Byte),
		asm.JEq.Imm(asm.R2, 10, "out"), // TCP_LISTEN
		asm.JEq.Imm(asm.R2, 12, "out"), // TCP_NEW_SYN_RECV
		asm.JNE.Imm(asm.R2, 6, "full"), // TCP_TIME_WAIT
		asm.LoadMem(asm.R2, asm.R7, l.num, asm.Half),
		asm.HostTo(asm.BE, asm.R2, asm.Half),
		asm.StoreMem(asm.RFP, fpPort, asm.R2, asm.Half),
		asm.Ja.Label("port"),
		// Past struct sock: read with a helper, as the verifier wants.
		asm.Mov.Reg(asm.R1, asm.RFP).WithSymbol("full"),
		asm.Add.Imm(asm.R1, fpPort),
		asm.Mov.Imm(asm.R2, 2),
		asm.Mov.Reg(asm.R3, asm.R7),
		asm.Add.Imm(asm.R3, int32(l.sport)),
		asm.FnProbeReadKernel.Call(),
		asm.JNE.Imm(asm.R0, 0, "out"),
	)
	add(labelled("port", lookup(m.ports, fpPort))...)
	add(
		asm.JEq.Imm(asm.R0, 0, "out"),
		asm.LoadMem(asm.R8, asm.R0, 0, asm.Word), // group
		asm.StoreMem(asm.RFP, fpKey, asm.R8, asm.Word),
		asm.StoreMem(asm.RFP, fpGroup, asm.R8, asm.Word),

		asm.LoadMem(asm.R2, asm.R7, l.family, asm.Half),
		asm.JEq.Imm(asm.R2, 10, "v6"), // AF_INET6
		asm.StoreImm(asm.RFP, fpKey+4, 0, asm.Word),
		asm.StoreImm(asm.RFP, fpKey+8, 0, asm.Word),
		asm.StoreImm(asm.RFP, fpKey+12, -65536, asm.Word), // 00 00 ff ff
		asm.LoadMem(asm.R2, asm.R7, l.daddr, asm.Word),
		asm.StoreMem(asm.RFP, fpKey+16, asm.R2, asm.Word),
		asm.Ja.Label("count"),
	)
	add(labelled("v6", copyWords(asm.R7, l.v6daddr, fpKey+4, 4))...)

	// Each connection once.
	add(labelled("count", copyWords(asm.RFP, fpKey+4, fpSeen, 4))...)
	add(
		asm.LoadMem(asm.R2, asm.R7, l.dport, asm.Half),
		asm.StoreMem(asm.RFP, fpSeen+16, asm.R2, asm.Half),
		asm.LoadMem(asm.R2, asm.RFP, fpPort, asm.Half),
		asm.StoreMem(asm.RFP, fpSeen+18, asm.R2, asm.Half),
		asm.Mov.Imm(asm.R1, 1),
		asm.StoreMem(asm.RFP, fpOne, asm.R1, asm.DWord),
	)
	add(update(m.seen, fpSeen, fpOne, 1)...) // BPF_NOEXIST: fails when counted already
	add(asm.JNE.Imm(asm.R0, 0, "out"))

	add(lookup(m.totals, fpGroup)...)
	add(asm.JEq.Imm(asm.R0, 0, "client"), asm.Mov.Imm(asm.R1, 1), asm.StoreXAdd(asm.R0, asm.R1, asm.DWord))
	add(labelled("client", lookup(m.clients, fpKey))...)
	add(asm.JEq.Imm(asm.R0, 0, "new"), asm.Mov.Imm(asm.R1, 1), asm.StoreXAdd(asm.R0, asm.R1, asm.DWord), asm.Ja.Label("out"))
	add(labelled("new", update(m.clients, fpKey, fpOne, 0))...) // BPF_ANY; fpOne holds 1

	add(asm.Mov.Imm(asm.R0, 0).WithSymbol("out"), asm.Return())
	return p
}

// lookup is r0 = bpf_map_lookup_elem(m, fp+key).
func lookup(m *ebpf.Map, key int32) asm.Instructions {
	return asm.Instructions{
		asm.LoadMapPtr(asm.R1, m.FD()),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, key),
		asm.FnMapLookupElem.Call(),
	}
}

// update is r0 = bpf_map_update_elem(m, fp+key, fp+value, flags).
func update(m *ebpf.Map, key, value, flags int32) asm.Instructions {
	return asm.Instructions{
		asm.LoadMapPtr(asm.R1, m.FD()),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, key),
		asm.Mov.Reg(asm.R3, asm.RFP),
		asm.Add.Imm(asm.R3, value),
		asm.Mov.Imm(asm.R4, flags),
		asm.FnMapUpdateElem.Call(),
	}
}

// copyWords copies n 32-bit words from src+from to the stack at fp+to.
func copyWords(src asm.Register, from int16, to int16, n int) asm.Instructions {
	var insns asm.Instructions
	for i := range int16(n) {
		insns = append(insns,
			asm.LoadMem(asm.R2, src, from+4*i, asm.Word),
			asm.StoreMem(asm.RFP, to+4*i, asm.R2, asm.Word))
	}
	return insns
}

// labelled is insns with the first one named label, for jumps.
func labelled(label string, insns asm.Instructions) asm.Instructions {
	insns[0] = insns[0].WithSymbol(label)
	return insns
}
