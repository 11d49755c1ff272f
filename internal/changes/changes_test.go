package changes

import (
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
