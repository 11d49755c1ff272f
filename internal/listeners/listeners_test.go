package listeners

import (
	"context"
	"net/netip"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/consul-conn-exporter/consul-conn-exporter/internal/table/socket"
)

func at(addr string, uid uint32) Listener {
	return Listener{Local: netip.MustParseAddrPort(addr), UID: uid}
}

func v6only(addr string, uid uint32) Listener {
	l := at(addr, uid)
	l.V6Only = true
	return l
}

// consulDefault is where the agent is taken to be where nothing says:
// Consul's default client_addr, at the watched port.
var consulDefault = Where{Addrs: []netip.Addr{netip.MustParseAddr("127.0.0.1")}, Port: 8500}

// conn is a server end at local, its socket's user uid (accepted: the
// listener's; planted: its planter's).
func conn(local string, uid uint32) socket.Socket {
	return socket.Socket{Local: netip.MustParseAddrPort(local), UID: uid, UIDKnown: true, Inode: 1, State: socket.StateEstablished}
}

// One user holding every listener (the usual host, and test rigs that
// listen on many loopback addresses) is the agent; its listeners' own
// connections count, and nothing else on the port: a socket bound to the
// port at an address no listener of its family covers, or one whose user
// is not its listener's, was not accepted by the agent.
func TestOneUserListeningIsTheAgentAndOnlyItsAcceptedConnectionsCount(t *testing.T) {
	a := Judge([]Listener{at("127.0.0.1:8500", 100), at("127.0.0.2:8500", 100), at("[::1]:8500", 100)}, []uint16{8500, 8501}, consulDefault, nil)
	assert.Equal(t, map[uint16]int{8500: 1, 8501: 0}, a.Owners)
	assert.Equal(t, map[uint16]uint32{8500: 100}, a.Users())
	assert.Equal(t, []uint16{8501}, a.Quiet())
	assert.Empty(t, a.Shared())
	assert.Empty(t, a.SharedReason())
	for _, tc := range []struct {
		name    string
		s       socket.Socket
		accepts bool
	}{
		{"accepted at its listener's address", conn("127.0.0.2:8500", 100), true},
		{"accepted over IPv6", conn("[::1]:8500", 100), true},
		{"bound by another user where nothing listens", conn("127.0.0.5:8500", 65534), false},
		{"bound by the agent's user where nothing listens", conn("127.0.0.5:8500", 100), false},
		{"planted by another user at the agent's address before it listened", conn("127.0.0.1:8500", 65534), false},
		{"v4-mapped, with no IPv6 listener to take it", conn("[::ffff:127.0.0.1]:8500", 100), false},
		{"waiting in the listener's queue, read as root's by an older kernel", socket.Socket{Local: netip.MustParseAddrPort("127.0.0.1:8500"), UIDKnown: true}, true},
		{"a table that gives no user", socket.Socket{Local: netip.MustParseAddrPort("127.0.0.1:8500")}, true},
		{"a port nothing listens on", conn("127.0.0.1:8501", 100), false},
	} {
		assert.Equal(t, tc.accepts, a.Accepts(tc.s), tc.name)
	}
}

