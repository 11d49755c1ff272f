package deploy

import (
	"debug/buildinfo"
	"debug/elf"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/consul-conn-exporter/consul-conn-exporter/internal/testkit/loopback"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/testkit/programs"
)

// release runs deploy/release.sh into a new directory at one
// SOURCE_DATE_EPOCH.
func release(t *testing.T) string {
	t.Helper()
	out := t.TempDir()
	// Something else already there: not the release's, not summed.
	require.NoError(t, os.WriteFile(filepath.Join(out, "notes.txt"), []byte("mine\n"), 0o644))
	cmd := exec.Command("bash", "release.sh", out, "1.2.3")
	cmd.Env = append(os.Environ(), "SOURCE_DATE_EPOCH=1795600000")
	text, err := cmd.CombinedOutput()
	require.NoError(t, err, "%s", text)
	return out
}

// A version that is not a semantic version is refused before anything is
// built, with one line.
func TestAReleaseOfABadVersionIsRefusedAtOnce(t *testing.T) {
	programs.NotShort(t, "runs release.sh")
	for _, version := range []string{"1.2", "1.2.3 beta", "v1.2.3\n1.2.4"} {
		out, err := exec.Command("bash", "release.sh", t.TempDir(), version).CombinedOutput()
		var exit *exec.ExitError
		require.ErrorAs(t, err, &exit, "%s", out)
		assert.Equal(t, 2, exit.ExitCode())
		assert.Equal(t, 1, strings.Count(strings.TrimSpace(string(out)), "\n")+1, "one line: %s", out)
		assert.Contains(t, string(out), "must be a semantic version")
	}
}

// A release for amd64 and arm64: every artifact verifies and has the
// layout of Prometheus' own, and a second build is byte-identical.
func TestReleaseArtifactsForAmd64AndArm64(t *testing.T) {
	programs.Need(t, "git", "apt-get install git")
	sha256sum := programs.Need(t, "sha256sum", "apt-get install coreutils")
	out := release(t)

	check := exec.Command(sha256sum, "-c", "sha256sums.txt")
	check.Dir = out
	text, err := check.CombinedOutput()
	require.NoError(t, err, "%s", text)
	artifacts := []string{"consul_conn_exporter-1.2.3.linux-amd64.tar.gz", "consul_conn_exporter-1.2.3.linux-arm64.tar.gz",
		"consul-conn-exporter_1.2.3_amd64.deb", "consul-conn-exporter_1.2.3_arm64.deb"}
	for _, name := range artifacts {
		assert.Contains(t, string(text), name+": OK")
		assert.Contains(t, string(text), name+".cdx.json: OK", "an SBOM beside each artifact")
	}
	assert.Equal(t, 8, strings.Count(string(text), ": OK"), "only what the release made: %s", text)

	for arch, machine := range map[string]elf.Machine{"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64} {
		t.Run(arch, func(t *testing.T) {
			dir := unpack(t, filepath.Join(out, "consul_conn_exporter-1.2.3.linux-"+arch+".tar.gz"))
			name := "consul_conn_exporter-1.2.3.linux-" + arch
			entries, err := os.ReadDir(filepath.Join(dir, name))
			require.NoError(t, err, "one directory named as the tarball")
			var files []string
			for _, e := range entries {
				files = append(files, e.Name())
			}
			assert.Equal(t, []string{"LICENSE", "NOTICES", "_consul_conn_exporter", "consul_conn_exporter", "consul_conn_exporter.1.gz", "consul_conn_exporter.bash"}, files)
			binary := filepath.Join(dir, name, "consul_conn_exporter")
			f, err := elf.Open(binary)
			require.NoError(t, err)
			defer f.Close()
			assert.Equal(t, machine, f.Machine)
			for _, prog := range f.Progs {
				assert.NotEqual(t, elf.PT_INTERP, prog.Type, "static")
			}
			// The notices name every module linked in.
			info, err := buildinfo.ReadFile(binary)
			require.NoError(t, err)
			notices, err := os.ReadFile(filepath.Join(dir, name, "NOTICES"))
			require.NoError(t, err)
			for _, dep := range info.Deps {
				assert.Contains(t, string(notices), "\n"+dep.Path+" "+dep.Version+"\nLicence: ", dep.Path)
			}
			// Its SBOMs, the tarball's and the package's, list exactly the
			// modules go version -m reads in the binary, at their versions
			// and sums.
			for _, artifact := range []string{name + ".tar.gz", "consul-conn-exporter_1.2.3_" + arch + ".deb"} {
				assert.Equal(t, modulesOf(t, info), sbomModules(t, filepath.Join(out, artifact+".cdx.json")), artifact)
			}
			license, err := os.ReadFile("../LICENSE")
			require.NoError(t, err)
			inTarball, err := os.ReadFile(filepath.Join(dir, name, "LICENSE"))
			require.NoError(t, err)
			assert.Equal(t, license, inTarball)

			deb := filepath.Join(out, "consul-conn-exporter_1.2.3_"+arch+".deb")
			info2, err := exec.Command("dpkg-deb", "--field", deb, "Architecture", "Version").Output()
			require.NoError(t, err)
			assert.Equal(t, "Architecture: "+arch+"\nVersion: 1.2.3\n", string(info2))
			contents, err := exec.Command("dpkg-deb", "--contents", deb).Output()
			require.NoError(t, err)
			for _, path := range []string{"./usr/bin/consul_conn_exporter", "./usr/share/doc/consul-conn-exporter/copyright", "./lib/systemd/system/consul-conn-exporter.service"} {
				assert.Contains(t, string(contents), path)
			}
			control, err := exec.Command("dpkg-deb", "--ctrl-tarfile", deb).Output()
			require.NoError(t, err)
			assert.NotEmpty(t, control)
			lintian := programs.Need(t, "lintian", "apt-get install lintian")
			lint, _ := exec.Command(lintian, deb).CombinedOutput()
			for line := range strings.Lines(string(lint)) {
				assert.False(t, strings.HasPrefix(line, "E:"), "lintian: %s", line)
			}
		})
	}

	// The same commit and SOURCE_DATE_EPOCH again: the same bytes.
	t.Run("reproducible", func(t *testing.T) {
		second := release(t)
		for _, arch := range []string{"amd64", "arm64"} {
			name := "consul_conn_exporter-1.2.3.linux-" + arch
			a, err := os.ReadFile(filepath.Join(out, name+".tar.gz"))
			require.NoError(t, err)
			b, err := os.ReadFile(filepath.Join(second, name+".tar.gz"))
			require.NoError(t, err)
			assert.Equal(t, a, b, "%s.tar.gz differs between two builds", name)
			binA, err := os.ReadFile(filepath.Join(unpack(t, filepath.Join(out, name+".tar.gz")), name, "consul_conn_exporter"))
			require.NoError(t, err)
			binB, err := os.ReadFile(filepath.Join(unpack(t, filepath.Join(second, name+".tar.gz")), name, "consul_conn_exporter"))
			require.NoError(t, err)
			assert.Equal(t, binA, binB)
			for _, artifact := range []string{name + ".tar.gz", "consul-conn-exporter_1.2.3_" + arch + ".deb"} {
				a, err := os.ReadFile(filepath.Join(out, artifact+".cdx.json"))
				require.NoError(t, err)
				b, err := os.ReadFile(filepath.Join(second, artifact+".cdx.json"))
				require.NoError(t, err)
				assert.Equal(t, a, b, "%s.cdx.json differs between two builds", artifact)
			}
		}
	})
}

