package listeners

import (
	"net/netip"
	"testing"

	"github.com/stretchr/testify/assert"
)

func at(addr string, uid uint32) Listener {
	return Listener{Local: netip.MustParseAddrPort(addr), UID: uid}
}

var agentAddr = netip.MustParseAddr("127.0.0.1")

// One user holding every listener (the usual host, and test rigs that
// listen on many loopback addresses) is the agent: nothing is filtered.
func TestOneUserListeningIsTheAgent(t *testing.T) {
	a := Judge([]Listener{at("127.0.0.1:8500", 100), at("127.0.0.2:8500", 100), at("[::1]:8500", 100)}, []uint16{8500, 8501}, agentAddr, nil)
	assert.False(t, a.Filtered)
	assert.Equal(t, map[uint16]int{8500: 1, 8501: 0}, a.Owners)
	assert.Equal(t, []uint16{8501}, a.Quiet())
	assert.Empty(t, a.Shared())
	assert.True(t, a.Accepts(netip.MustParseAddrPort("127.0.0.2:8500")))
}

// Several users: the agent's is the owner of the listener at its address
// (or a wildcard), or the one pinned; connections are matched to the
// listener that took them: at their local address, else the wildcard of
// their family (:: takes v4-mapped ones).
func TestSeveralUsersOnlyTheAgentsConnectionsCount(t *testing.T) {
	for _, tc := range []struct {
		name      string
		listeners []Listener
		user      *uint32
		uid       uint32
		accepts   map[string]bool
	}{
		{"another user on another loopback address", []Listener{at("127.0.0.1:8500", 100), at("127.0.0.2:8500", 65534)}, nil, 100,
			map[string]bool{"127.0.0.1:8500": true, "127.0.0.2:8500": false}},
		{"the agent on ::1 too, another user's wildcard on IPv4", []Listener{at("[::1]:8500", 100), at("127.0.0.1:8500", 100), at("0.0.0.0:8500", 65534)}, nil, 100,
			map[string]bool{"127.0.0.1:8500": true, "[::1]:8500": true, "127.0.0.9:8500": false}},
		{"the agent's wildcard, another user's exact address", []Listener{at("0.0.0.0:8500", 100), at("127.0.0.3:8500", 65534)}, nil, 100,
			map[string]bool{"127.0.0.1:8500": true, "10.0.0.1:8500": true, "127.0.0.3:8500": false}},
		{"dual-stack [::] of the agent, another user's [::1] (IPV6_V6ONLY elsewhere)", []Listener{at("[::]:8500", 100), at("[::1]:8500", 65534)}, nil, 100,
			map[string]bool{"[::ffff:127.0.0.1]:8500": true, "[::1]:8500": false, "127.0.0.1:8500": true}},
		{"pinned", []Listener{at("127.0.0.1:8500", 100), at("127.0.0.2:8500", 65534)}, ptr(65534), 65534,
			map[string]bool{"127.0.0.1:8500": false, "127.0.0.2:8500": true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := Judge(tc.listeners, []uint16{8500}, agentAddr, tc.user)
			assert.True(t, a.Filtered)
			assert.Equal(t, map[uint16]uint32{8500: tc.uid}, a.UIDs)
			assert.Equal(t, []uint16{8500}, a.Shared())
			assert.Empty(t, a.Undecided)
			for local, want := range tc.accepts {
				assert.Equal(t, want, a.Accepts(netip.MustParseAddrPort(local)), local)
			}
		})
	}
}

// The agent's listener is chosen on each port from that port's listeners: a
// user listening on another watched port at the agent's address (8300
// here, where the agent's RPC is on its bind address) decides nothing on
// 8500, whose connections to the agent count.
func TestTheAgentsListenerIsChosenPortByPort(t *testing.T) {
	ls := []Listener{
		at("127.0.0.1:8500", 100), at("127.0.0.2:8500", 65534), // the agent's HTTP, and a user beside it
		at("10.0.0.5:8300", 100), at("127.0.0.1:8300", 65534), // the agent's RPC, and the user at the agent's address
	}
	a := Judge(ls, []uint16{8500, 8300}, agentAddr, nil)
	assert.Equal(t, uint32(100), a.UIDs[8500])
	assert.True(t, a.Accepts(netip.MustParseAddrPort("127.0.0.1:8500")), "the agent's connections on 8500 count")
	assert.False(t, a.Accepts(netip.MustParseAddrPort("127.0.0.2:8500")))
	assert.Contains(t, a.SharedReason(), "8500 (the agent's: uid 100)")

	// The user alone on another port: nothing shared there, nothing
	// filtered there.
	a = Judge([]Listener{at("127.0.0.1:8500", 100), at("127.0.0.2:8500", 65534), at("127.0.0.1:8300", 65534)}, []uint16{8500, 8300}, agentAddr, nil)
	assert.Equal(t, map[uint16]uint32{8500: 100}, a.UIDs)
	assert.True(t, a.Accepts(netip.MustParseAddrPort("127.0.0.1:8500")))
}

// Several users and none at the agent's address: the agent cannot be told,
// and said; everything counts, as without the check.
func TestSeveralUsersNoneAtTheAgentsAddressIsSaid(t *testing.T) {
	a := Judge([]Listener{at("127.0.0.5:8500", 100), at("127.0.0.6:8500", 65534)}, []uint16{8500}, agentAddr, nil)
	assert.False(t, a.Filtered)
	assert.Contains(t, a.Undecided, "pin the agent's with --consul.user")
	assert.True(t, a.Accepts(netip.MustParseAddrPort("127.0.0.6:8500")))
}

func ptr(v uint32) *uint32 { return &v }

func TestTheAgentsAddressIsReadAsTheConsulCLIReadsIt(t *testing.T) {
	for env, want := range map[string]string{
		"":                        "127.0.0.1",
		"10.0.0.5:8500":           "10.0.0.5",
		"https://[::1]:8501":      "::1",
		"http://localhost:8500":   "127.0.0.1",
		"unix:///run/consul.sock": "127.0.0.1",
		"[::ffff:10.0.0.7]:8500":  "10.0.0.7",
	} {
		assert.Equal(t, netip.MustParseAddr(want), AgentAddr(env), env)
	}
}