// Several users: the agent's is the owner of the listener the kernel gives
// the agent's address to (its own address, or the wildcard of its family:
// an IPv6 one with IPV6_V6ONLY takes no IPv4), whichever bound first, or
// the one pinned; connections are matched to the listener of their family
// that took them: at their local address, else the wildcard (:: takes
// v4-mapped ones, but with IPV6_V6ONLY).
func TestSeveralUsersOnlyTheAgentsConnectionsCount(t *testing.T) {
	for _, tc := range []struct {
		name      string
		listeners []Listener
		user      *uint32
		uid       uint32
		accepts   map[socket.Socket]bool
	}{
		{"another user on another loopback address", []Listener{at("127.0.0.1:8500", 100), at("127.0.0.2:8500", 65534)}, nil, 100,
			map[socket.Socket]bool{conn("127.0.0.1:8500", 100): true, conn("127.0.0.2:8500", 65534): false}},
		{"the agent on ::1 too, another user's wildcard on IPv4", []Listener{at("[::1]:8500", 100), at("127.0.0.1:8500", 100), at("0.0.0.0:8500", 65534)}, nil, 100,
			map[socket.Socket]bool{conn("127.0.0.1:8500", 100): true, conn("[::1]:8500", 100): true, conn("127.0.0.9:8500", 65534): false}},
		{"the agent's wildcard, another user's exact address", []Listener{at("0.0.0.0:8500", 100), at("127.0.0.3:8500", 65534)}, nil, 100,
			map[socket.Socket]bool{conn("127.0.0.1:8500", 100): true, conn("10.0.0.1:8500", 100): true, conn("127.0.0.3:8500", 65534): false}},
		{"dual-stack [::] of the agent, another user's [::1]", []Listener{at("[::]:8500", 100), at("[::1]:8500", 65534)}, nil, 100,
			map[socket.Socket]bool{conn("[::ffff:127.0.0.1]:8500", 100): true, conn("[::1]:8500", 65534): false, conn("127.0.0.1:8500", 100): false}},
		{"the agent's IPv4 wildcard, another user's IPV6_V6ONLY [::] bound after it (listed first)", []Listener{v6only("[::]:8500", 65534), at("0.0.0.0:8500", 0)}, nil, 0,
			map[socket.Socket]bool{conn("127.0.0.1:8500", 0): true, conn("[::1]:8500", 65534): false, conn("[::ffff:127.0.0.1]:8500", 65534): false}},
		{"the same, bound before it (listed last)", []Listener{at("0.0.0.0:8500", 0), v6only("[::]:8500", 65534)}, nil, 0,
			map[socket.Socket]bool{conn("127.0.0.1:8500", 0): true, conn("[::1]:8500", 65534): false}},
		{"pinned", []Listener{at("127.0.0.1:8500", 100), at("127.0.0.2:8500", 65534)}, ptr(65534), 65534,
			map[socket.Socket]bool{conn("127.0.0.1:8500", 100): false, conn("127.0.0.2:8500", 65534): true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := Judge(tc.listeners, []uint16{8500}, consulDefault, tc.user)
			assert.Equal(t, map[uint16]uint32{8500: tc.uid}, a.Users())
			assert.Equal(t, []uint16{8500}, a.Shared())
			for s, want := range tc.accepts {
				assert.Equal(t, want, a.Accepts(s), s.Local.String())
			}
		})
	}
}

// The agent's user is the owner of the listener its address reaches, on
// every port: a user listening at the agent's host on the RPC port (where
// the agent listens on its bind address) is not the agent there.
func TestTheAgentsAddressDecidesItsUserOnEveryPort(t *testing.T) {
	ls := []Listener{
		at("127.0.0.1:8500", 100), at("127.0.0.2:8500", 65534), // the agent's HTTP, and a user beside it
		at("10.0.0.5:8300", 100), at("127.0.0.1:8300", 65534), // the agent's RPC, and the user at the agent's host
	}
	a := Judge(ls, []uint16{8500, 8300}, consulDefault, nil)
	assert.Equal(t, map[uint16]uint32{8500: 100, 8300: 100}, a.Users())
	assert.True(t, a.Accepts(conn("10.0.0.5:8300", 100)))
	assert.False(t, a.Accepts(conn("127.0.0.1:8300", 65534)))
	assert.Contains(t, a.SharedReason(), "8300 (the agent's: uid 100), 8500 (the agent's: uid 100)")

	// The user alone on the RPC port: none of its connections count, and
	// that is said.
	a = Judge([]Listener{at("127.0.0.1:8500", 100), at("127.0.0.1:8300", 65534)}, []uint16{8500, 8300}, consulDefault, nil)
	assert.False(t, a.Accepts(conn("127.0.0.1:8300", 65534)))
	assert.Contains(t, a.SharedReason(), "the agent's user (uid 100) does not listen on port 8300")

	// Where Consul's default address reaches no listener while others
	// listen on the watched ports, the agent's cannot be told: none is
	// taken for it, even one user alone (another user's, were the agent
	// down), and that is said; pinned, its user's.
	for _, ls := range [][]Listener{
		{at("10.0.0.5:8500", 100), at("10.0.0.5:8300", 100)},
		{at("10.0.0.5:8500", 100), at("127.0.0.9:8300", 65534)},
	} {
		a = Judge(ls, []uint16{8500, 8300}, consulDefault, nil)
		assert.Empty(t, a.Users())
		assert.False(t, a.Down)
		assert.Contains(t, a.QuietReason(), "the agent's address is not given, and 127.0.0.1 reaches no listener on the watched HTTP ports while others listen on the watched ports (10.0.0.5:8500: uid 100, ")
	}
	a = Judge([]Listener{at("10.0.0.5:8500", 100), at("127.0.0.9:8300", 65534)}, []uint16{8500, 8300}, consulDefault, ptr(100))
	assert.Equal(t, map[uint16]uint32{8500: 100, 8300: 100}, a.Users())
	assert.Empty(t, a.QuietReason())

	// A user listening on a port nothing watches, at the default address,
	// decides nothing: the default is at the watched HTTP port.
	a = Judge([]Listener{at("127.0.0.1:18702", 100), at("127.0.0.1:8500", 65534)}, []uint16{18702},
		Where{Addrs: consulDefault.Addrs, Port: 18702}, nil)
	assert.Equal(t, map[uint16]uint32{18702: 100}, a.Users())
}

