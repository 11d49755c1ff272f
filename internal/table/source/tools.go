package source

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/consul-conn-exporter/consul-conn-exporter/internal/table/runner"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/table/sockdiag"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/table/socket"
	"golang.org/x/sys/unix"
)

// errNotInstalled is a tool that is not in PATH.
var errNotInstalled = errors.New("not in PATH")

// ss runs ss, filtered in the kernel to the server-side sockets wanted,
// with each socket's user and inode (-e), by which the agent's connections
// are told from sockets other users planted on its port:
//
//	ss -Htane state established state close-wait '( sport = :8500 )'
//
// falling back to the same without -H for iproute2 older than 4.13. Where
// no cgroup2 file system is mounted (a cgroup v1 host: older RHEL, Amazon
// Linux 2), ss -e looks each socket's cgroup up in the mount table again,
// and warns, per socket: there ss runs without -e, and gives no user (the
// collector says so). With client ports, the client sides of connections
// to them and their inodes, by which their programs are named, come from
// the built-in reader beside it: ss -p would print their programs at a
// cost that grows with the square of the sockets.
func ss(want Want, timeout time.Duration, logger *slog.Logger) (Source, error) {
	c, err := ssCommand(Want{Ports: want.Ports, States: want.States}, timeout, logger)
	switch {
	case err != nil:
		return nil, err // not a nil *Command in a non-nil Source
	case !want.processes():
		return c, nil
	}
	return withClientEnds{table: c, ends: sockdiag.New(nil, want.ClientPorts, socket.ClientEndStates, timeout)}, nil
}

// withClientEnds is a table joined with the client ends of local
// connections and their inodes, read apart (a program's name needs its
// client end, established or shut down on its side).
type withClientEnds struct {
	table Source
	ends  *sockdiag.Reader
}

func (w withClientEnds) String() string { return w.table.String() }

// Read reads the table, then the client ends. A dump of the client ends
// started over gives some twice, which are one: the ends are joined by
// their four-tuple.
func (w withClientEnds) Read(ctx context.Context, add func(socket.Socket), reset func()) error {
	if err := w.table.Read(ctx, add, reset); err != nil {
		return err
	}
	if err := w.ends.Read(ctx, add, func() {}); err != nil {
		return fmt.Errorf("reading the client ends of local connections: %w", err)
	}
	return nil
}

func ssCommand(want Want, timeout time.Duration, logger *slog.Logger) (*Command, error) {
	if len(want.Ports) == 0 {
		return nil, errors.New("no port to watch")
	}
	if _, err := exec.LookPath("ss"); err != nil {
		return nil, fmt.Errorf("ss: %w (install iproute2)", errNotInstalled)
	}
	options := "-tan"
	if cgroup2Mounted() {
		options += "e"
	}
	if why := ssTellsUses(); why != "" {
		logger.Info("ss tells no connection's use", "why", why)
	} else {
		options += "i" // each socket's tcp_info: its use
	}
	var filter []string
	for _, s := range want.States {
		filter = append(filter, "state", s.String())
	}
	// Past what the kernel filters, every port's rows, told apart by the
	// parser's reader (sockdiag.MaxFilteredPorts).
	if len(want.Ports) <= sockdiag.MaxFilteredPorts {
		filter = append(filter, "(")
		for i, p := range want.Ports {
			if i > 0 {
				filter = append(filter, "or")
			}
			filter = append(filter, "sport", "=", ":"+strconv.Itoa(int(p)))
		}
		filter = append(filter, ")")
	}
	r, err := runner.New(timeout,
		append([]string{"ss", "-H" + options[1:]}, filter...),
		append([]string{"ss", options}, filter...),
	)
	if err != nil {
		return nil, err
	}
	// ss drops the State column when its filter names one state.
	implied := socket.StateUnknown
	if len(want.States) == 1 {
		implied = want.States[0]
	}
	return NewCommand(r, implied, false, logger), nil
}

// ssTellsUses says why ss -i cannot tell each connection's use; "" where
// it can. Every ss prints the last data's times, but an iproute2 before
// 4.20 leaves out the bytes sent, and every ss leaves out a count of 0:
// there, a connection that sent nothing cannot be told from one whose ss
// does not say.
func ssTellsUses() string {
	if !kernelCountsBytesSent() {
		return "the kernel counts no connection's bytes sent (Linux 4.19 and later do), which ss then never prints"
	}
	out, err := exec.Command("ss", "-V").Output()
	if err != nil {
		return fmt.Sprintf("ss -V: %v", err)
	}
	if !ssSaysBytesSent(string(out)) {
		return fmt.Sprintf("ss before iproute2 4.20 prints no bytes sent (%s)", strings.TrimSpace(string(out)))
	}
	return ""
}

// kernelCountsBytesSent says whether this kernel's tcp_info has each
// connection's bytes sent (Linux 4.19 and later): ss prints them only
// where it does, and leaves a 0 out, so that elsewhere an answered
// connection would read as one not answered yet.
var kernelCountsBytesSent = sync.OnceValue(func() bool {
	var u unix.Utsname
	if unix.Uname(&u) != nil {
		return false
	}
	return releaseCountsBytesSent(unix.ByteSliceToString(u.Release[:]))
})

// releaseCountsBytesSent says whether a kernel of release (6.18.44-...)
// counts each connection's bytes sent.
func releaseCountsBytesSent(release string) bool {
	var major, minor int
	if _, err := fmt.Sscanf(release, "%d.%d", &major, &minor); err != nil {
		return false
	}
	return major > 4 || major == 4 && minor >= 19
}

// ssVersion is ss -V's: iproute2-6.1.0, or an older one's date,
// iproute2-ss190107.
var ssVersion = regexp.MustCompile(`iproute2-(?:ss(\d{6})|(\d+)\.(\d+))`)

// ssSaysBytesSent says whether the ss that printed version prints each
// socket's bytes sent (iproute2 4.20, 2018-12-31, and later).
func ssSaysBytesSent(version string) bool {
	m := ssVersion.FindStringSubmatch(version)
	switch {
	case m == nil:
		return false
	case m[1] != "":
		return m[1] >= "181231"
	}
	major, _ := strconv.Atoi(m[2])
	minor, _ := strconv.Atoi(m[3])
	return major > 4 || major == 4 && minor >= 20
}

// cgroup2Mounted says whether a cgroup2 file system is mounted, as ss
// finds it (in /proc/mounts): where it is not, or /proc cannot be read, ss
// -e costs a read of the mount table per socket.
func cgroup2Mounted() bool {
	mounts, err := os.ReadFile("/proc/self/mounts")
	if err != nil {
		return false
	}
	for line := range strings.Lines(string(mounts)) {
		if fields := strings.Fields(line); len(fields) > 2 && fields[2] == "cgroup2" {
			return true
		}
	}
	return false
}

// netstat runs netstat -taneW (whole addresses, each socket's user and
// inode), falling back to the same without -W for busybox builds, whose
// -e prints neither: the parser then does the filtering. Each socket's
// inode names its program from /proc: netstat -p would do it too, with a
// cache of 211 buckets that grows with the square of the sockets, as ss -p
// does.
func netstat(want Want, timeout time.Duration, logger *slog.Logger) (*Command, error) {
	if _, err := exec.LookPath("netstat"); err != nil {
		return nil, fmt.Errorf("netstat: %w (install net-tools)", errNotInstalled)
	}
	r, err := runner.New(timeout, []string{"netstat", "-taneW"}, []string{"netstat", "-tane"})
	if err != nil {
		return nil, err
	}
	return NewCommand(r, socket.StateUnknown, want.processes(), logger), nil
}
