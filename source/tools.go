package source

import (
	"errors"
	"fmt"
	"log/slog"
	"os/exec"
	"strconv"
	"time"

	"github.com/consul-conn-exporter/consul-conn-exporter/runner"
	"github.com/consul-conn-exporter/consul-conn-exporter/socket"
)

// errNotInstalled is a tool that is not in PATH.
var errNotInstalled = errors.New("not in PATH")

// ss runs ss, filtered in the kernel to the server-side sockets wanted:
//
//	ss -Htan state established state close-wait '( sport = :8500 )'
//
// falling back to the same without -H for iproute2 older than 4.13. With
// client ports, the table also has the client side of connections to them
// (dport) and each socket's inode (-e), by which its program is named from
// /proc: ss -p would do it too, at a cost that grows with the square of the
// sockets.
func ss(want Want, timeout time.Duration, logger *slog.Logger) (*Command, error) {
	if len(want.Ports) == 0 {
		return nil, errors.New("no port to watch")
	}
	if _, err := exec.LookPath("ss"); err != nil {
		return nil, fmt.Errorf("ss: %w (install iproute2)", errNotInstalled)
	}
	options := "-tan"
	if want.processes() {
		options = "-tane"
	}
	var filter []string
	for _, s := range want.States {
		filter = append(filter, "state", s.String())
	}
	filter = append(filter, "(")
	for i, p := range want.Ports {
		if i > 0 {
			filter = append(filter, "or")
		}
		filter = append(filter, "sport", "=", ":"+strconv.Itoa(int(p)))
	}
	for _, p := range want.ClientPorts {
		filter = append(filter, "or", "dport", "=", ":"+strconv.Itoa(int(p)))
	}
	filter = append(filter, ")")
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
	return NewCommand(r, implied, want.processes(), logger), nil
}

// netstat runs netstat -tanW (whole addresses), falling back to the same
// without -W for busybox builds; the parser then does the filtering. With
// client ports, each socket's inode too (-e), by which its program is named
// from /proc: netstat -p would do it too, with a cache of 211 buckets that
// grows with the square of the sockets, as ss -p does.
func netstat(want Want, timeout time.Duration, logger *slog.Logger) (*Command, error) {
	if _, err := exec.LookPath("netstat"); err != nil {
		return nil, fmt.Errorf("netstat: %w (install net-tools)", errNotInstalled)
	}
	options := "-tan"
	if want.processes() {
		options = "-tane"
	}
	r, err := runner.New(timeout, []string{"netstat", options + "W"}, []string{"netstat", options})
	if err != nil {
		return nil, err
	}
	return NewCommand(r, socket.StateUnknown, want.processes(), logger), nil
}