// Where no address is given, the default is 127.0.0.1 on the first watched
// HTTP port: where anything listens there, it decides, and another user's
// listener on a port the agent leaves free (8501, HTTPS off by default)
// decides nothing (it blinded every count when each port had its say).
// Where nothing listens there, the other watched HTTP ports are tried: an
// agent that serves only HTTPS is found at its port; listeners of several
// users there make none the agent's, and that is said. The limits are
// read at the first port only (the consul CLI's default, of its scheme).
func TestTheDefaultAddressIsTheAgentsOnTheFirstWatchedHTTPPortElseTheOthers(t *testing.T) {
	def := Where{Addrs: consulDefault.Addrs, Port: 8500, Others: []uint16{8501}}
	plain, tls := at("127.0.0.1:8500", 100), at("127.0.0.1:8501", 100)

	a := Judge([]Listener{plain, at("127.0.0.1:8501", 65534)}, []uint16{8500, 8501}, def, nil)
	assert.Equal(t, map[uint16]uint32{8500: 100, 8501: 100}, a.Users(), "the first port's user, on every port")
	assert.True(t, a.Accepts(conn("127.0.0.1:8500", 100)))
	assert.False(t, a.Accepts(conn("127.0.0.1:8501", 65534)), "not the free port's squatter")
	assert.Equal(t, netip.MustParseAddrPort("127.0.0.1:8500"), a.At)
	assert.Contains(t, a.SharedReason(), "the agent's user (uid 100) does not listen on port 8501, another does")
	assert.Empty(t, a.QuietReason())

	a = Judge([]Listener{tls}, []uint16{8500, 8501}, def, nil)
	assert.Equal(t, map[uint16]uint32{8501: 100}, a.Users(), "found at its port")
	assert.Empty(t, a.Away)
	assert.False(t, a.At.IsValid(), "no plain read of an HTTPS port")

	a = Judge([]Listener{at("127.0.0.1:8501", 65534), at("127.0.0.1:8502", 100)}, []uint16{8500, 8501, 8502},
		Where{Addrs: consulDefault.Addrs, Port: 8500, Others: []uint16{8501, 8502}}, nil)
	assert.Empty(t, a.Users())
	assert.False(t, a.Accepts(conn("127.0.0.1:8502", 100)))
	assert.Contains(t, a.QuietReason(), "nothing listens at Consul's default, 127.0.0.1, on the first watched HTTP port, and listeners of several users do on the others (127.0.0.1:8501: uid 65534, 127.0.0.1:8502: uid 100)")

	addr, err := ParseAddress("", []uint16{8500, 8501})
	require.NoError(t, err)
	assert.Equal(t, def, addr.Last())
	addr, err = ParseAddress("127.0.0.1:8501", []uint16{8500, 8501})
	require.NoError(t, err)
	assert.Empty(t, addr.Last().Others, "a given address is the agent's where it says")
}

