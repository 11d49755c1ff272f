package source

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/consul-conn-exporter/consul-conn-exporter/internal/tally"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/testkit/captures"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/consul-conn-exporter/consul-conn-exporter/internal/table/parser"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/table/runner"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/table/sockdiag"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/table/socket"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/testkit/loopback"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/testkit/programs"
)

var discard = slog.New(slog.DiscardHandler)

func TestSSIsFilteredInTheKernel(t *testing.T) {
	programs.Need(t, "ss", "apt-get install iproute2")
	src, err := ss(Want{Ports: []uint16{8500, 8501}, States: states}, time.Second, discard)
	require.NoError(t, err)
	c := src.(*Command)
	assert.Equal(t, []string{"ss", "-Htanei", "state", "established", "state", "close-wait",
		"(", "sport", "=", ":8500", "or", "sport", "=", ":8501", ")"}, c.runner.Argv())
	assert.Equal(t, socket.StateUnknown, c.parser.ImpliedState, "two states: ss prints the State column")

	// With the client side of local connections and their programs: the
	// client ends and their inodes from the built-in reader beside it.
	src, err = ss(Want{Ports: []uint16{8500, 8300}, States: states[:1], ClientPorts: []uint16{8500}}, time.Second, discard)
	require.NoError(t, err)
	joined := src.(withClientEnds)
	c = joined.table.(*Command)
	assert.Equal(t, []string{"ss", "-Htanei", "state", "established",
		"(", "sport", "=", ":8500", "or", "sport", "=", ":8300", ")"}, c.runner.Argv())
	assert.Equal(t, socket.StateEstablished, c.parser.ImpliedState, "one state: ss drops the State column")
	assert.NotNil(t, joined.ends)
}

func TestMissingToolsAreNamed(t *testing.T) {
	netstatPath := programs.Need(t, "netstat", "apt-get install net-tools")
	dir := t.TempDir()
	t.Setenv("PATH", dir)
	want := Want{Ports: []uint16{8500}, States: states}
	_, err := ss(want, time.Second, discard)
	assert.ErrorIs(t, err, errNotInstalled)
	assert.ErrorContains(t, err, "install iproute2")
	_, err = netstat(want, time.Second, discard)
	assert.ErrorIs(t, err, errNotInstalled)

	want.ClientPorts = want.Ports
	src, err := (&Flags{source: "ss", commandTimeout: time.Second}).New(want, discard)
	require.NoError(t, err)
	assert.IsType(t, &sockdiag.Reader{}, src, "with neither tool, the built-in reader, --clients.processes too")

	require.NoError(t, os.Symlink(netstatPath, filepath.Join(dir, "netstat")))
	c, err := netstat(want, time.Second, discard)
	require.NoError(t, err)
	assert.Equal(t, []string{"netstat", "-taneW"}, c.runner.Argv())
}

func TestImpliedStateNeedsExactlyOneStateFilter(t *testing.T) {
	assert.Equal(t, socket.StateEstablished, impliedState(strings.Fields("ss -Htn state established ( sport = :8500 )")))
	assert.Equal(t, socket.StateCloseWait, impliedState(strings.Fields("ip netns exec consul ss -tn state close-wait")))
	assert.Equal(t, socket.StateUnknown, impliedState(strings.Fields("ss -Htan state established state close-wait")))
	assert.Equal(t, socket.StateUnknown, impliedState(strings.Fields("ss -tan")))
}

func TestFlagsRefuseContradictions(t *testing.T) {
	want := Want{Ports: []uint16{8500}, States: states}
	for _, tc := range []struct {
		flags Flags
		err   string
	}{
		{Flags{source: "netlink", sourceSet: true, command: "cat x", commandTimeout: time.Second}, "--command goes with --source command"},
		{Flags{source: "command", commandTimeout: time.Second}, "--source command needs --command"},
		{Flags{source: "ss", commandTimeout: 0}, "--command.timeout must be positive"},
		{Flags{source: "ss", command: `ss "unclosed`, commandTimeout: time.Second}, "--command"},
	} {
		_, err := tc.flags.New(want, discard)
		assert.ErrorContains(t, err, tc.err)
	}
}

