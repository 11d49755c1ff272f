package main

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/consul-conn-exporter/consul-conn-exporter/internal/programs"
)

// The README's one test command also checks what review would: gofmt and
// go vet are clean.
func TestSourceIsGofmtAndVetClean(t *testing.T) {
	programs.NotShort(t, "runs gofmt and go vet")
	out, err := exec.Command("gofmt", "-l", ".").CombinedOutput()
	require.NoError(t, err, "%s", out)
	assert.Empty(t, strings.TrimSpace(string(out)), "files gofmt would change")

	out, err = exec.Command("go", "vet", "./...").CombinedOutput()
	assert.NoError(t, err, "go vet: %s", out)
}
