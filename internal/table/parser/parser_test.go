package parser_test

import (
	"bufio"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/consul-conn-exporter/consul-conn-exporter/internal/table/parser"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/table/socket"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/tally"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/testkit/captures"
)

func allCaptures(t testing.TB) []string {
	names, err := captures.All()
	require.NoError(t, err)
	require.NotEmpty(t, names, "no captures in testdata/captures: make them with go run ./cmd/capture-fixtures")
	return names
}

func TestFixtures(t *testing.T) {
	for _, capture := range allCaptures(t) {
		t.Run(strings.TrimSuffix(filepath.Base(capture), ".txt"), func(t *testing.T) {
			want, err := captures.ReadExpected(capture)
			require.NoError(t, err, "every capture needs its expected counts beside it")
			p := parser.Parser{}
			if want.ImpliedState != "" {
				var ok bool
				p.ImpliedState, ok = socket.ParseState(want.ImpliedState)
				require.True(t, ok, want.ImpliedState)
			}
			var states []socket.State
			for _, name := range want.States {
				s, ok := socket.ParseState(name)
				require.True(t, ok, name)
				states = append(states, s)
			}
			counts := tally.New(want.Ports, states)

			f, err := os.Open(capture)
			require.NoError(t, err)
			defer f.Close()
			sc := bufio.NewScanner(f)
			var firstErr error
			for sc.Scan() {
				s, kind, err := p.ParseLine(sc.Text())
				if err != nil && firstErr == nil {
					firstErr = err
				}
				if kind == parser.TCPSocket {
					counts.Add(s)
				}
			}
			require.NoError(t, sc.Err())

			if want.Error != "" {
				require.Error(t, firstErr)
				assert.Contains(t, firstErr.Error(), want.Error)
				return
			}
			require.NoError(t, firstErr)
			for _, port := range want.Ports {
				key := strconv.Itoa(int(port))
				assert.Equal(t, want.Total[key], counts.Total(port), "total on port %d", port)
				for _, s := range states {
					assert.Equal(t, want.ByState[key][s.String()], counts.ByState(port, s), "port %d in %s", port, s)
				}
			}
			perClient := map[string]int{}
			for _, c := range counts.TopClients(len(want.PerClient) + 1) {
				perClient[c.Client.String()] = c.Count
			}
			assert.Equal(t, want.PerClient, perClient)
			assert.Equal(t, want.MaxPerClient, counts.MaxPerClient())
		})
	}
}

func TestParseLineRejects(t *testing.T) {
	for _, tc := range []struct {
		name, line, err string
	}{
		{"stateless row without implied state", "0      0       127.0.0.1:8500   127.0.0.10:52215", "no State column"},
		{"service name for port", "ESTAB 0 0 127.0.0.1:fmtp 127.0.0.10:52215", "run ss or netstat with -n"},
		{"host name for address", "ESTAB 0 0 localhost:8500 127.0.0.10:52215", "run ss or netstat with -n"},
		{"unclosed bracket", "ESTAB 0 0 [::1:8500 [::1]:52215", "no closing bracket"},
		{"port out of range", "ESTAB 0 0 127.0.0.1:65536 127.0.0.10:1", "port is not a number"},
		{"missing peer", "ESTAB 0 0 127.0.0.1:8500", "not a socket row"},
		{"error text", "Cannot open netlink socket: Protocol not supported", "not a socket row"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, kind, err := parser.Parser{}.ParseLine(tc.line)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.err)
			assert.Equal(t, parser.NotSocket, kind)
		})
	}
}

func TestParseLineKeepsMappedAddressAndDropsZone(t *testing.T) {
	capture := captures.Path("ss-iproute2-6.1.0_tan_mixed.txt")
	s, kind, err := parser.Parser{}.ParseLine(lineContaining(t, capture, "ESTAB", "[::ffff:127.0.0.2]:8500"))
	require.NoError(t, err)
	require.Equal(t, parser.TCPSocket, kind)
	assert.True(t, s.Peer.Addr().Is4In6(), "peer %s", s.Peer)
	assert.Equal(t, "::ffff:127.0.0.10", s.Peer.Addr().String())
	assert.Equal(t, uint16(8500), s.Local.Port())

	s, _, err = parser.Parser{}.ParseLine(lineContaining(t, capture, "ESTAB", "[::1]%lo:8501"))
	require.NoError(t, err)
	assert.Equal(t, "[::1]:8501", s.Local.String())
}

// lineContaining is the first line of a capture that has every one of parts.
func lineContaining(t *testing.T, capture string, parts ...string) string {
	body, err := os.ReadFile(capture)
	require.NoError(t, err)
	for _, line := range strings.Split(string(body), "\n") {
		found := true
		for _, part := range parts {
			found = found && strings.Contains(line, part)
		}
		if found {
			return line
		}
	}
	t.Fatalf("%s has no line with %q", capture, parts)
	return ""
}

