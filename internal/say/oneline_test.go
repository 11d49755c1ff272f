package say

import (
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestClipKeepsTheFirstLineAndMarksCuts(t *testing.T) {
	assert.Equal(t, "short", Clip("short", 10))
	assert.Equal(t, "first...", Clip("first\nsecond", 10))
	assert.Equal(t, "0123456789...", Clip("0123456789abc", 10))
	assert.Equal(t, "0123...", Clip("0123456\nsecond", 4))
}

func TestFoldJoinsLines(t *testing.T) {
	assert.Equal(t, "yaml: unmarshal errors: line 2: field x not found", Fold("yaml: unmarshal errors:\n  line 2: field x not found\n"))
}
