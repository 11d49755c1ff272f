package e2e

import (
	"encoding/json"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/consul-conn-exporter/consul-conn-exporter/internal/check"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/testkit/captures"
)

const mixedCapture = "../testdata/captures/ss-iproute2-6.1.0_tanp_mixed.txt"

func mixedExpected(t *testing.T) captures.Expected {
	t.Helper()
	want, err := captures.ReadExpected(mixedCapture)
	require.NoError(t, err)
	return want
}

// The capture's busiest client holds 9 connections over 8500 and 8501.
func TestCheckExitsByTheBusiestClientsShareOfTheLimit(t *testing.T) {
	require.Equal(t, 9, mixedExpected(t).MaxPerClient)
	table := []string{"--command", "cat " + mixedCapture, "--port", "8500", "--port", "8501"}
	for _, tc := range []struct {
		limit string
		exit  int
		last  string
	}{
		{"100", 0, "OK: 127.0.0.10 holds 9 of the 100 HTTP connections http_max_conns_per_client allows (9%)"},
		{"11", 1, "WARNING: 127.0.0.10 holds 9 of the 11 HTTP connections http_max_conns_per_client allows (81%)"},
		{"9", 2, "CRITICAL: 127.0.0.10 holds 9 of the 9 HTTP connections http_max_conns_per_client allows (100%)"},
	} {
		t.Run(tc.limit, func(t *testing.T) {
			res := checkCommand(t, nil, append(table, "--limit", tc.limit)...)
			assert.Equal(t, tc.exit, res.exit, res.stdout+res.stderr)
			assert.Equal(t, tc.last, lastLine(res.stdout))
			assert.Contains(t, res.stdout, "  127.0.0.10  9 ")
			assert.NotContains(t, res.stdout, "\x1b[", "no colour into a pipe")
			assert.Empty(t, res.stderr)
		})
	}
	t.Run("thresholds", func(t *testing.T) {
		res := checkCommand(t, nil, append(table, "--limit", "10", "--warning", "0.5", "--critical", "0.9")...)
		assert.Equal(t, 2, res.exit, res.stdout)
	})
	t.Run("programs", func(t *testing.T) {
		res := checkCommand(t, nil, append(table, "--limit", "100", "--clients.processes")...)
		assert.Equal(t, 0, res.exit, res.stdout)
		assert.Equal(t, "OK: 127.0.0.10 holds 9 of the 100 HTTP connections http_max_conns_per_client allows (9%): capfx 9", lastLine(res.stdout))
	})
}

func TestCheckIsUnknownWhenTheCollectionFails(t *testing.T) {
	res := checkCommand(t, nil, "--command", "ss --no-such-flag")
	assert.Equal(t, 3, res.exit)
	assert.True(t, strings.HasPrefix(res.stdout, "UNKNOWN: cannot count the connections: ss --no-such-flag exited with status"), res.stdout)
	assert.Equal(t, 1, strings.Count(res.stdout, "\n"), "the reason alone, no counts: %q", res.stdout)
}

func TestCheckIsUnknownWhenNoToolCanCount(t *testing.T) {
	res := checkCommand(t, []string{"PATH=" + t.TempDir()}, "--source", "netstat")
	assert.Equal(t, 3, res.exit)
	assert.Equal(t, "UNKNOWN: cannot count the connections: no socket table tool: netstat: not in PATH (install net-tools)\n", res.stdout)
}

func TestCheckIsUnknownWhenAnAutoLimitCannotBeReadAndStillShowsTheCounts(t *testing.T) {
	res := checkCommand(t, []string{"CONSUL_HTTP_ADDR=" + freeAddr(t)},
		"--command", "cat "+mixedCapture, "--port", "8500", "--limit", "auto")
	assert.Equal(t, 3, res.exit)
	assert.Contains(t, res.stdout, "HTTP connections (limit not known)")
	assert.Contains(t, res.stdout, "  127.0.0.10  9 ")
	assert.True(t, strings.HasPrefix(lastLine(res.stdout), "UNKNOWN: reading the limits from the Consul agent: "), res.stdout)
	assert.Contains(t, lastLine(res.stdout), "connection refused")
	assert.Contains(t, res.stdout, "the per-client limit of the connections held is unknown: none judged")
	assert.NotContains(t, res.stdout, "no per-client limit applies", "a limit not known is not no limit")
}

