// Package programs lets a test ask for a program it runs for real: the test
// skips, saying how to install it, where the program is missing, except in
// CI (CI=true), where a missing program is a failure.
package programs

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/shlex"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/consul-conn-exporter/consul-conn-exporter/internal/kernel"
)

// Need returns the path of program, or ends the test: install says how to
// get it ("apt-get install busybox"). Under -short it skips: the unit tests
// start no program.
func Need(t testing.TB, program, install string) string {
	t.Helper()
	NotShort(t, "runs "+program)
	path, err := exec.LookPath(program)
	if err != nil {
		Missing(t, program+" is not installed: "+install)
	}
	return path
}

// toolsModule is tools/go.mod, found from this file's: the build tools'
// own module, which pins them.
var toolsModule = func() string {
	_, here, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(here), "..", "..", "..", "tools", "go.mod")
}()

// Tool is a command running name, a build tool pinned in tools/go.mod
// (helm, jsonnet, indexdb, ...), which the go command builds once. Under
// -short the test skips: it starts a program.
func Tool(t testing.TB, name string, args ...string) *exec.Cmd {
	t.Helper()
	NotShort(t, "builds and runs "+name)
	return exec.Command("go", append([]string{"tool", "-modfile=" + toolsModule, name}, args...)...)
}

// NotShort skips the test under -short: what says what it does that the
// unit tests do not (start a program, build the exporter).
func NotShort(t testing.TB, what string) {
	t.Helper()
	if testing.Short() {
		t.Skip(what + ": not a unit test, run without -short")
	}
}

// NeedRoot ends the test unless it runs as root; why says what for.
func NeedRoot(t testing.TB, why string) {
	t.Helper()
	if os.Geteuid() != 0 {
		Missing(t, "needs root to "+why+": run the tests as root (CI does)")
	}
}

// NeedBTF ends the test on a kernel without BTF, where the kernel programs
// read the layout of the kernel's structs.
func NeedBTF(t testing.TB) {
	t.Helper()
	if _, err := os.Stat("/sys/kernel/btf/vmlinux"); err != nil {
		Missing(t, "this kernel has no BTF (/sys/kernel/btf/vmlinux): run the tests on Linux 5.5 or later built with CONFIG_DEBUG_INFO_BTF, as Debian's and Ubuntu's are")
	}
}

// Loaded ends the test where loading the exporter's kernel programs failed
// (err, from their Load), saying which it was: this host's security policy
// refusing them, which is no fault of theirs (a skip, or in CI a failure),
// or anything else, which is (a failure).
func Loaded(t testing.TB, err error) {
	t.Helper()
	if errors.Is(err, kernel.ErrPolicy) {
		Missing(t, "this host's security policy refused the kernel programs, not a fault of theirs: "+err.Error())
	}
	require.NoError(t, err, "the kernel programs failed to load: a fault of theirs, or a kernel too old")
}

// Missing ends the test for what msg says the machine lacks: a skip, but
// in CI (CI=true), where it is a failure.
func Missing(t testing.TB, msg string) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
	}
	t.Skip(msg)
}

// AsNobody is the argv prefix that runs a program as the nobody user with
// no capabilities but caps (setpriv's names: "sys_ptrace"), or ends the
// test where that cannot be done.
func AsNobody(t testing.TB, caps ...string) []string {
	t.Helper()
	NeedRoot(t, "switch to the nobody user")
	setpriv := Need(t, "setpriv", "apt-get install util-linux")
	keep := "-all"
	for _, c := range caps {
		keep += ",+" + c
	}
	return []string{setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=" + keep, "--ambient-caps=" + keep, "--bounding-set=" + keep}
}

// Alive is a process that exists and is not a zombie waiting to be reaped.
func Alive(pid int) bool {
	_, alive := AliveFor(pid)
	return alive
}

// AliveFor is how long process pid has run, and whether it is Alive.
func AliveFor(pid int) (time.Duration, bool) {
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, false
	}
	// Past the command's name, in parentheses: the state is field 3, the
	// start time (clock ticks since boot) field 22.
	fields := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
	if len(fields) < 22-2 || fields[0] == "Z" {
		return 0, false
	}
	started, err1 := strconv.ParseFloat(fields[22-3], 64)
	uptime, err2 := os.ReadFile("/proc/uptime")
	if err1 != nil || err2 != nil {
		return 0, true
	}
	now, err := strconv.ParseFloat(strings.Fields(string(uptime))[0], 64)
	if err != nil {
		return 0, true
	}
	const ticks = 100 // USER_HZ, on every architecture Go runs Linux on
	return max(0, time.Duration((now-started/ticks)*float64(time.Second))), true
}

