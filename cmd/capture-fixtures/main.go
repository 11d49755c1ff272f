// Command capture-fixtures opens a known mix of sockets on loopback inside a
// fresh network namespace, runs every ss and netstat variant installed, and
// writes each table to fixtures/ with the counts the scenario was built to
// give beside it. Run it as root from the repository root:
//
//	go run ./cmd/capture-fixtures
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/consul-conn-exporter/consul-conn-exporter/internal/testkit/captures"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/testkit/portopener"
)

// Ports the captures are made for: two watched ports and one that is not.
const (
	httpPort  = 8500
	httpsPort = 8501
	otherPort = 9000
)

// ending says how a connection is left when the tables are captured.
type ending int

const (
	open         ending = iota // ESTABLISHED at both ends, nothing sent: silent
	asked                      // open, a request read and not answered: waiting
	answered                   // open, a request answered a clock tick later: idle
	clientClosed               // server CLOSE-WAIT, client FIN-WAIT-2
	serverFirst                // server closed, then client: server TIME-WAIT
	clientFirst                // client closed, then server: client TIME-WAIT
	serverHalf                 // server closed only: server FIN-WAIT-2, client CLOSE-WAIT
)

type group struct {
	listener string // address the server listens on, with " dev NAME" if bound to a device
	from     string // client source address
	n        int
	ending   ending
}

// scenario is the mix every capture sees. Its expected counts follow from
// the endings alone: only `open` and `clientClosed` leave a server-side
// socket in a counted state (ESTABLISHED, CLOSE-WAIT).
var scenario = []group{
	{"127.0.0.1:8500", "127.0.0.10", 5, open},
	{"127.0.0.1:8500", "127.0.0.11", 3, asked},
	{"127.0.0.1:8500", "127.0.0.12", 2, clientClosed},
	{"127.0.0.1:8500", "127.0.0.13", 2, serverFirst},
	{"127.0.0.1:8500", "127.0.0.14", 2, clientFirst},
	{"127.0.0.1:8500", "127.0.0.15", 2, serverHalf},
	{"[::ffff:127.0.0.2]:8500", "127.0.0.10", 4, answered}, // same client, over a dual-stack socket
	{"[::1]:8500", "::1", 3, open},
	{"127.0.0.3:8500 dev lo", "127.0.0.11", 1, open}, // printed with a zone: 127.0.0.3%lo:8500
	{"[::1]:8501 dev lo", "::1", 1, open},            // [::1]%lo:8501
	{"127.0.0.1:8501", "127.0.0.11", 2, asked},
	{"127.0.0.1:8501", "127.0.0.12", 1, clientClosed},
	{"127.0.0.1:9000", "127.0.0.10", 2, open},
}

// variant is one command whose table becomes a fixture.
type variant struct {
	tool   string   // "ss", "netstat" or "busybox"
	label  string   // the flags, for the file name
	args   []string // after the tool
	states []string // the states the command's filter keeps; nil: all
	// wantError is part of the error the parser must give: the table is
	// not one it can count from.
	wantError string
	// uses: the table has each socket's tcp_info (ss -i), which tells
	// its use.
	uses bool
}

var narrowFilter = []string{"(", "sport", "=", ":8500", "or", "sport", "=", ":8501", ")"}

