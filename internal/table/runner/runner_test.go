package runner

import (
	"context"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/consul-conn-exporter/consul-conn-exporter/internal/testkit/programs"
)

func collect(t *testing.T, r *Runner) ([]string, Output, error) {
	t.Helper()
	var lines []string
	out, err := r.Run(context.Background(), func(line string) { lines = append(lines, line) })
	return lines, out, err
}

func TestRunStreamsEveryLineInOrder(t *testing.T) {
	programs.NotShort(t, "starts a program")
	r, err := New(10*time.Second, []string{"seq", "1", "20000"})
	require.NoError(t, err)
	lines, out, err := collect(t, r)
	require.NoError(t, err)
	require.Len(t, lines, 20000)
	assert.Equal(t, "1", lines[0])
	assert.Equal(t, "20000", lines[19999])
	assert.Equal(t, 20000, out.Lines)
}

func TestRunFailsOnNonZeroExitWithStderr(t *testing.T) {
	programs.NotShort(t, "starts a program")
	r, err := New(10*time.Second, []string{"ls", "/no/such/dir"})
	require.NoError(t, err)
	_, _, err = collect(t, r)
	var exit *ExitError
	require.ErrorAs(t, err, &exit)
	assert.Equal(t, 2, exit.Code)
	assert.Contains(t, err.Error(), "/no/such/dir")
	assert.NotContains(t, err.Error(), "\n")
}

func TestRunFailsWhenCommandIsMissing(t *testing.T) {
	programs.NotShort(t, "starts a program")
	r, err := New(10*time.Second, []string{"no-such-command-for-consul-conn-exporter"})
	require.NoError(t, err)
	_, _, err = collect(t, r)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "cannot run no-such-command-for-consul-conn-exporter")
}

func TestRunKillsWholeProcessGroupAtTimeout(t *testing.T) {
	programs.NotShort(t, "starts a program")
	// The child ignores SIGTERM, as does the grandchild it leaves holding
	// stdout: only a SIGKILL to the whole group ends them.
	r, err := New(300*time.Millisecond, []string{"sh", "-c", `trap "" TERM; sleep 120 & echo $!; wait`})
	require.NoError(t, err)
	var (
		lines []string
		done  = make(chan error)
	)
	go func() {
		_, err := r.Run(context.Background(), func(line string) { lines = append(lines, line) })
		done <- err
	}()
	select {
	case err = <-done:
	case <-time.After(60 * time.Second): // far past the timeout: the kill did not happen
		t.Fatal("Run still waiting on the command a minute after its 300ms timeout")
	}
	require.Error(t, err)
	assert.Contains(t, err.Error(), "did not finish within 300ms")
	require.Len(t, lines, 1, "the grandchild's pid")
	pid, err := strconv.Atoi(lines[0])
	require.NoError(t, err)
	// SIGKILL is delivered at once but a process takes a moment to die.
	assert.Eventually(t, func() bool { return !programs.Alive(pid) }, 10*time.Second, 10*time.Millisecond,
		"grandchild %d outlived the timeout", pid)
}

func TestParseRunsNoShell(t *testing.T) {
	programs.NotShort(t, "starts a program")
	marker := filepath.Join(t.TempDir(), "marker")
	r, err := Parse(`echo 'a b' ; touch `+marker+` $(touch `+marker+`) | touch `+marker, 10*time.Second)
	require.NoError(t, err)
	lines, _, err := collect(t, r)
	require.NoError(t, err)
	assert.Equal(t, []string{"a b ; touch " + marker + " $(touch " + marker + ") | touch " + marker}, lines)
	assert.NoFileExists(t, marker)
}

func TestParseRejectsEmptyAndUnbalancedCommands(t *testing.T) {
	for _, line := range []string{"", "   ", `ss "unclosed`} {
		_, err := Parse(line, time.Second)
		assert.Error(t, err, "%q", line)
	}
}

func TestRunFallsBackOnceToPlainerFormWhenOptionRejected(t *testing.T) {
	programs.NotShort(t, "starts a program")
	// Debian's busybox netstat has no -W: the real case of an old tool
	// refusing a newer flag, as iproute2 before 4.13 refuses ss -H.
	busybox := programs.Need(t, "busybox", "apt-get install busybox")
	r, err := New(10*time.Second, []string{busybox, "netstat", "-tanW"}, []string{busybox, "netstat", "-tan"})
	require.NoError(t, err)
	lines, _, err := collect(t, r)
	require.NoError(t, err)
	assert.Contains(t, lines[0], "Active Internet connections")
	assert.Equal(t, []string{busybox, "netstat", "-tan"}, r.Argv(), "the plainer form is kept for later runs")
}

func TestRunFailsWhenKilledBySignal(t *testing.T) {
	programs.NotShort(t, "starts a program")
	r, err := New(10*time.Second, []string{"sh", "-c", "kill -KILL $$"})
	require.NoError(t, err)
	_, _, err = collect(t, r)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "did not complete: signal: killed")
}

func TestRunFailsOnALineTooLongToBufferAndSaysSo(t *testing.T) {
	programs.NotShort(t, "starts a program")
	// A line past go-cmd's 16 KiB line buffer: an error, never a line cut
	// in two and read as two.
	r, err := New(10*time.Second, []string{"head", "-c", "40000", "/dev/zero"})
	require.NoError(t, err)
	_, _, err = collect(t, r)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "printed a line longer than 16384 bytes")
}

// Every way of giving up on a command takes what it left running with it.
func TestGivingUpKillsWhatTheCommandLeftRunning(t *testing.T) {
	programs.NotShort(t, "starts a program")
	for _, tc := range []struct{ name, script, err string }{
		// The script exits 0 but its background child keeps stdout open.
		{"wait delay", `sleep 30 & echo $!; exit 0`, "left a process holding its output open"},
		{"line too long", `sleep 30 >/dev/null 2>&1 & echo $!; head -c 40000 /dev/zero`, "printed a line longer than"},
		{"non-zero exit", `sleep 30 >/dev/null 2>&1 & echo $!; exit 3`, "exited with status 3"},
		{"timeout", `trap "" TERM; sleep 30 >/dev/null 2>&1 & echo $!; sleep 30`, "did not finish within"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := New(2*time.Second, []string{"sh", "-c", tc.script})
			require.NoError(t, err)
			lines, _, err := collect(t, r)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.err)
			require.NotEmpty(t, lines)
			pid, err := strconv.Atoi(lines[0])
			require.NoError(t, err, "the background child's pid")
			assert.Eventually(t, func() bool { return !programs.Alive(pid) }, 10*time.Second, 10*time.Millisecond,
				"background child %d outlived the collection", pid)
		})
	}
}

func TestCRLFLinesReadTheSameHoweverTheyAreWritten(t *testing.T) {
	programs.NotShort(t, "starts a program")
	r, err := New(10*time.Second, []string{"printf", `a\r\nbb\r\nccc\r\ndddd\n`})
	require.NoError(t, err)
	lines, _, err := collect(t, r)
	require.NoError(t, err)
	assert.Equal(t, []string{"a", "bb", "ccc", "dddd"}, lines)
}

func TestCommandsRunInTheCLocale(t *testing.T) {
	programs.NotShort(t, "starts a program")
	t.Setenv("LANGUAGE", "de")
	t.Setenv("LC_ALL", "de_DE.UTF-8")
	r, err := New(10*time.Second, []string{"sh", "-c", "echo $LC_ALL$LANGUAGE"})
	require.NoError(t, err)
	lines, _, err := collect(t, r)
	require.NoError(t, err)
	assert.Equal(t, []string{"C"}, lines)
}
