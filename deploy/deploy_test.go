// Package deploy holds the files operators copy as they are; its tests run
// each file's own checker.
package deploy

import (
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	appsv1 "k8s.io/api/apps/v1"
	"sigs.k8s.io/yaml"

	"github.com/consul-conn-exporter/consul-conn-exporter/internal/programs"
)

func TestSystemdUnitsVerifyAndAreHardened(t *testing.T) {
	analyze := programs.Need(t, "systemd-analyze", "apt-get install systemd")
	// verify insists that ExecStart's program exists: point the units at a
	// freshly built exporter.
	dir := t.TempDir()
	binary := filepath.Join(dir, "consul_conn_exporter")
	out, err := exec.Command("go", "build", "-o", binary, "..").CombinedOutput()
	require.NoError(t, err, "%s", out)
	units, err := filepath.Glob("systemd/*")
	require.NoError(t, err)
	var copies []string
	for _, unit := range units {
		text, err := os.ReadFile(unit)
		require.NoError(t, err)
		copy := filepath.Join(dir, filepath.Base(unit))
		require.NoError(t, os.WriteFile(copy, []byte(strings.ReplaceAll(string(text), "/usr/local/bin/consul_conn_exporter", binary)), 0o644))
		copies = append(copies, copy)
	}

	// verify exits 0 on unknown keys and bad values, and only says so.
	out, err = exec.Command(analyze, append([]string{"verify"}, copies...)...).CombinedOutput()
	assert.NoError(t, err)
	assert.Empty(t, strings.TrimSpace(string(out)), "systemd-analyze verify")

	for _, unit := range copies {
		if !strings.HasSuffix(unit, ".service") {
			continue
		}
		// Exposure 2.0 of 10: systemd rates it "OK" and better.
		out, err := exec.Command(analyze, "security", "--offline=true", "--threshold=20", unit).CombinedOutput()
		assert.NoError(t, err, "systemd-analyze security %s:\n%s", filepath.Base(unit), out)
	}
}

func TestPrometheusConfigAndAlertRules(t *testing.T) {
	promtool := programs.Need(t, "promtool", "apt-get install prometheus")
	for _, args := range [][]string{
		{"check", "config", "prometheus/prometheus.yml"}, // and alerts.yml, which it names
		{"test", "rules", "prometheus/alerts_test.yml"},
	} {
		out, err := exec.Command(promtool, args...).CombinedOutput()
		assert.NoError(t, err, "promtool %s:\n%s", strings.Join(args, " "), out)
	}
}

func TestDaemonSetIsAStrictlyValidDaemonSet(t *testing.T) {
	text, err := os.ReadFile("kubernetes/daemonset.yaml")
	require.NoError(t, err)
	var ds appsv1.DaemonSet
	require.NoError(t, yaml.UnmarshalStrict(text, &ds), "unknown or misspelt fields")
	assert.Equal(t, "DaemonSet", ds.Kind)
	spec := ds.Spec.Template.Spec
	assert.True(t, spec.HostNetwork, "ss must see the node's sockets")
	assert.Equal(t, ds.Spec.Selector.MatchLabels, ds.Spec.Template.Labels)
	require.Len(t, spec.Containers, 1)
	sc := spec.Containers[0].SecurityContext
	require.NotNil(t, sc)
	assert.True(t, *sc.RunAsNonRoot, "counting needs no root")
	assert.False(t, *sc.AllowPrivilegeEscalation)
	assert.Equal(t, "ALL", string(sc.Capabilities.Drop[0]))
}

func TestYAMLFilesLint(t *testing.T) {
	yamllint := programs.Need(t, "yamllint", "apt-get install yamllint")
	files, err := filepath.Glob("*/*.y*ml")
	require.NoError(t, err)
	out, err := exec.Command(yamllint, append([]string{"-d", "{extends: default, rules: {line-length: {max: 160}, document-start: disable}}"}, files...)...).CombinedOutput()
	assert.NoError(t, err, "yamllint:\n%s", out)
}

// No container engine runs here, so the Dockerfile's build line is run as
// it is and its product checked: a static binary, as the runtime image,
// which has no Go and no C library of glibc's, needs.
func TestDockerfileBuildsAStaticBinary(t *testing.T) {
	text, err := os.ReadFile("container/Dockerfile")
	require.NoError(t, err)
	var build string
	for _, line := range strings.Split(string(text), "\n") {
		if strings.HasPrefix(line, "RUN CGO_ENABLED=0 go build") {
			build = strings.TrimPrefix(line, "RUN ")
		}
	}
	require.NotEmpty(t, build, "the Dockerfile's go build line")
	out := filepath.Join(t.TempDir(), "consul_conn_exporter")
	require.Contains(t, build, " -o /consul_conn_exporter ")
	cmd := exec.Command("sh", "-c", strings.Replace(build, " -o /consul_conn_exporter ", " -o "+out+" ", 1))
	cmd.Dir = ".."
	output, err := cmd.CombinedOutput()
	require.NoError(t, err, "%s", output)

	binary, err := elf.Open(out)
	require.NoError(t, err)
	defer binary.Close()
	for _, prog := range binary.Progs {
		assert.NotEqual(t, elf.PT_INTERP, prog.Type, "dynamically linked: needs a loader the runtime image may lack")
	}
}
