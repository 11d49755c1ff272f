package textfile

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/consul-conn-exporter/consul-conn-exporter/internal/testkit/exposition"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/testkit/programs"
)

const nobody = 65534

func gatherer(*testing.T) prometheus.Gatherer {
	return exposition.Gauge("consul_conn_exporter_collect_success", 1)
}

// sharedTmp is a directory like /tmp: root's, world-writable and sticky, so
// that nobody can plant things in it. It sits in os.TempDir, which nobody
// can reach, unlike t.TempDir's private parent.
func sharedTmp(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "textfile-shared")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	require.NoError(t, os.Chmod(dir, os.ModeSticky|0o777))
	return dir
}

// asNobody runs a shell command as the unprivileged user, as an attacker
// on the same host would.
func asNobody(t *testing.T, script string) {
	t.Helper()
	argv := append(programs.AsNobody(t), "sh", "-c", script)
	out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput()
	require.NoError(t, err, "as nobody: %s: %s", script, out)
}

// victim is a directory elsewhere that an attacker would like us to write
// into (think /etc), with a file it watches.
func victim(t *testing.T) (dir, file string) {
	dir = t.TempDir()
	file = filepath.Join(dir, "passwd")
	require.NoError(t, os.WriteFile(file, []byte("root:x:0:0\n"), 0o644))
	return dir, file
}

func assertUntouched(t *testing.T, dir, file string) {
	t.Helper()
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	require.Len(t, entries, 1, "nothing new in %s", dir)
	text, err := os.ReadFile(file)
	require.NoError(t, err)
	assert.Equal(t, "root:x:0:0\n", string(text))
}

func TestRefusesWhatAnotherUserCouldSteer(t *testing.T) {
	for _, tc := range []struct {
		name   string
		attack func(t *testing.T, dir, victimDir string)
		err    string
	}{
		{"symlink to another directory", func(t *testing.T, dir, victimDir string) {
			asNobody(t, "ln -s "+victimDir+" "+dir)
		}, "is a symlink owned by user 65534"},
		{"directory owned by another user", func(t *testing.T, dir, _ string) {
			asNobody(t, "mkdir -m 0755 "+dir)
		}, "owned by user 65534"},
		{"world-writable without the sticky bit", func(t *testing.T, dir, _ string) {
			require.NoError(t, os.Mkdir(dir, 0o755))
			require.NoError(t, os.Chmod(dir, 0o777))
		}, "writable by every user without the sticky bit"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			programs.NeedRoot(t, "be the root-run exporter")
			dir := filepath.Join(sharedTmp(t), "node-exporter")
			victimDir, victimFile := victim(t)
			tc.attack(t, dir, victimDir)

			err := Write(dir, gatherer(t))
			require.Error(t, err)
			assert.Contains(t, err.Error(), "textfile directory "+dir)
			assert.Contains(t, err.Error(), tc.err)
			assert.Contains(t, err.Error(), "fix: ")
			assert.NotContains(t, err.Error(), "\n")
			assertUntouched(t, victimDir, victimFile)
			assert.NoFileExists(t, filepath.Join(dir, FileName))
		})
	}
}

func TestAPlantedSymlinkForTheFileIsReplacedNotFollowed(t *testing.T) {
	// The directory is root's and sticky, like /tmp: nobody may add files
	// to it, so it is not refused; a link nobody planted for our file name
	// is replaced by our file, and its target is not written.
	dir := sharedTmp(t)
	victimDir, victimFile := victim(t)
	require.NoError(t, os.Chmod(victimFile, 0o666))
	asNobody(t, "ln -s "+victimFile+" "+filepath.Join(dir, FileName))

	require.NoError(t, Write(dir, gatherer(t)))
	assertUntouched(t, victimDir, victimFile)
	info, err := os.Lstat(filepath.Join(dir, FileName))
	require.NoError(t, err)
	assert.True(t, info.Mode().IsRegular(), "our file replaced the link")
}