// Where the agent's address was given and reaches no listener (the agent
// down, or elsewhere), or reaches listeners of several users (a name with
// an address each: localhost), no listener is the agent's: nothing counts,
// no read of the limits goes there, and that is said, as a port nothing
// listens on is. Only the first is the agent down (it holds nothing); in
// the others which is the agent's cannot be told.
func TestAGivenAddressThatReachesNoListenerOfOneUserCountsNothing(t *testing.T) {
	given := Where{Addrs: []netip.Addr{netip.MustParseAddr("127.0.0.1")}, Port: 8500, Given: true}
	a := Judge([]Listener{at("127.0.0.2:8500", 65534)}, []uint16{8500}, given, nil)
	assert.False(t, a.Accepts(conn("127.0.0.2:8500", 65534)))
	assert.False(t, a.At.IsValid())
	assert.Contains(t, a.QuietReason(), "nothing listens at the agent's address (--consul.server or CONSUL_HTTP_ADDR) on port 8500")
	assert.True(t, a.Down)

	localhost := Where{Addrs: []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("::1")}, Port: 8500, Given: true}
	a = Judge([]Listener{at("127.0.0.1:8500", 100), at("[::1]:8500", 65534)}, []uint16{8500}, localhost, nil)
	assert.False(t, a.Accepts(conn("127.0.0.1:8500", 100)))
	assert.False(t, a.Accepts(conn("[::1]:8500", 65534)))
	assert.False(t, a.At.IsValid(), "no read of the limits from either")
	assert.Contains(t, a.QuietReason(), "the agent's address reaches listeners of several users (127.0.0.1:8500: uid 100, [::1]:8500: uid 65534)")
	assert.False(t, a.Down, "cannot be told")

	a = Judge([]Listener{at("127.0.0.1:8500", 100)}, []uint16{8500}, localhost, nil)
	assert.Equal(t, netip.MustParseAddrPort("127.0.0.1:8500"), a.At, "the one address the agent listens at: where its limit is read")
	assert.True(t, a.Accepts(conn("127.0.0.1:8500", 100)))
	a = Judge([]Listener{at("127.0.0.1:8500", 100), at("[::1]:8500", 65534)}, []uint16{8500}, localhost, ptr(100))
	assert.Equal(t, netip.MustParseAddrPort("127.0.0.1:8500"), a.At, "pinned: the address the agent's user listens at")
	assert.True(t, a.Accepts(conn("127.0.0.1:8500", 100)))

	a = Judge([]Listener{at("127.0.0.1:8500", 100)}, []uint16{8500}, Where{Port: 8500, Given: true}, nil)
	assert.Contains(t, a.QuietReason(), "the agent's address does not resolve, and never did")
	assert.False(t, a.Down, "cannot be told")
}

// Several users and nothing where the agent's address goes (or no address
// known: a name that does not resolve): the agent cannot be told, and
// that is said; no listener's connections count (the collection fails),
// and the kernel programs are told so: nothing counts, and a close that
// may be a refusal is untracked. So too where the agent is down: its
// refusals as it starts again, before the next collection, are untracked,
// not lost. Where its user is known, the programs have it on every port,
// listened on now or not.
func TestSeveralUsersNoneAtTheAgentsAddressIsSaid(t *testing.T) {
	const anyUser, untold = 1 << 31, 1 << 30
	for _, addr := range []Where{consulDefault, {Port: 8500, Given: true}} {
		a := Judge([]Listener{at("127.0.0.5:8500", 100), at("127.0.0.6:8500", 65534)}, []uint16{8500, 8300}, addr, nil)
		assert.NotEmpty(t, a.Away)
		assert.False(t, a.Down)
		assert.False(t, a.Accepts(conn("127.0.0.6:8500", 65534)))
		assert.False(t, a.Accepts(conn("127.0.0.5:8500", 100)))
		assert.Equal(t, map[uint16]uint32{8500: untold, 8300: untold}, KernelUsers(&a, []uint16{8500, 8300}, anyUser, untold))
	}
	a := Judge([]Listener{at("127.0.0.6:8500", 65534)}, []uint16{8500}, Where{Port: 8500, Given: true, Addrs: consulDefault.Addrs}, nil)
	assert.True(t, a.Down)
	assert.Equal(t, map[uint16]uint32{8500: untold}, KernelUsers(&a, []uint16{8500}, anyUser, untold), "down")
	a = Judge(nil, []uint16{8500}, consulDefault, nil)
	assert.Equal(t, map[uint16]uint32{8500: untold}, KernelUsers(&a, []uint16{8500}, anyUser, untold), "nothing listens")
	a = Judge([]Listener{at("127.0.0.1:8500", 100)}, []uint16{8500, 8300}, consulDefault, nil)
	assert.Equal(t, map[uint16]uint32{8500: 100, 8300: 100}, KernelUsers(&a, []uint16{8500, 8300}, anyUser, untold), "the agent's user, on 8300 too")
	assert.Equal(t, map[uint16]uint32{8500: anyUser}, KernelUsers(nil, []uint16{8500}, anyUser, untold), "listeners not known")
}

