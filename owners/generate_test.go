package owners

import (
	"os"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/consul-conn-exporter/consul-conn-exporter/internal/programs"
)

// The committed objects and bindings, for both byte orders, are what the
// C source compiles to: neither can change without the other.
func TestTheCommittedKernelProgramIsItsSourceCompiled(t *testing.T) {
	made := programs.Regenerate(t, "generate.go")
	require.Len(t, made, 4, "the objects and bindings of both byte orders")
	for name, data := range made {
		committed, err := os.ReadFile(name)
		require.NoError(t, err, "%s is made by go generate but not committed", name)
		assert.True(t, string(committed) == string(data), "%s differs from what its source compiles to: run go generate ./... (docs/development.md#kernel-programs)", name)
	}
}