var variants = []variant{
	{"ss", "Htan-established-close-wait-sport", append([]string{"-Htan", "state", "established", "state", "close-wait"}, narrowFilter...), []string{"established", "close-wait"}, "", false},
	{"ss", "tan-established-close-wait-sport", append([]string{"-tan", "state", "established", "state", "close-wait"}, narrowFilter...), []string{"established", "close-wait"}, "", false},
	{"ss", "Htn-established-sport", append([]string{"-Htn", "state", "established"}, narrowFilter...), []string{"established"}, "", false},
	{"ss", "tan", []string{"-tan"}, nil, "", false},
	{"ss", "Htan", []string{"-Htan"}, nil, "", false},
	{"ss", "tuan", []string{"-tuan"}, nil, "", false},
	{"ss", "tanp", []string{"-tanp"}, nil, "", false},
	{"ss", "tanoei", []string{"-tanoei"}, nil, "", true},
	{"ss", "Htanei-established-close-wait-sport", append([]string{"-Htanei", "state", "established", "state", "close-wait"}, narrowFilter...), []string{"established", "close-wait"}, "", true},
	{"ss", "s-summary", []string{"-s"}, nil, "not a socket row", false},
	{"netstat", "tan", []string{"-tan"}, nil, "", false},
	{"netstat", "tanW", []string{"-tanW"}, nil, "", false},
	{"netstat", "tanpW", []string{"-tanpW"}, nil, "", false},
	{"netstat", "taneW", []string{"-taneW"}, nil, "", false},
	{"busybox", "tan", []string{"netstat", "-tan"}, nil, "", false},
}

func main() {
	out := flag.String("out", "testdata/captures", "directory to write the captures to")
	inNetns := flag.Bool("in-netns", false, "internal: already inside the fresh network namespace")
	flag.Parse()
	if err := run(*out, *inNetns); err != nil {
		fmt.Fprintln(os.Stderr, "capture-fixtures:", err)
		os.Exit(1)
	}
}

func run(out string, inNetns bool) error {
	if !inNetns {
		// A fresh namespace holds only the scenario's sockets, so the broad
		// captures (ss -tan) show nothing of the machine they were made on.
		self, err := os.Executable()
		if err != nil {
			return err
		}
		cmd := exec.Command("unshare", "--net", "--", self, "-in-netns", "-out", out)
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("unshare --net (needs root): %w", err)
		}
		return nil
	}
	if err := exec.Command("ip", "link", "set", "lo", "up").Run(); err != nil {
		return fmt.Errorf("ip link set lo up: %w", err)
	}
	ctx := context.Background()
	pairs, listeners, err := build(ctx)
	if err != nil {
		return err
	}
	defer portopener.CloseAll(pairs)
	for _, l := range listeners {
		defer l.Close()
	}
	// A UDP socket on the watched port: a row that must never be counted.
	udp, err := net.ListenPacket("udp", "127.0.0.1:8500")
	if err != nil {
		return err
	}
	defer udp.Close()

	if err := waitForStates(); err != nil {
		return err
	}
	written := 0
	for _, v := range variants {
		if _, err := exec.LookPath(v.tool); err != nil {
			fmt.Fprintf(os.Stderr, "skipping %s %s: %v\n", v.tool, v.label, err)
			continue
		}
		if err := capture(out, v); err != nil {
			return err
		}
		written++
	}
	fmt.Printf("wrote %d captures to %s\n", written, out)
	return nil
}

// build opens the scenario and leaves every connection in its ending.
func build(ctx context.Context) ([]portopener.Pair, []*portopener.Listener, error) {
	listeners := map[string]*portopener.Listener{}
	var all []portopener.Pair
	var order []*portopener.Listener
	for _, g := range scenario {
		l, ok := listeners[g.listener]
		if !ok {
			var err error
			if addr, device, bound := strings.Cut(g.listener, " dev "); bound {
				l, err = portopener.ListenOnDevice(netip.MustParseAddrPort(addr), device)
			} else {
				l, err = portopener.Listen(netip.MustParseAddrPort(g.listener))
			}
			if err != nil {
				return nil, nil, err
			}
			listeners[g.listener] = l
			order = append(order, l)
		}
		pairs, err := l.Open(ctx, netip.MustParseAddr(g.from), g.n)
		if err != nil {
			return nil, nil, err
		}
		for _, p := range pairs {
			if err := end(p, g.ending); err != nil {
				return nil, nil, err
			}
		}
		all = append(all, pairs...)
	}
	return all, order, nil
}

