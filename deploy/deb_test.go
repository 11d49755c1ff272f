package deploy

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/consul-conn-exporter/consul-conn-exporter/internal/testkit/programs"
)

// The Debian package, built by deploy/deb/build.sh with nfpm, installed
// for real with dpkg, its binary run, its units verified, lintian clean of
// errors, and purged without a trace of its own.
func TestDebianPackageInstallsRunsAndPurgesClean(t *testing.T) {
	programs.NeedRoot(t, "install a package with dpkg")
	dpkg := programs.Need(t, "dpkg", "a Debian system")
	lintian := programs.Need(t, "lintian", "apt-get install lintian")
	analyze := programs.Need(t, "systemd-analyze", "apt-get install systemd")
	if out, err := exec.Command("dpkg-query", "-W", "consul-conn-exporter").CombinedOutput(); err == nil {
		t.Fatalf("consul-conn-exporter is installed on this machine already (%s): purge it to run this test", strings.TrimSpace(string(out)))
	}

	build := exec.Command("bash", "deb/build.sh", t.TempDir(), "1.2.3")
	out, err := build.Output()
	require.NoError(t, err, "deb/build.sh: %s", stderrOf(err))
	deb := strings.TrimSpace(string(out))
	assert.Equal(t, "consul-conn-exporter_1.2.3_amd64.deb", filepath.Base(deb))

	lint, _ := exec.Command(lintian, deb).CombinedOutput()
	for line := range strings.Lines(string(lint)) {
		assert.False(t, strings.HasPrefix(line, "E:"), "lintian: %s", line)
	}

	contents, err := exec.Command("dpkg-deb", "--contents", deb).Output()
	require.NoError(t, err)
	for _, file := range []string{"./usr/share/man/man1/consul_conn_exporter.1.gz",
		"./usr/share/bash-completion/completions/consul_conn_exporter", "./usr/share/zsh/vendor-completions/_consul_conn_exporter"} {
		assert.Contains(t, string(contents), " "+file+"\n", "the package ships %s", file)
	}
	out, err = exec.Command(dpkg, "-i", deb).CombinedOutput()
	t.Cleanup(func() { exec.Command(dpkg, "-P", "consul-conn-exporter").Run() })
	require.NoError(t, err, "dpkg -i: %s", out)

	version, err := exec.Command("/usr/bin/consul_conn_exporter", "--version").CombinedOutput()
	require.NoError(t, err)
	assert.Contains(t, string(version), "consul_conn_exporter, version 1.2.3 ")
	// Once, as the units run it, into the directory the package made ready.
	textfileDir := "/var/lib/prometheus/node-exporter"
	info, err := os.Stat(textfileDir)
	require.NoError(t, err)
	assert.Equal(t, os.ModeDir|0o775, info.Mode()&(os.ModeDir|os.ModePerm))
	group, err := exec.Command("getent", "group", "prometheus").Output()
	require.NoError(t, err)
	assert.Contains(t, string(group), ":"+itoa(info.Sys().(*syscall.Stat_t).Gid)+":", "the directory's group is prometheus")
	run, err := exec.Command("/usr/bin/consul_conn_exporter", "--once", "--command", "true", "--textfile.directory", textfileDir).CombinedOutput()
	require.NoError(t, err, "%s", run)
	require.FileExists(t, filepath.Join(textfileDir, "consul_open_http_connections.prom"))
	conffile, err := os.ReadFile("/etc/default/consul-conn-exporter")
	require.NoError(t, err)
	assert.Contains(t, string(conffile), `ARGS="--textfile.directory=/var/lib/prometheus/node-exporter"`)

	units := []string{"/lib/systemd/system/consul-conn-exporter.service",
		"/lib/systemd/system/consul-conn-exporter-once.service", "/lib/systemd/system/consul-conn-exporter-once.timer"}
	verify, err := exec.Command(analyze, append([]string{"verify"}, units...)...).CombinedOutput()
	assert.NoError(t, err)
	assert.Empty(t, strings.TrimSpace(string(verify)), "systemd-analyze verify")

	out, err = exec.Command(dpkg, "-P", "consul-conn-exporter").CombinedOutput()
	require.NoError(t, err, "dpkg -P: %s", out)
	for line := range strings.Lines(string(contents)) {
		fields := strings.Fields(line)
		if len(fields) < 6 || strings.HasPrefix(fields[0], "d") {
			continue // directories are shared with other packages
		}
		assert.NoFileExists(t, strings.TrimPrefix(fields[5], "."), "left behind by dpkg -P")
	}
	assert.NoFileExists(t, filepath.Join(textfileDir, "consul_open_http_connections.prom"), "our textfile is purged too")
}

func stderrOf(err error) string {
	if exit, ok := err.(*exec.ExitError); ok {
		return string(exit.Stderr)
	}
	return ""
}

func itoa(n uint32) string { return strconv.FormatUint(uint64(n), 10) }
