package say

import (
	"log/slog"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestChangedOnlyWhenTheStateDoes(t *testing.T) {
	var tr Tracker
	assert.False(t, tr.Changed(""), "all is well from the start")
	assert.True(t, tr.Changed("refused"))
	assert.False(t, tr.Changed("refused"), "the same failure again")
	assert.True(t, tr.Changed("timed out"))
	assert.True(t, tr.Changed(""), "cleared")
	assert.False(t, tr.Changed(""))
}

func TestLogSaysEachChangeOnce(t *testing.T) {
	var (
		log strings.Builder
		tr  Tracker
	)
	logger := slog.New(slog.NewTextHandler(&log, nil))
	for _, problem := range []string{"", "refused", "refused", "timed out", "", ""} {
		tr.Log(logger, slog.LevelError, problem, "output failed", "output works again", "output", "textfile")
	}
	assert.Equal(t, 2, strings.Count(log.String(), `level=ERROR msg="output failed" output=textfile err=`), log.String())
	assert.Contains(t, log.String(), "err=refused")
	assert.Contains(t, log.String(), `err="timed out"`)
	assert.Equal(t, 1, strings.Count(log.String(), `level=INFO msg="output works again" output=textfile`), log.String())
}
