package kernel

import (
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Each watched port reads as 1 + its group, every other as 0.
func TestEachWatchedPortReadsAsItsGroup(t *testing.T) {
	of := PortGroups([][]uint16{{8500, 8501}, {8300}})
	assert.Equal(t, uint8(1), of[8500])
	assert.Equal(t, uint8(1), of[8501])
	assert.Equal(t, uint8(2), of[8300])
	assert.Equal(t, uint8(0), of[8502])
	assert.Equal(t, uint8(0), of[0])
}

// The namespace compared in the kernel is the one /proc/self/ns/net names.
func TestTheNamespaceIsTheExportersOwn(t *testing.T) {
	link, err := os.Readlink("/proc/self/ns/net")
	require.NoError(t, err)
	want, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimPrefix(link, "net:["), "]"), 10, 32)
	require.NoError(t, err)
	got, err := Namespace()
	require.NoError(t, err)
	assert.Equal(t, uint32(want), got)
}
