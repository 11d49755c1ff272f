package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
)

// Usage errors stop before anything is collected, with one line on
// stderr: exit 2, or 3 (UNKNOWN) under check wherever the bad flag stands,
// so that a typo in a health check is never read as CRITICAL.
func TestUsageErrorsExitByCommandWithOneLine(t *testing.T) {
	for _, tc := range []struct {
		args []string
		exit int
		says string
	}{
		{[]string{"--bogus"}, exitBadUsage, "unknown long flag '--bogus'"},
		{[]string{"--port", "0"}, exitBadUsage, "--port 0: not a TCP port"},
		{[]string{"--interval", "0s"}, exitBadUsage, "--interval must be 100ms or more"},
		{[]string{"--once", "--web.listen-address", ":9999"}, exitBadUsage, "--once cannot serve"},
		{[]string{"--runtime.gomaxprocs", "0"}, exitBadUsage, "--runtime.gomaxprocs must be 1 or more"},
		{[]string{"--source", "command"}, exitBadUsage, "--source command needs --command"},
		{[]string{"check", "--bogus"}, 3, "unknown long flag '--bogus'"},
		{[]string{"--bogus", "check"}, 3, "unknown long flag '--bogus'"},
		{[]string{"--clients.toop", "5", "check"}, 3, "unknown long flag '--clients.toop'"},
		{[]string{"--source", "events", "--states", "established,syn-recv"}, exitBadUsage, "--source events cannot count --states syn-recv"},
		{[]string{"--port", "x", "check"}, 3, "--port x: not a TCP port"},
		{[]string{"check", "--warning", "0.9", "--critical", "0.8"}, 3, "--warning 0.9 is above --critical 0.8"},
		{[]string{"--warning", "0.5", "check"}, 3, "unknown long flag '--warning'"},
		{[]string{"--textfile.directory", "check", "--bogus"}, exitBadUsage, "unknown long flag '--bogus'"}, // a directory named check
		{[]string{"--push.job=check", "--port", "0"}, exitBadUsage, "--port 0: not a TCP port"},
		{[]string{"--clients.top=-1", "check"}, 3, "--clients.top must be 0 or more"},
		{[]string{"check", "--warning", "nan"}, 3, "must be numbers"},
		{[]string{"check", "--critical", "inf"}, 3, "must be numbers"},
		{[]string{"--interval", "1ns"}, exitBadUsage, "--interval must be 100ms or more"},
		{[]string{"--limit.refresh", "1ns"}, exitBadUsage, "--limit.refresh must be 1s or more"},
		{[]string{"--textfile.directory", ""}, exitBadUsage, "--textfile.directory must not be empty"},
		{[]string{"--clients.top", "1e3"}, exitBadUsage, `"1e3" is not a whole number`},
		{[]string{"--web.telemetry-path", ""}, exitBadUsage, "--web.telemetry-path"},
		{[]string{"--web.telemetry-path", "/ metrics"}, exitBadUsage, "--web.telemetry-path"},
		{[]string{"--web.telemetry-path", "/-/healthy"}, exitBadUsage, `--web.telemetry-path "/-/healthy" is the exporter's own health probe`},
		{[]string{"--web.telemetry-path", "/-/ready"}, exitBadUsage, `--web.telemetry-path "/-/ready" is the exporter's own health probe`},
		{[]string{"--command", "true", "--command.capabilities", "CAP_NOPE"}, exitBadUsage, `"CAP_NOPE" is not a capability`},
		{[]string{"--command.capabilities", "CAP_SYS_ADMIN"}, exitBadUsage, "--command.capabilities goes with --command"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			assert.Equal(t, tc.exit, run(tc.args, &stdout, &stderr))
			assert.Empty(t, stdout.String())
			assert.Equal(t, 1, strings.Count(stderr.String(), "\n"), stderr.String())
			assert.Contains(t, stderr.String(), tc.says)
		})
	}
}