// With no address given, where something listens on the first watched
// HTTP port at another address than 127.0.0.1, another user's listener at
// 127.0.0.1 on another port (one the agent leaves free) decides nothing:
// the agent's cannot be told.
func TestAnAgentAwayFromTheDefaultAddressIsNotAnotherPortsListener(t *testing.T) {
	def := Where{Addrs: consulDefault.Addrs, Port: 8500, Others: []uint16{8501}}
	a := Judge([]Listener{at("127.0.0.2:8500", 100), at("127.0.0.1:8501", 65534)}, []uint16{8500, 8501}, def, nil)
	assert.Empty(t, a.Users())
	assert.Contains(t, a.Away, "while others listen on the watched ports (127.0.0.2:8500: uid 100, 127.0.0.1:8501: uid 65534)")
}

// A client end on this host counts where its server end is at one of the
// agent's listeners.
func TestAClientEndCountsWhereItsServerIsTheAgents(t *testing.T) {
	a := Judge([]Listener{at("127.0.0.1:8500", 100), at("127.0.0.2:8500", 65534)}, []uint16{8500}, consulDefault, nil)
	assert.True(t, a.Serves(netip.MustParseAddrPort("127.0.0.1:8500")))
	assert.False(t, a.Serves(netip.MustParseAddrPort("127.0.0.2:8500")))
	assert.False(t, a.Serves(netip.MustParseAddrPort("127.0.0.3:8500")))
}

func ptr(v uint32) *uint32 { return &v }

func TestTheAgentsAddressIsReadAsTheConsulCLIReadsIt(t *testing.T) {
	for env, want := range map[string]string{
		"":                        "127.0.0.1:18500",
		"10.0.0.5:8500":           "10.0.0.5:8500",
		"https://[::1]:8501":      "[::1]:8501",
		"http://localhost:8500":   "127.0.0.1:8500",
		"unix:///run/consul.sock": "127.0.0.1:18500",
		"[::ffff:10.0.0.7]:8500":  "10.0.0.7:8500",
		"https://10.0.0.8":        "10.0.0.8:443",
		// Where the agent listens, not where a client dials: a connection
		// to an unspecified address reaches the loopback of its family,
		// and a listener has no zone.
		"0.0.0.0:8500":      "127.0.0.1:8500",
		"[::]:8500":         "[::1]:8500",
		"[::1%lo]:8500":     "[::1]:8500",
		"[fe80::1%eth0]:85": "[fe80::1]:85",
	} {
		a, err := ParseAddress(env, []uint16{18500})
		require.NoError(t, err, env)
		got, err := a.Resolve(context.Background())
		require.NoError(t, err, env)
		want := netip.MustParseAddrPort(want)
		if strings.Contains(env, "localhost") {
			assert.Contains(t, got.Addrs, want.Addr(), env) // and ::1, where /etc/hosts says so
		} else {
			assert.Equal(t, []netip.Addr{want.Addr()}, got.Addrs, env)
		}
		assert.Equal(t, want.Port(), got.Port, env)
		assert.Equal(t, env != "" && env != "unix:///run/consul.sock", got.Given, env)
	}
	_, err := ParseAddress("10.0.0.5:port", []uint16{8500})
	assert.ErrorContains(t, err, "is not host:port")
}

// A name that does not resolve is an error, at each look-up, never
// 127.0.0.1: the addresses are the last ones it resolved to, none before.
func TestANameThatDoesNotResolveIsSaidAndTriedAgain(t *testing.T) {
	a, err := ParseAddress("http://not_a_host!:8500", []uint16{8500})
	require.NoError(t, err)
	got, err := a.Resolve(context.Background())
	assert.ErrorContains(t, err, "the agent's address not_a_host!:8500 does not resolve")
	assert.Empty(t, got.Addrs)
	assert.True(t, got.Given)
	assert.Empty(t, a.Last().Addrs)
}