func TestCheckJSONReadsBack(t *testing.T) {
	want := mixedExpected(t)
	res := checkCommand(t, nil, "--command", "cat "+mixedCapture, "--port", "8500", "--rpc.port", "8501",
		"--limit", "10", "--rpc.limit", "5", "--clients.processes", "--format", "json")
	require.Equal(t, 1, res.exit, res.stdout)
	var report check.Report
	require.NoError(t, json.Unmarshal([]byte(res.stdout), &report), res.stdout)
	assert.Equal(t, check.Warning, report.Status)
	assert.Contains(t, report.Reason, "127.0.0.10 holds 9 of the 10 HTTP connections")
	require.Len(t, report.Groups, 2)
	http, rpc := report.Groups[0], report.Groups[1]
	assert.Equal(t, []string{"http", "rpc"}, []string{http.Name, rpc.Name})
	assert.Equal(t, []int{10, 5}, []int{http.Limit, rpc.Limit})
	assert.Equal(t, want.Total["8500"], http.Ports[0].Open)
	assert.Equal(t, want.ByState["8500"]["close-wait"], http.Ports[0].ByState["close_wait"])
	assert.Equal(t, want.Total["8501"], rpc.Ports[0].Open)
	perClient := map[string]int{}
	for _, g := range report.Groups {
		for _, c := range g.Clients {
			perClient[c.Client] += c.Connections
		}
	}
	assert.Equal(t, want.PerClient, perClient, "every client in one group or the other")
	assert.Equal(t, 0.9, http.Clients[0].Share)
	assert.Equal(t, []check.Process{{Process: "capfx", Connections: 9}}, http.Clients[0].Processes)
	assert.Equal(t, "capfx", http.Processes[0].Process)
	require.NotEmpty(t, rpc.Processes, "each group's programs")
	assert.Equal(t, "capfx", rpc.Processes[0].Process)
}

func TestCheckUsageErrorsAreUnknownBeforeAnyCollection(t *testing.T) {
	marker := filepath.Join(t.TempDir(), "collected")
	for _, args := range [][]string{
		{"--warning", "-0.1"},
		{"--critical", "-1"},
		{"--warning", "0.9", "--critical", "0.8"},
		{"--warning", "abc"},
		{"--format", "yaml"},
		{"--port", "0"},
		{"--limit", "abc"},
	} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			res := checkCommand(t, nil, append([]string{"--command", "touch " + marker}, args...)...)
			assert.Equal(t, 3, res.exit, "UNKNOWN, never CRITICAL: %s", res.stderr)
			assert.Equal(t, 1, strings.Count(strings.TrimSpace(res.stderr), "\n")+1, "one line: %q", res.stderr)
			assert.NoFileExists(t, marker, "no collection")
		})
	}
}

// check --help fits a screen: its own flags and those that change its
// verdict; --help-long has every flag.
func TestCheckHelpFitsAScreen(t *testing.T) {
	short, _ := exec.Command(binary, "check", "--help").CombinedOutput()
	assert.LessOrEqual(t, strings.Count(string(short), "\n"), 60, "%s", short)
	for _, flag := range []string{"--warning", "--critical", "--format", "--port", "--limit", "--rpc.limit", "--consul.user"} {
		assert.Contains(t, string(short), flag)
	}
	assert.NotContains(t, string(short), "--push.url")
	long, _ := exec.Command(binary, "check", "--help-long").CombinedOutput()
	assert.Contains(t, string(long), "--push.url")
}