// A table that cannot be trusted fails the read, with one line naming why.
func TestUnreadableTablesFail(t *testing.T) {
	summary, err := os.ReadFile(captures.Path("ss-iproute2-6.1.0_s-summary_mixed.txt"))
	require.NoError(t, err)
	for name, tc := range map[string]struct{ text, err string }{
		"garbage":                  {"garbage\n", "that are not ss or netstat socket rows"},
		"summary instead of table": {string(summary), "that are not ss or netstat socket rows"},
		"headers only":             {"Proto Recv-Q Send-Q Local Address Foreign Address State\n", "no socket rows"},
	} {
		t.Run(name, func(t *testing.T) {
			err := NewText(name, tc.text, socket.StateUnknown, false).Read(context.Background(), func(socket.Socket) {}, func() {})
			require.ErrorContains(t, err, tc.err)
			assert.NotContains(t, err.Error(), "\n")
		})
	}
}

func TestCommandFailuresFailTheRead(t *testing.T) {
	if testing.Short() {
		t.Skip("starts programs; run without -short")
	}
	for name, tc := range map[string]struct {
		argv []string
		err  string
	}{
		"command missing":            {[]string{"no-such-command-for-consul-conn-exporter"}, "cannot run"},
		"non-zero exit":              {[]string{"ls", "/no/such/dir"}, "exited with status 2"},
		"headers only and stderr":    {[]string{"sh", "-c", "echo 'Proto Recv-Q Send-Q Local Address Foreign Address State'; echo 'netstat: /proc/net/tcp: No such file or directory' >&2"}, "wrote to stderr: netstat: /proc/net/tcp"},
		"a table of garbage printed": {[]string{"echo", "garbage"}, "that are not ss or netstat socket rows"},
	} {
		t.Run(name, func(t *testing.T) {
			r, err := runner.New(10*time.Second, tc.argv)
			require.NoError(t, err)
			err = NewCommand(r, socket.StateUnknown, false, discard).Read(context.Background(), func(socket.Socket) {}, func() {})
			require.ErrorContains(t, err, tc.err)
			assert.NotContains(t, err.Error(), "\n")
		})
	}
}

// A --command refused a permission (ip netns exec once the exporter has
// dropped CAP_SYS_ADMIN) is told the flag that keeps it.
func TestACommandRefusedAPermissionNamesTheFlagThatKeepsIt(t *testing.T) {
	programs.NotShort(t, "starts programs")
	f := &Flags{command: `sh -c 'echo "setting the network namespace \"consul\" failed: Operation not permitted" >&2; exit 255'`, commandTimeout: 10 * time.Second}
	src, err := f.New(Want{Ports: []uint16{8500}, States: states}, discard)
	require.NoError(t, err)
	err = src.Read(context.Background(), func(socket.Socket) {}, func() {})
	require.ErrorContains(t, err, "Operation not permitted")
	assert.ErrorContains(t, err, "keep it with --command.capabilities")
	assert.NotContains(t, err.Error(), "\n")
}

// The built-in reader and ss, each filtering in the kernel, read the same
// sockets: IPv4, IPv6, v4-mapped, CLOSE-WAIT, and not an unwatched port.
func TestBuiltInReaderReadsWhatSSReads(t *testing.T) {
	programs.Need(t, "ss", "apt-get install iproute2")
	v4, v6, mapped := loopback.Mix(t)
	want := Want{Ports: []uint16{v4.Port(), v6.Port(), mapped.Port()}, States: states}
	viaSS, err := ss(want, 10*time.Second, discard)
	require.NoError(t, err)
	builtIn := loopback.Rows(t, sockdiag.New(want.Ports, nil, want.States, 10*time.Second))
	assert.Len(t, builtIn, loopback.MixCounted)
	assert.Equal(t, loopback.Rows(t, viaSS), builtIn)
}

