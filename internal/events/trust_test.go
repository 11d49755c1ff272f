package events

import (
	"context"
	"net/netip"
	"strconv"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/consul-conn-exporter/consul-conn-exporter/internal/kernel"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/testkit/loopback"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/testkit/portopener"
)

// nobody is the user another local user's sockets are made as here.
const nobody = 65534

// Only the connections a listener of the agent's user accepted count: not
// sockets another user bound to the agent's port and connected out, nor
// those the agent's own user did, nor another user's listener's on another
// address of the port; whether they were open before the start (the
// census) or opened since (the events); and no census ever counts them.
func TestOnlyConnectionsTheAgentsListenersAcceptedCount(t *testing.T) {
	for _, before := range []bool{true, false} {
		name := map[bool]string{true: "open before the start", false: "opened since"}[before]
		t.Run(name, func(t *testing.T) {
			agent := loopback.Listen(t, "127.0.0.1")
			p := agent.Port()
			var c *Counter
			attack := func() {
				loopback.AsUser(t, nobody, func() {
					loopback.Forge(t, p, "127.0.9.1", 4)
					theirs, err := portopener.Listen(netip.AddrPortFrom(netip.MustParseAddr("127.0.0.60"), p))
					require.NoError(t, err)
					t.Cleanup(func() { theirs.Close() })
					pairs, err := theirs.Open(context.Background(), netip.MustParseAddr("127.0.0.61"), 2)
					require.NoError(t, err)
					t.Cleanup(func() { portopener.CloseAll(pairs) })
				})
				loopback.Forge(t, p, "127.0.9.100", 3) // the agent's own user, connecting out from its port
				loopback.Open(t, agent, "127.0.0.62", 5)
			}
			if before {
				attack()
				c = loaded(t, []uint16{p})
			} else {
				c = loaded(t, []uint16{p})
				attack()
			}
			require.Len(t, table(t, p), 4+2+3+5, "every socket of the port in the table")
			want := []string{}
			for range 5 {
				want = append(want, "established 127.0.0.1:"+itoa(p)+" 127.0.0.62:0")
			}
			if before {
				// Open before the start, a socket of the agent's user that
				// it connected out cannot be told from one it accepted.
				for i := range 3 {
					want = append(want, "established 127.0.9."+itoa(uint16(100+i))+":"+itoa(p)+" 127.0.0.1:0")
				}
			}
			assert.ElementsMatch(t, want, counted(t, c))
			found, err := c.Census()
			require.NoError(t, err)
			assert.Zero(t, found.Drift(), "the census judges them alike")
			assert.ElementsMatch(t, want, counted(t, c))
			if !before {
				assert.Equal(t, uint64(5), snapshotOf(t, c).Groups[0].Opened, "the agent's clients' opens alone")
			}
		})
	}
}

// A socket another user planted on the agent's address before the agent
// listened there (its listener binds over it: SO_REUSEADDR) is that user's,
// not the agent's: a census does not count it.
func TestASocketPlantedBeforeTheAgentListenedIsNotCounted(t *testing.T) {
	p := loopback.Port()
	loopback.AsUser(t, nobody, func() { loopback.Forge(t, p, "127.0.0.71", 3) })
	agent, err := portopener.Listen(netip.AddrPortFrom(netip.MustParseAddr("127.0.0.71"), p))
	require.NoError(t, err)
	t.Cleanup(func() { agent.Close() })
	loopback.Open(t, agent, "127.0.0.72", 2)
	c := loaded(t, []uint16{p})
	assert.Len(t, counted(t, c), 2)
}

// The agent's user, as the listeners are judged again, is told to the
// programs: a census counts what is now the agent's and takes off what no
// longer is; where the listeners are not known (AnyUser), every
// listener's connections count; where the agent's cannot be told
// (UntoldUser), and on a port left out, nothing does.
func TestAChangeOfTheAgentsUserIsJudgedAgainOverEveryConnection(t *testing.T) {
	agent := loopback.Listen(t, "127.0.0.1")
	p := agent.Port()
	c := loaded(t, []uint16{p})
	loopback.Open(t, agent, "127.0.0.63", 2)
	loopback.AsUser(t, nobody, func() {
		theirs, err := portopener.Listen(netip.AddrPortFrom(netip.MustParseAddr("127.0.0.64"), p))
		require.NoError(t, err)
		t.Cleanup(func() { theirs.Close() })
		pairs, err := theirs.Open(context.Background(), netip.MustParseAddr("127.0.0.65"), 3)
		require.NoError(t, err)
		t.Cleanup(func() { portopener.CloseAll(pairs) })
	})
	assert.Len(t, counted(t, c), 2, "root's")
	require.NoError(t, c.Trust(map[uint16]uint32{p: nobody}))
	assert.Len(t, counted(t, c), 3, "nobody's alone")
	require.NoError(t, c.Trust(map[uint16]uint32{p: kernel.AnyUser}))
	assert.Len(t, counted(t, c), 5, "every listener's")
	require.NoError(t, c.Trust(map[uint16]uint32{p: kernel.UntoldUser}))
	assert.Empty(t, counted(t, c), "the agent's cannot be told")
	require.NoError(t, c.Trust(map[uint16]uint32{}))
	assert.Empty(t, counted(t, c), "no agent's listener")
	require.NoError(t, c.Trust(map[uint16]uint32{p: 0}))
	assert.Len(t, counted(t, c), 2, "root's again")
}

// Connections that open and close from a thousand addresses leave no key
// behind: the maps hold only what is open, and a client that then holds
// connections is counted at once, with no audit to make room.
func TestClosedConnectionsLeaveNoKeyBehind(t *testing.T) {
	l := loopback.Listen(t, "127.0.0.1")
	c := loadedWith(t, minKeys, []uint16{l.Port()})
	for i := range minKeys + 76 {
		for _, p := range loopback.Open(t, l, netip.AddrFrom4([4]byte{127, 7, byte(i >> 8), byte(i)}).String(), 1) {
			closeAs(t, "agent", p)
		}
	}
	loopback.Open(t, l, "127.0.0.1", 10)
	assert.Len(t, counted(t, c), 10, "counted at once")
	assert.Zero(t, snapshotOf(t, c).Groups[0].Lost)
	keys := 0
	var (
		key   programConnectionKey
		count int64
	)
	it := c.objs.Connections.Iterate()
	for it.Next(&key, &count) {
		keys++
	}
	require.NoError(t, it.Err())
	assert.Equal(t, 1, keys, "one key: the ten's")
}

func itoa(n uint16) string { return strconv.Itoa(int(n)) }