// Under qemu-user the arm64 build counts live connections through ss
// exactly. Its built-in reader is not exercised there: qemu-user does not
// translate NETLINK_SOCK_DIAG ("socket: protocol not supported").
func TestTheArm64BuildCountsUnderQemu(t *testing.T) {
	programs.Need(t, "git", "apt-get install git")
	programs.Need(t, "ss", "apt-get install iproute2")
	qemu := programs.Need(t, "qemu-aarch64", "apt-get install qemu-user")
	out := t.TempDir()
	build := exec.Command("bash", "build.sh", filepath.Join(out, "consul_conn_exporter"), "1.2.3")
	build.Env = append(os.Environ(), "GOARCH=arm64")
	text, err := build.CombinedOutput()
	require.NoError(t, err, "%s", text)

	l := loopback.Listen(t, "127.0.0.1")
	loopback.Open(t, l, "127.0.0.121", 17)
	loopback.Open(t, l, "127.0.0.122", 4)
	dir := t.TempDir()
	run := exec.Command(qemu, filepath.Join(out, "consul_conn_exporter"), "--once", "--port", itoa(uint32(l.Port())), "--textfile.directory", dir)
	text, err = run.CombinedOutput()
	require.NoError(t, err, "%s", text)
	prom, err := os.ReadFile(filepath.Join(dir, "consul_open_http_connections.prom"))
	require.NoError(t, err)
	assert.Contains(t, string(prom), "\nconsul_open_http_connections{port=\""+itoa(uint32(l.Port()))+"\"} 21\n")
	assert.Contains(t, string(prom), "\nconsul_open_http_connections_max_per_client 17\n")
	assert.Contains(t, string(prom), "\nconsul_conn_exporter_collect_success 1\n")
}

func unpack(t *testing.T, tarball string) string {
	t.Helper()
	dir := t.TempDir()
	out, err := exec.Command("tar", "-xzf", tarball, "-C", dir).CombinedOutput()
	require.NoError(t, err, "%s", out)
	return dir
}

// modulesOf are the modules a binary's build information lists (go version
// -m's dep lines): path@version -> sum.
func modulesOf(t *testing.T, info *debug.BuildInfo) map[string]string {
	t.Helper()
	modules := map[string]string{}
	for _, dep := range info.Deps {
		if dep.Replace != nil {
			dep = dep.Replace
		}
		modules[dep.Path+"@"+dep.Version] = dep.Sum
	}
	return modules
}

// sbomModules are the library components of a CycloneDX SBOM: path@version
// -> the go.sum form of their SHA-256.
func sbomModules(t *testing.T, path string) map[string]string {
	t.Helper()
	text, err := os.ReadFile(path)
	require.NoError(t, err)
	var bom struct {
		BOMFormat  string
		Components []struct {
			Type, Name, Version string
			Hashes              []struct{ Alg, Content string }
		}
	}
	require.NoError(t, json.Unmarshal(text, &bom))
	require.Equal(t, "CycloneDX", bom.BOMFormat)
	modules := map[string]string{}
	for _, c := range bom.Components {
		if c.Type != "library" {
			continue
		}
		sum := ""
		for _, h := range c.Hashes {
			if h.Alg == "SHA-256" {
				raw, err := hex.DecodeString(h.Content)
				require.NoError(t, err)
				sum = "h1:" + base64.StdEncoding.EncodeToString(raw)
			}
		}
		modules[c.Name+"@"+c.Version] = sum
	}
	return modules
}