// end closes the ends of p in the order that leaves the ending's states.
// Each read of EOF proves the other side's FIN has arrived.
func end(p portopener.Pair, e ending) error {
	eof := func(c net.Conn) error {
		if _, err := c.Read(make([]byte, 1)); err != io.EOF {
			return fmt.Errorf("want EOF from %s, got %v", c.RemoteAddr(), err)
		}
		return nil
	}
	request := func() error {
		if _, err := io.WriteString(p.Client, "GET / HTTP/1.1\r\n\r\n"); err != nil {
			return err
		}
		_, err := io.ReadFull(p.Server, make([]byte, 18))
		return err
	}
	switch e {
	case open:
		return nil
	case asked:
		return request()
	case answered:
		if err := request(); err != nil {
			return err
		}
		// The answer a few of the kernel's clock ticks after the request
		// (4 ms at 250 Hz, 10 at 100): its tcp_info tells which came
		// last, and the use is certain.
		time.Sleep(25 * time.Millisecond)
		if _, err := io.WriteString(p.Server, "HTTP/1.1 200 OK\r\n\r\n"); err != nil {
			return err
		}
		_, err := io.ReadFull(p.Client, make([]byte, 19))
		return err
	case clientClosed:
		return errors.Join(p.Client.Close(), eof(p.Server))
	case serverFirst:
		return errors.Join(p.Server.Close(), eof(p.Client), p.Client.Close())
	case clientFirst:
		return errors.Join(p.Client.Close(), eof(p.Server), p.Server.Close())
	case serverHalf:
		return errors.Join(p.Server.Close(), eof(p.Client))
	}
	return fmt.Errorf("unknown ending %d", e)
}

func listenPort(g group) uint16 {
	addr, _, _ := strings.Cut(g.listener, " dev ")
	return netip.MustParseAddrPort(addr).Port()
}

// countedState is the state the server-side socket of each ending is
// counted in; the other endings leave nothing counted.
var countedState = map[ending]string{open: "established", asked: "established", answered: "established", clientClosed: "close-wait"}

// use is what each counted ending's server end is doing.
var use = map[ending]string{open: "silent", asked: "waiting", answered: "idle", clientClosed: "half_closed"}

// serverState and clientState are where each ending leaves the two sockets,
// as /proc/net/tcp numbers them; 0 means the socket is gone.
var serverState = map[ending]int{open: 0x01, asked: 0x01, answered: 0x01, clientClosed: 0x08, serverFirst: 0x06, clientFirst: 0, serverHalf: 0x05}
var clientState = map[ending]int{open: 0x01, asked: 0x01, answered: 0x01, clientClosed: 0x05, serverFirst: 0, clientFirst: 0x06, serverHalf: 0x08}

// waitForStates reads the kernel's own table (/proc/net/tcp, another path
// than the netlink one ss uses) until every socket of the scenario is in the
// state its ending leaves it in. The last ACKs of a close cross loopback
// after close() returns, so this is the only way to know the table is final.
// socketKey is a count of /proc/net/tcp rows: sockets of a scenario port,
// on one side (local: server, !local: client), in one state.
type socketKey struct {
	local bool
	port  uint16
	state int
}

