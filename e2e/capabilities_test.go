package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/consul-conn-exporter/consul-conn-exporter/internal/testkit/programs"
)

// Capability masks as /proc/PID/status shows them.
const (
	capNone          = "0000000000000000"
	capWalk          = "0000000000080004" // CAP_DAC_READ_SEARCH (2) and CAP_SYS_PTRACE (19)
	capSysAdmin      = "0000000000200000" // CAP_SYS_ADMIN (21)
	capBPFAndPerfmon = "000000c000000000" // CAP_PERFMON (38) and CAP_BPF (39)
)

// The privileges table of docs/privileges.md, mode by mode, for both
// builds (the release's, without cgo, and a cgo one, as a plain go build
// makes wherever a C compiler is): the exporter's every thread and every
// program it runs (ss, netstat, a --command, each a wrapper that reports
// its own and its parent's status, then runs the real one) hold only what
// the mode keeps, with no_new_privs set, root included.
func TestTheExporterAndEveryProgramItRunsKeepOnlyWhatTheirModeNeeds(t *testing.T) {
	programs.NeedRoot(t, "run the exporter as root, and load its kernel programs")
	ss := programs.Need(t, "ss", "apt-get install iproute2")
	netstat := programs.Need(t, "netstat", "apt-get install net-tools")
	ipNetns := programs.Need(t, "ip", "apt-get install iproute2")
	wrappers := sharedDir(t)
	reporter(t, wrappers, "ss", ss)
	reporter(t, wrappers, "netstat", netstat)
	namespace := fmt.Sprintf("ccx-caps-%d", os.Getpid())
	out, err := exec.Command(ipNetns, "netns", "add", namespace).CombinedOutput()
	require.NoError(t, err, "%s", out)
	t.Cleanup(func() { exec.Command(ipNetns, "netns", "delete", namespace).Run() })

	for _, mode := range []struct {
		name string
		args []string
		keep string
	}{
		{"no kernel program, ss", nil, capNone},
		{"no kernel program, netstat", []string{"--source", "netstat"}, capNone},
		{"--refusals", []string{"--refusals"}, capNone},
		{"--clients.processes from the kernel's list", []string{"--clients.processes"}, capNone},
		{"--clients.processes walking /proc", []string{"--clients.processes", "--no-clients.processes.bpf"}, capWalk},
		{"--command", []string{"--command", filepath.Join(wrappers, "ss") + " -Htan"}, capNone},
		{"--command in another namespace, with --command.capabilities", []string{
			"--command", ipNetns + " netns exec " + namespace + " " + filepath.Join(wrappers, "ss") + " -Htan",
			"--command.capabilities", "CAP_SYS_ADMIN"}, capSysAdmin},
	} {
		for _, build := range []struct{ name, path string }{{"release build", plainBinary}, {"cgo build", binary}} {
			t.Run(mode.name+", "+build.name, func(t *testing.T) {
				if build.path == binary && binary == plainBinary {
					t.Skip("the cgo build is the one under -race: run the tests with -race, as the README's command does")
				}
				status := runForStatus(t, wrappers, append([]string{build.path}, mode.args...))
				for _, who := range []string{"exporter", "child"} {
					for _, set := range []string{"CapEff", "CapPrm", "CapAmb"} {
						assert.Equal(t, []string{mode.keep}, status[who+" "+set], "%s %s", who, set)
					}
					assert.Equal(t, []string{"1"}, status[who+" NoNewPrivs"], "%s no_new_privs", who)
				}
			})
		}
	}
}

// A --command that needs a capability the exporter drops at start (ip
// netns exec, without --command.capabilities) fails naming the flag that
// keeps it; with the flag, it reads the namespace's table.
func TestACommandRefusedACapabilityNamesTheFlagThatKeepsIt(t *testing.T) {
	programs.NeedRoot(t, "make a network namespace")
	ip := programs.Need(t, "ip", "apt-get install iproute2")
	programs.Need(t, "ss", "apt-get install iproute2")
	namespace := fmt.Sprintf("ccx-denied-%d", os.Getpid())
	out, err := exec.Command(ip, "netns", "add", namespace).CombinedOutput()
	require.NoError(t, err, "%s", out)
	t.Cleanup(func() { exec.Command(ip, "netns", "delete", namespace).Run() })
	command := ip + " netns exec " + namespace + " ss -Htan"

	res := exporter(t, t.TempDir(), "--once", "--command", command)
	assert.NotZero(t, res.exit)
	assert.Contains(t, res.stderr, "Operation not permitted")
	assert.Contains(t, res.stderr, "keep it with --command.capabilities")

	res = exporter(t, t.TempDir(), "--once", "--command", command, "--command.capabilities", "CAP_SYS_ADMIN")
	assert.Zero(t, res.exit, res.stderr)
	assert.NotContains(t, res.stderr, "--command.capabilities")
}

