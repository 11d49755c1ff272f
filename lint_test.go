package main

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/consul-conn-exporter/consul-conn-exporter/internal/testkit/programs"
)

// The README's one test command also checks what review would: gofmt and
// go vet are clean, and go.mod and go.sum say exactly what the code uses.
func TestSourceIsGofmtAndVetClean(t *testing.T) {
	programs.NotShort(t, "runs gofmt and go vet")
	out, err := exec.Command("gofmt", "-l", ".").CombinedOutput()
	require.NoError(t, err, "%s", out)
	assert.Empty(t, strings.TrimSpace(string(out)), "files gofmt would change")

	out, err = exec.Command("go", "vet", "./...").CombinedOutput()
	assert.NoError(t, err, "go vet: %s", out)
}

func TestGoModIsTidy(t *testing.T) {
	programs.NotShort(t, "runs go mod tidy")
	out, err := exec.Command("go", "mod", "tidy", "-diff").CombinedOutput()
	assert.NoError(t, err, "go mod tidy would change go.mod or go.sum:\n%s", out)
}
