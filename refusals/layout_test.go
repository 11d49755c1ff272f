package refusals

import (
	"encoding/binary"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The records the exporter reads back are laid out as the C structs are
// (bpf2go made the Go types from the object's BTF; a change in the C that
// the Go side has not followed shows here).
func TestTheMapsRecordsAreTheCStructs(t *testing.T) {
	assert.Equal(t, 20, binary.Size(programClientKey{}), "struct client_key: group, client[16]")
	assert.Equal(t, 40, binary.Size(programVerdict{}), "struct verdict: group, below_limit, client[16], closed_ns, late, unused")
	assert.Equal(t, 24, binary.Size(programTotal{}), "struct total: refused, untracked, below_limit")
}

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
