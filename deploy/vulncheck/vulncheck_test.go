// Package vulncheck checks the code and the release binary against Go's
// vulnerability database, offline: the database is built from the
// golang.org/x/vulndb module pinned in tools/go.mod (its OSV files, indexed
// by its own cmd/indexdb into the layout govulncheck -db file:// reads).
package vulncheck

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/consul-conn-exporter/consul-conn-exporter/internal/testkit/programs"
)

// releaseGo is the toolchain the release is built with (deploy/build.sh):
// what ships is what is checked.
const releaseGo = "go1.27.3"

// goTool runs a tool pinned in tools/go.mod from the repository's root.
func goTool(t *testing.T, env []string, args ...string) (string, error) {
	t.Helper()
	cmd := programs.Tool(t, args[0], args[1:]...)
	cmd.Dir = "../.."
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// database is the vulnerability database of the pinned vulndb, built once
// into the cache (a minute) and kept there by its version.
func database(t *testing.T) string {
	t.Helper()
	programs.NotShort(t, "builds the vulnerability database")
	list := exec.Command("go", "list", "-modfile=tools/go.mod", "-m", "-f", "{{.Version}} {{.Dir}}", "golang.org/x/vulndb")
	list.Dir = "../.."
	out, err := list.Output()
	require.NoError(t, err)
	version, dir, _ := strings.Cut(strings.TrimSpace(string(out)), " ")
	cache, err := os.UserCacheDir()
	require.NoError(t, err)
	db := filepath.Join(cache, "consul-conn-exporter", "vulndb-"+version)
	if _, err := os.Stat(filepath.Join(db, "index", "db.json")); err == nil {
		return db
	}
	tmp := db + ".tmp"
	require.NoError(t, os.RemoveAll(tmp))
	text, err := goTool(t, nil, "indexdb", "-vulns", filepath.Join(dir, "data", "osv"), "-out", tmp)
	require.NoError(t, err, "indexdb: %s", text)
	require.NoError(t, os.RemoveAll(db))
	require.NoError(t, os.Rename(tmp, db))
	return db
}

// No vulnerability the database knows is reached from our code, its
// standard library the release toolchain's (govulncheck exits 3 where one
// is: with go.mod's Go 1.26.8, 13 of the standard library's are).
func TestNoKnownVulnerabilityIsReachedFromOurCode(t *testing.T) {
	db := database(t)
	out, err := goTool(t, []string{"GOTOOLCHAIN=" + releaseGo}, "govulncheck", "-db", "file://"+db, "./...")
	require.NoError(t, err, "govulncheck: %s", out)
}

// The release binary, as deploy/build.sh makes it, holds no vulnerable
// code the database knows: stripped, it is judged by the versions of the
// modules linked in, called or not (x/net v0.61.0 and x/crypto v0.58.0
// were, and were raised).
func TestTheReleaseBinaryHasNoKnownVulnerability(t *testing.T) {
	db := database(t)
	binary := filepath.Join(t.TempDir(), "consul_conn_exporter")
	build := exec.Command("bash", "deploy/build.sh", binary)
	build.Dir = "../.."
	out, err := build.CombinedOutput()
	require.NoError(t, err, "%s", out)
	version, err := exec.Command("go", "version", binary).Output()
	require.NoError(t, err)
	require.Contains(t, string(version), releaseGo, "built with the release toolchain")
	text, err := goTool(t, nil, "govulncheck", "-db", "file://"+db, "-mode", "binary", binary)
	require.NoError(t, err, "govulncheck -mode binary: %s", text)
}
