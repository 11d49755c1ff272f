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
	assert.Equal(t, 32, binary.Size(programVerdict{}), "struct verdict: group, below_limit, client[16], closed_ns")
	assert.Equal(t, 24, binary.Size(programTotal{}), "struct total: refused, untracked, below_limit")
}

// inet_sport is in network order; the map's key is its two bytes as the
// host reads them.
func TestAPortKeyIsThePortInNetworkOrder(t *testing.T) {
	key := PortKey(8500)
	var b [2]byte
	binary.NativeEndian.PutUint16(b[:], key)
	assert.Equal(t, [2]byte{0x21, 0x34}, b)
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
