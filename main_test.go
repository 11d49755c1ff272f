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
		{[]string{"--interval", "0s"}, exitBadUsage, "--interval must be positive"},
		{[]string{"--once", "--web.listen-address", ":9999"}, exitBadUsage, "--once cannot serve"},
		{[]string{"--runtime.gomaxprocs", "0"}, exitBadUsage, "--runtime.gomaxprocs must be 1 or more"},
		{[]string{"--source", "command"}, exitBadUsage, "--source command needs --command"},
		{[]string{"check", "--bogus"}, 3, "unknown long flag '--bogus'"},
		{[]string{"--bogus", "check"}, 3, "unknown long flag '--bogus'"},
		{[]string{"--port", "x", "check"}, 3, "--port x: not a TCP port"},
		{[]string{"check", "--warning", "0.9", "--critical", "0.8"}, 3, "--warning 0.9 is above --critical 0.8"},
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
