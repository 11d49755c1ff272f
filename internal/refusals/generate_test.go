package refusals

import (
	"testing"

	"github.com/consul-conn-exporter/consul-conn-exporter/internal/testkit/programs"
)

// The committed objects and bindings, for both byte orders, are what the
// C source compiles to: neither can change without the other.
func TestTheCommittedKernelProgramIsItsSourceCompiled(t *testing.T) {
	programs.SameAsGenerated(t, "generate.go")
}
