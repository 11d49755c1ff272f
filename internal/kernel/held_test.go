package kernel

import (
	"math"
	"os"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A word built as the kernel builds it, by adding deltas to HeldNone,
// reads back each generation's count, their sum, and one version per
// change; counts below 0 (a close before its open was seen) and up to the
// bias do not borrow from the other half.
func TestTheHeldWordPacksBothGenerationsAndAVersion(t *testing.T) {
	word := uint64(HeldNone)
	assert.Equal(t, 0, HeldIn(word, 0))
	assert.Equal(t, 0, HeldIn(word, 1))
	assert.Zero(t, HeldVersion(word))

	add := func(gen uint32, n int64) { word += HeldDelta(gen, n) + HeldChange }
	add(0, 5)
	add(1, 3)
	add(0, -1)
	assert.Equal(t, 4, HeldIn(word, 0))
	assert.Equal(t, 3, HeldIn(word, 1))
	assert.Equal(t, 7, HeldCount(word))
	assert.Equal(t, uint64(3), HeldVersion(word))

	// A census moves one from generation 0 to 1: the sum stays.
	word += HeldDelta(1, 1) + HeldDelta(0, -1) + HeldChange
	assert.Equal(t, 3, HeldIn(word, 0))
	assert.Equal(t, 4, HeldIn(word, 1))
	assert.Equal(t, 7, HeldCount(word))

	// Below 0 in one half, the other's count is untouched.
	add(0, -10)
	assert.Equal(t, -7, HeldIn(word, 0))
	assert.Equal(t, 4, HeldIn(word, 1))
	// The generation's last bit alone chooses the half.
	assert.Equal(t, HeldIn(word, 1), HeldIn(word, 3))

	// Both halves' ends, by the bias.
	top := uint64(HeldNone) + HeldDelta(0, HeldBias-1) + HeldDelta(1, -HeldBias)
	assert.Equal(t, HeldBias-1, HeldIn(top, 0))
	assert.Equal(t, -HeldBias, HeldIn(top, 1))
}

// A dropped entry counts 0, whatever its halves say; the version wraps out
// of the word without touching the counts or the dropped bit.
func TestADroppedEntryCountsNothingAndTheVersionWraps(t *testing.T) {
	word := uint64(HeldNone) + HeldDelta(0, 2) + HeldDelta(1, 1)
	assert.Equal(t, 3, HeldCount(word))
	assert.Zero(t, HeldCount(word|HeldDropped))
	assert.Equal(t, 2, HeldIn(word|HeldDropped, 0), "the halves stay as they were")

	last := word | uint64(math.MaxUint64)>>HeldVersionShift<<HeldVersionShift
	wrapped := last + HeldChange
	assert.Zero(t, HeldVersion(wrapped))
	assert.Equal(t, 3, HeldCount(wrapped))
	assert.Zero(t, wrapped&HeldDropped)
}

// held.h, which the C includes, is the layout defined here: go generate
// made it, and neither changed since without the other.
func TestTheCHeaderIsTheGoLayout(t *testing.T) {
	committed, err := os.ReadFile("held.h")
	require.NoError(t, err)
	assert.Equal(t, HeldHeader(), string(committed), "run go generate ./internal/kernel, then ./internal/events and ./internal/refusals")
}