func waitForStates() error {
	want := map[socketKey]int{}
	listening := map[string]bool{}
	for _, g := range scenario {
		port := listenPort(g)
		if !listening[g.listener] {
			listening[g.listener] = true
			want[socketKey{true, port, 0x0A}]++ // LISTEN
		}
		if s := serverState[g.ending]; s != 0 {
			want[socketKey{true, port, s}] += g.n
		}
		if s := clientState[g.ending]; s != 0 {
			want[socketKey{false, port, s}] += g.n
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		got, err := procStates()
		if err != nil {
			return err
		}
		if maps.Equal(got, want) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("sockets did not settle: /proc/net/tcp has %v, want %v", got, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func procStates() (map[socketKey]int, error) {
	scenarioPort := func(p uint64) bool { return p == httpPort || p == httpsPort || p == otherPort }
	got := map[socketKey]int{}
	for _, name := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		f, err := os.Open(name)
		if err != nil {
			return nil, err
		}
		sc := bufio.NewScanner(f)
		sc.Scan() // header
		for sc.Scan() {
			// sl local_address rem_address st ...: addresses are HEX:PORT
			fields := strings.Fields(sc.Text())
			local, _ := strconv.ParseUint(fields[1][strings.IndexByte(fields[1], ':')+1:], 16, 16)
			peer, _ := strconv.ParseUint(fields[2][strings.IndexByte(fields[2], ':')+1:], 16, 16)
			state, _ := strconv.ParseUint(fields[3], 16, 8)
			if scenarioPort(local) {
				got[socketKey{true, uint16(local), int(state)}]++
			}
			if scenarioPort(peer) {
				got[socketKey{false, uint16(peer), int(state)}]++
			}
		}
		f.Close()
		if err := sc.Err(); err != nil {
			return nil, err
		}
	}
	return got, nil
}

func capture(out string, v variant) error {
	cmd := exec.Command(v.tool, v.args...)
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s %s: %v: %s", v.tool, strings.Join(v.args, " "), err, stderr.String())
	}
	version, err := toolVersion(v.tool)
	if err != nil {
		return err
	}
	tool := v.tool
	if tool == "busybox" {
		tool = "netstat"
	}
	name := fmt.Sprintf("%s-%s_%s_mixed", tool, version, v.label)
	if err := os.WriteFile(filepath.Join(out, name+".txt"), []byte(stdout.String()), 0o644); err != nil {
		return err
	}
	exp := expect(v)
	body, err := json.MarshalIndent(exp, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(out, name+".expected.json"), append(body, '\n'), 0o644)
}

// expect is what the scenario was built to give for ports 8500 and 8501 in
// the default states, as far as the variant's own filter lets it show.
func expect(v variant) captures.Expected {
	counted := []string{"established", "close-wait"}
	exp := captures.Expected{
		Command: append([]string{v.tool}, v.args...),
		Ports:   []uint16{httpPort, httpsPort},
		States:  counted,
	}
	if v.wantError != "" {
		exp.Error = v.wantError
		return exp
	}
	exp.Total, exp.ByState, exp.PerClient, exp.ByUse = map[string]int{}, map[string]map[string]int{}, map[string]int{}, map[string]int{}
	if len(v.states) == 1 {
		exp.ImpliedState = v.states[0]
	}
	for _, port := range exp.Ports {
		key := strconv.Itoa(int(port))
		exp.Total[key] = 0
		exp.ByState[key] = map[string]int{}
		for _, s := range counted {
			exp.ByState[key][s] = 0
		}
	}
	for _, g := range scenario {
		port := listenPort(g)
		state := countedState[g.ending]
		if port == otherPort || state == "" || (v.states != nil && !slices.Contains(v.states, state)) {
			continue
		}
		key := strconv.Itoa(int(port))
		exp.Total[key] += g.n
		exp.ByState[key][state] += g.n
		exp.PerClient[netip.MustParseAddr(g.from).String()] += g.n
		if v.uses {
			exp.ByUse[use[g.ending]] += g.n
		} else {
			exp.ByUse["unknown"] += g.n // no tcp_info: no use told
		}
	}
	for _, n := range exp.PerClient {
		exp.MaxPerClient = max(exp.MaxPerClient, n)
	}
	return exp
}

var versionPattern = regexp.MustCompile(`(iproute2-[0-9][^ ,\n]*|net-tools [0-9][^ ,\n]*|BusyBox v[0-9][^ ,\n]*)`)

func toolVersion(tool string) (string, error) {
	var cmd *exec.Cmd
	switch tool {
	case "ss":
		cmd = exec.Command("ss", "-V")
	case "netstat":
		cmd = exec.Command("netstat", "-V")
	default:
		cmd = exec.Command("busybox")
	}
	text, _ := cmd.CombinedOutput() // busybox with no applet exits 1
	match := versionPattern.FindString(string(text))
	if match == "" {
		return "", fmt.Errorf("%s: no version in %q", tool, text)
	}
	return strings.ToLower(strings.NewReplacer(" v", "-", " ", "-").Replace(match)), nil
}
