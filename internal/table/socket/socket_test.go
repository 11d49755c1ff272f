package socket

import (
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/stretchr/testify/assert"
)

func TestProcessNamesFromOtherUsersAreMadeSafe(t *testing.T) {
	for raw, want := range map[string]string{
		"nomad":           "nomad",
		"bad\xff":         "bad\uFFFD",
		"two\nlines":      `two\x0alines`,
		"\x1b[31mred":     `\x1b[31mred`,
		"consul-template": "consul-template",
	} {
		got := ProcessName(raw)
		assert.Equal(t, want, got, "%q", raw)
		assert.True(t, utf8.ValidString(got))
	}
	assert.LessOrEqual(t, len(ProcessName(strings.Repeat("x", 1000))), maxProcessName)
}

func TestLabelIsTheStateWithUnderscores(t *testing.T) {
	assert.Equal(t, "close_wait", StateCloseWait.Label())
	assert.Equal(t, "established", StateEstablished.Label())
	s, ok := ParseState("CLOSE_WAIT")
	assert.True(t, ok)
	assert.Equal(t, StateCloseWait, s)
}