// The captures' sockets were all opened by one program, capfx: with -p every
// socket a program still holds (listening and established ones; closed ones
// linger orphaned) names it, and without -p none names any.
func TestProcessesFromCapturesWithP(t *testing.T) {
	withP := 0
	for _, capture := range allCaptures(t) {
		name := filepath.Base(capture)
		if strings.Contains(name, "s-summary") {
			continue
		}
		hasP := strings.Contains(name, "_tanp")
		t.Run(strings.TrimSuffix(name, ".txt"), func(t *testing.T) {
			p := parser.Parser{Processes: true, ImpliedState: socket.StateEstablished}
			text, err := os.ReadFile(capture)
			require.NoError(t, err)
			held := 0
			for line := range strings.Lines(string(text)) {
				s, kind, err := p.ParseLine(strings.TrimRight(line, "\n"))
				require.NoError(t, err)
				if kind != parser.TCPSocket {
					continue
				}
				switch {
				case !hasP:
					assert.Empty(t, s.Process, line)
				case s.State == socket.StateListen || s.State == socket.StateEstablished:
					assert.Equal(t, "capfx", s.Process, line)
					held++
				}
			}
			if hasP {
				withP++
				assert.Greater(t, held, 20)
			}
		})
	}
	assert.Equal(t, 2, withP, "ss -tanp and netstat -tanpW")
}

// -e gives each socket's user and inode: ss as uid:N (printed only for a
// user other than root) and ino:N among its extras, netstat in its User
// and Inode columns. A table without -e gives neither; a TIME-WAIT socket
// has no inode.
func TestUsersAndInodesFromDashE(t *testing.T) {
	for _, c := range []struct {
		capture, plain string
		row            []string
		inode          uint64
		timeWait       []string
	}{
		{captures.Path("ss-iproute2-6.1.0_tanoei_mixed.txt"), captures.Path("ss-iproute2-6.1.0_tan_mixed.txt"), []string{"ESTAB", "127.0.0.11:46683", "127.0.0.1:8501"}, 48504208, []string{"TIME-WAIT"}},
		{captures.Path("netstat-net-tools-2.10_taneW_mixed.txt"), captures.Path("netstat-net-tools-2.10_tanW_mixed.txt"), []string{"ESTABLISHED", "127.0.0.11:37975", "127.0.0.1:8500"}, 48504156, []string{"TIME_WAIT"}},
	} {
		t.Run(filepath.Base(c.capture), func(t *testing.T) {
			s, kind, err := parser.Parser{}.ParseLine(lineContaining(t, c.capture, c.row...))
			require.NoError(t, err)
			require.Equal(t, parser.TCPSocket, kind)
			assert.Equal(t, c.inode, s.Inode)
			assert.True(t, s.UIDKnown)
			assert.Zero(t, s.UID, "made as root")
			assert.Empty(t, s.Process, "-e names no program")

			s, _, err = parser.Parser{}.ParseLine(lineContaining(t, c.capture, c.timeWait...))
			require.NoError(t, err)
			assert.Zero(t, s.Inode, "a TIME-WAIT socket has none")

			s, _, err = parser.Parser{}.ParseLine(lineContaining(t, c.plain, "127.0.0.11:"))
			require.NoError(t, err)
			assert.False(t, s.UIDKnown, "no user without -e")
		})
	}
}

// net-tools' netstat prints the v4-mapped addresses of an IPv6 socket (a
// dual-stack listener's connection) bare, on a tcp6 row: they are the IPv6
// socket's, v4-mapped, as ss and the kernel give them (the listener that
// took them is an IPv6 one).
func TestNetstatsBareAddressesOnATCP6RowAreV4Mapped(t *testing.T) {
	for _, capture := range []string{captures.Path("netstat-net-tools-2.10_tanW_mixed.txt"), captures.Path("netstat-net-tools-2.10_taneW_mixed.txt")} {
		s, kind, err := parser.Parser{}.ParseLine(lineContaining(t, capture, "tcp6", "127.0.0.2:8500", "127.0.0.10:", "ESTABLISHED"))
		require.NoError(t, err)
		require.Equal(t, parser.TCPSocket, kind)
		assert.True(t, s.Local.Addr().Is4In6(), "%s: %s", capture, s.Local)
		assert.True(t, s.Peer.Addr().Is4In6(), "%s: %s", capture, s.Peer)
		s, _, err = parser.Parser{}.ParseLine(lineContaining(t, capture, "tcp ", "127.0.0.1:8500", "127.0.0.10:", "ESTABLISHED"))
		require.NoError(t, err)
		assert.True(t, s.Local.Addr().Is4(), "an IPv4 socket's: %s", s.Local)
	}
}