// A warning the command prints on every run (ss -e's "Failed to find
// cgroup2 mount" on a cgroup v1 host) is logged once, and again only when
// it changes.
func TestACommandsStderrIsLoggedWhenItChanges(t *testing.T) {
	programs.NotShort(t, "starts programs")
	var log bytes.Buffer
	logger := slog.New(slog.NewTextHandler(&log, nil))
	warning := "Failed to find cgroup2 mount"
	r, err := runner.New(10*time.Second, []string{"sh", "-c", `echo "$0" >&2; cat "$1"`, warning, captures.Path("ss-iproute2-6.1.0_tan_mixed.txt")})
	require.NoError(t, err)
	c := NewCommand(r, socket.StateUnknown, false, logger)
	for range 5 {
		require.NoError(t, c.Read(context.Background(), func(socket.Socket) {}, func() {}))
	}
	assert.Equal(t, 1, strings.Count(log.String(), "command wrote to stderr"), log.String())
}

// Only a kernel that counts each connection's bytes sent (4.19 and later)
// has ss print them: elsewhere no use is told.
func TestOnlyAKernelThatCountsTheBytesSentTellsUses(t *testing.T) {
	for release, counts := range map[string]bool{"6.18.44-fc-v1294": true, "4.19.0-27-amd64": true, "5.4.0": true, "4.18.0-553.el8_10.x86_64": false, "3.10.0-1160.el7.x86_64": false, "": false} {
		assert.Equal(t, counts, releaseCountsBytesSent(release), release)
	}
}

// ss -V's versions, as iproute2 printed them: an ss before 4.20 prints
// no bytes sent, and cannot tell a connection's use.
func TestOnlyAnSSThatPrintsTheBytesSentTellsUses(t *testing.T) {
	for version, says := range map[string]bool{
		"ss utility, iproute2-6.1.0":    true,
		"ss utility, iproute2-5.10.0":   true,
		"ss utility, iproute2-4.20.0":   true,
		"ss utility, iproute2-ss190107": true,
		"ss utility, iproute2-ss180813": false,
		"ss utility, iproute2-4.9.0":    false,
		"ss utility, iproute2-ss161212": false,
		"BusyBox v1.36.1 multi-call":    false,
	} {
		assert.Equal(t, says, ssSaysBytesSent(version), version)
	}
}

// Each capture's connections are in the use its scenario left them in,
// where its table has each socket's tcp_info (ss -i's line under its
// row), and unknown where it has none.
func TestEachCapturesUsesAreWhatItsScenarioLeft(t *testing.T) {
	all, err := captures.All()
	require.NoError(t, err)
	for _, name := range all {
		want, err := captures.ReadExpected(name)
		require.NoError(t, err)
		if want.Error != "" {
			continue
		}
		t.Run(filepath.Base(name), func(t *testing.T) {
			require.NotEmpty(t, want.ByUse, "the capture's uses")
			text, err := os.ReadFile(name)
			require.NoError(t, err)
			implied, _ := socket.ParseState(want.ImpliedState)
			var wantStates []socket.State
			for _, s := range want.States {
				state, ok := socket.ParseState(s)
				require.True(t, ok)
				wantStates = append(wantStates, state)
			}
			counts := tally.New(want.Ports, wantStates)
			require.NoError(t, NewText(name, string(text), implied, false).Read(context.Background(), counts.Add, func() {}))
			got := map[string]int{}
			for _, u := range socket.Uses {
				if n := counts.ByUse(u); n > 0 {
					got[u.Label()] = n
				}
			}
			assert.Equal(t, want.ByUse, got)
		})
	}
}

// On a kernel that counts no bytes sent, ss -i's lines tell no use: every
// connection is unknown, and counted all the same.
func TestTCPInfoLinesTellNoUseWhereTheKernelCountsNoBytesSent(t *testing.T) {
	text, err := os.ReadFile(captures.Path("ss-iproute2-6.1.0_Htanei-established-close-wait-sport_mixed.txt"))
	require.NoError(t, err)
	counts := tally.New(ports, states)
	table := newTable(parser.Parser{}, counts.Add, false)
	lines := strings.Split(strings.TrimSuffix(string(text), "\n"), "\n")
	for _, line := range lines {
		table.read(line)
	}
	require.NoError(t, table.check(runner.Output{Lines: len(lines)}))
	assert.Equal(t, 22, counts.ByUse(socket.UseUnknown), "every one counted, none told")
}