// A user other than root given CAP_BPF and CAP_PERFMON (systemd's
// AmbientCapabilities=) keeps none of them past the start, nor do the
// programs it runs.
func TestAnExporterGrantedCapabilitiesKeepsNoneOfThemOnceLoaded(t *testing.T) {
	ss := programs.Need(t, "ss", "apt-get install iproute2")
	wrappers := sharedDir(t)
	reporter(t, wrappers, "ss", ss)
	argv := append(programs.AsNobody(t, "bpf", "perfmon"), plainBinary, "--refusals")
	status := runForStatus(t, wrappers, argv)
	for _, who := range []string{"exporter", "child"} {
		for _, set := range []string{"CapEff", "CapPrm", "CapAmb"} {
			assert.Equal(t, []string{capNone}, status[who+" "+set], "%s %s", who, set)
		}
	}
}

// reporter writes dir/name, which reports the capabilities of its parent's
// every thread and its own on stderr, then runs real.
func reporter(t *testing.T, dir, name, real string) {
	t.Helper()
	script := fmt.Sprintf(`#!/bin/sh
status='^(Cap(Eff|Prm|Amb)|NoNewPrivs)'
parent=$(for f in /proc/$PPID/task/*/status; do grep -E "$status" "$f"; done | sort -u | tr -d '\t' | sed 's/^/exporter /' | tr '\n' ' ')
self=$(grep -E "$status" /proc/$$/status | tr -d '\t' | sed 's/^/child /' | tr '\n' ' ')
echo "$parent$self" >&2
exec %s "$@"
`, real)
	require.NoError(t, os.WriteFile(filepath.Join(dir, name), []byte(script), 0o755))
}

// runForStatus runs argv (the exporter) until its command has run, with the
// wrappers first in PATH, and reads what the wrapper reported: "exporter CapEff"
// (each thread's value, deduplicated) and "child CapEff" and the like.
func runForStatus(t *testing.T, wrappers string, argv []string) map[string][]string {
	t.Helper()
	dir := sharedDir(t)
	argv = append(slices.Clone(argv), "--web.listen-address="+freeAddr(t), "--textfile.directory="+dir, "--interval=100ms", "--sample.interval=0")
	p := start(t, append([]string{"env", "PATH=" + wrappers + ":" + os.Getenv("PATH")}, argv...)...)
	// On stderr, beside a table or none (another namespace's is empty).
	p.waitFor(t, "wrote to stderr", 1)
	_, err := p.stop(os.Interrupt)
	require.NoError(t, err)
	line := ""
	for _, l := range p.output() {
		if strings.Contains(l, "wrote to stderr") {
			line = l
			break
		}
	}
	status := map[string][]string{}
	for _, m := range regexp.MustCompile(`(exporter|child) (Cap[A-Za-z]+|NoNewPrivs):([0-9a-f]+)`).FindAllStringSubmatch(line, -1) {
		status[m[1]+" "+m[2]] = append(status[m[1]+" "+m[2]], m[3])
	}
	require.NotEmpty(t, status, "the wrapper's report in %q", line)
	return status
}

// sharedDir is a directory every user may use, the nobody user included.
func sharedDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "consul-conn-exporter-shared")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	require.NoError(t, os.Chmod(dir, 0o777))
	return dir
}

// --source events runs no program: the exporter's own threads hold
// nothing past the start, for both builds, as root and as a user given
// CAP_BPF and CAP_PERFMON; and the counts are read all the same.
func TestTheEventsKeepNoCapabilityOnceLoaded(t *testing.T) {
	programs.NeedRoot(t, "load the events' kernel programs")
	for _, run := range []struct {
		name string
		argv []string
	}{
		{"root, release build", []string{plainBinary}},
		{"root, cgo build", []string{binary}},
		{"nobody with CAP_BPF and CAP_PERFMON", append(programs.AsNobody(t, "bpf", "perfmon"), plainBinary)},
	} {
		t.Run(run.name, func(t *testing.T) {
			if run.argv[0] == binary && binary == plainBinary {
				t.Skip("the cgo build is the one under -race: run the tests with -race, as the README's command does")
			}
			addr := freeAddr(t)
			p := startServer(t, append(run.argv, "--source", "events", "--web.listen-address="+addr)...)
			pid := p.cmd.Process.Pid
			if len(run.argv) > 1 { // behind setpriv: the exporter is its exec'ed self
				require.Equal(t, mustAbs(t, plainBinary), exe(t, pid))
			}
			scrape(t, "http://"+addr+"/metrics")
			tasks, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/status", pid))
			require.NoError(t, err)
			require.NotEmpty(t, tasks)
			for _, task := range tasks {
				text, err := os.ReadFile(task)
				require.NoError(t, err)
				for _, want := range []string{"CapEff:\t" + capNone, "CapPrm:\t" + capNone, "CapAmb:\t" + capNone, "NoNewPrivs:\t1"} {
					assert.Contains(t, string(text), want, task)
				}
			}
		})
	}
}

// exe is the program pid runs.
func exe(t *testing.T, pid int) string {
	t.Helper()
	path, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	require.NoError(t, err)
	return path
}