// SameAsGenerated compiles the kernel program of the package in the
// current directory again, as its //go:generate line in generateFile says,
// in a copy of the source tree made under a temporary directory (the
// headers of its -I directories and the package's C sources, in the same
// layout), and fails the test unless
// every file made (the objects and bindings of both byte orders) is the one
// committed. It needs Debian's clang and llvm (the versions the line names)
// and libbpf-dev.
func SameAsGenerated(t testing.TB, generateFile string) {
	t.Helper()
	NotShort(t, "compiles a kernel program")
	text, err := os.ReadFile(generateFile)
	require.NoError(t, err)
	var args []string
	for _, line := range strings.Split(string(text), "\n") {
		if rest, ok := strings.CutPrefix(line, "//go:generate go tool bpf2go "); ok {
			args, err = shlex.Split(rest)
			require.NoError(t, err)
		}
	}
	require.NotEmpty(t, args, "no //go:generate go tool bpf2go line in %s", generateFile)
	for i, arg := range args[:len(args)-1] {
		if arg == "-cc" || arg == "-strip" {
			Need(t, args[i+1], "apt-get install clang-14 llvm-14 libbpf-dev (Debian 12's, which made the committed objects)")
		}
	}
	if _, err := os.Stat("/usr/include/bpf/bpf_helpers.h"); err != nil {
		Missing(t, "libbpf's headers are not installed: apt-get install libbpf-dev")
	}

	pkg, err := filepath.Abs(filepath.Dir(generateFile))
	require.NoError(t, err)
	tree := t.TempDir()
	copyFile := func(from, to string) {
		data, err := os.ReadFile(from)
		require.NoError(t, err)
		require.NoError(t, os.MkdirAll(filepath.Dir(to), 0o755))
		require.NoError(t, os.WriteFile(to, data, 0o644))
	}
	for _, dir := range includeDirs(args) { // the shared headers, as -I names them
		headers, err := filepath.Glob(filepath.Join(pkg, dir, "*.h"))
		require.NoError(t, err)
		require.NotEmpty(t, headers, "no headers in %s", dir)
		for _, header := range headers {
			copyFile(header, filepath.Join(tree, filepath.Base(pkg), dir, filepath.Base(header)))
		}
	}
	sources, err := filepath.Glob(filepath.Join(pkg, "*.bpf.c"))
	require.NoError(t, err)
	out := filepath.Join(tree, filepath.Base(pkg))
	for _, source := range sources {
		copyFile(source, filepath.Join(out, filepath.Base(source)))
	}
	bpf2go := filepath.Join(tree, "bpf2go")
	build := exec.Command("go", "build", "-o", bpf2go, "github.com/cilium/ebpf/cmd/bpf2go")
	build.Dir = pkg
	built, err := build.CombinedOutput()
	require.NoError(t, err, "building bpf2go: %s", built)
	cmd := exec.Command(bpf2go, args...)
	cmd.Dir = out
	cmd.Env = append(os.Environ(), "GOPACKAGE="+filepath.Base(pkg))
	made, err := cmd.CombinedOutput()
	require.NoError(t, err, "bpf2go: %s", made)

	entries, err := os.ReadDir(out)
	require.NoError(t, err)
	compared := 0
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), ".bpf.c") {
			continue
		}
		made, err := os.ReadFile(filepath.Join(out, e.Name()))
		require.NoError(t, err)
		committed, err := os.ReadFile(filepath.Join(pkg, e.Name()))
		require.NoError(t, err, "%s is made by go generate but not committed", e.Name())
		if !bytes.Equal(made, committed) {
			t.Errorf("%s differs from what its source compiles to: run go generate ./... (docs/development.md#kernel-programs)", e.Name())
		}
		compared++
	}
	require.Equal(t, 4, compared, "the objects and bindings of both byte orders")
}

// includeDirs are the directories a bpf2go line's -cflags names with -I.
func includeDirs(args []string) []string {
	var dirs []string
	for i, arg := range args[:len(args)-1] {
		if arg != "-cflags" {
			continue
		}
		for _, flag := range strings.Fields(args[i+1]) {
			if dir, ok := strings.CutPrefix(flag, "-I"); ok {
				dirs = append(dirs, dir)
			}
		}
	}
	return dirs
}

// ExactUnlessMissed asserts got is want, or, where the kernel skipped a
// program missed times (as it may under load: a socket's change in an
// interrupt of another's), within as many.
func ExactUnlessMissed(t testing.TB, want, got, missed float64, what string) {
	t.Helper()
	if missed == 0 {
		assert.Equal(t, want, got, what)
		return
	}
	t.Logf("the kernel skipped the program %.0f times: %s within as many", missed, what)
	assert.InDelta(t, want, got, missed, what)
}