func TestADirectorySwappedForASymlinkBetweenWritesIsRefused(t *testing.T) {
	// A parent anyone may rename in (world-writable, no sticky bit): the
	// directory we wrote in is moved away and a link put in its place.
	parent := sharedTmp(t)
	require.NoError(t, os.Chmod(parent, 0o777))
	dir := filepath.Join(parent, "node-exporter")
	require.NoError(t, Write(dir, gatherer(t)))

	victimDir, victimFile := victim(t)
	asNobody(t, "mv "+dir+" "+dir+".old && ln -s "+victimDir+" "+dir)
	err := Write(dir, gatherer(t))
	require.Error(t, err)
	assert.Contains(t, err.Error(), "is a symlink owned by user 65534")
	assertUntouched(t, victimDir, victimFile)
}

func TestWritesWhereOnlyRootOrWeCanChangeTheFile(t *testing.T) {
	for _, tc := range []struct {
		name  string
		make  func(t *testing.T, dir string)
		owner int // of the directory afterwards
	}{
		{"missing: created 0755", func(*testing.T, string) {}, 0},
		{"root's 0755", func(t *testing.T, dir string) { require.NoError(t, os.Mkdir(dir, 0o755)) }, 0},
		{"root's, group-writable by another group", func(t *testing.T, dir string) {
			// Debian's node_exporter directory made root:prometheus 0775.
			require.NoError(t, os.Mkdir(dir, 0o755))
			require.NoError(t, os.Chown(dir, 0, nobody))
			require.NoError(t, os.Chmod(dir, 0o775))
		}, 0},
		{"root's, sticky and world-writable", func(t *testing.T, dir string) {
			require.NoError(t, os.Mkdir(dir, 0o755))
			require.NoError(t, os.Chmod(dir, os.ModeSticky|0o777))
		}, 0},
		{"a symlink root made", func(t *testing.T, dir string) {
			target := t.TempDir()
			require.NoError(t, os.Symlink(target, dir))
		}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			programs.NeedRoot(t, "make directories owned by root and other groups")
			dir := filepath.Join(sharedTmp(t), "node-exporter")
			tc.make(t, dir)
			require.NoError(t, Write(dir, gatherer(t)))
			text, err := os.ReadFile(filepath.Join(dir, FileName))
			require.NoError(t, err)
			assert.Contains(t, string(text), "consul_conn_exporter_collect_success 1")
			info, err := os.Stat(dir)
			require.NoError(t, err)
			assert.True(t, info.IsDir())
			assert.Equal(t, uint32(tc.owner), info.Sys().(*syscall.Stat_t).Uid)
			entries, err := os.ReadDir(dir)
			require.NoError(t, err)
			require.Len(t, entries, 1, "no temporary file left")
			file, err := os.Stat(filepath.Join(dir, FileName))
			require.NoError(t, err)
			assert.Equal(t, os.FileMode(0o644), file.Mode().Perm())
		})
	}
}

func TestMissingDirectoryIsCreatedReadableByAll(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "a", "node-exporter")
	require.NoError(t, Write(dir, gatherer(t)))
	info, err := os.Stat(dir)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o755), info.Mode().Perm()&^os.FileMode(umask()))
}

func TestDirectoryThatCannotBeMadeIsNamed(t *testing.T) {
	file := filepath.Join(t.TempDir(), "file")
	require.NoError(t, os.WriteFile(file, nil, 0o644))
	dir := filepath.Join(file, "node-exporter")
	err := Write(dir, gatherer(t))
	require.Error(t, err)
	assert.True(t, strings.HasPrefix(err.Error(), "textfile directory "+dir), err.Error())
	assert.Contains(t, err.Error(), "not a directory")
}

func umask() int {
	m := syscall.Umask(0)
	syscall.Umask(m)
	return m
}

func TestLeftoverTemporaryFilesAreRemoved(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, Write(dir, gatherer(t)))
	leftover := filepath.Join(dir, ".consul_open_http_connections.prom.ABCDEF.tmp")
	other := filepath.Join(dir, "other.prom")
	require.NoError(t, os.WriteFile(leftover, []byte("consul_open_http_"), 0o644))
	require.NoError(t, os.WriteFile(other, []byte("x 1\n"), 0o644))
	removed, err := RemoveLeftovers(dir)
	require.NoError(t, err)
	assert.Equal(t, 1, removed)
	assert.NoFileExists(t, leftover)
	assert.FileExists(t, other, "another collector's file stays")
	assert.FileExists(t, filepath.Join(dir, FileName))
}
