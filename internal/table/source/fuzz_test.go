package source

import (
	"os"
	"strings"
	"testing"

	"github.com/consul-conn-exporter/consul-conn-exporter/internal/testkit/captures"

	"github.com/consul-conn-exporter/consul-conn-exporter/internal/table/parser"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/table/runner"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/table/socket"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/tally"
)

// FuzzTable feeds arbitrary output to the table reader, seeded with every
// real capture in testdata/captures/. Run for longer with
// go test -run '^$' -fuzz FuzzTable -fuzztime 30s ./source
var (
	ports  = []uint16{8500, 8501}
	states = []socket.State{socket.StateEstablished, socket.StateCloseWait}
)

func FuzzTable(f *testing.F) {
	all, err := captures.All()
	if err != nil || len(all) == 0 {
		f.Fatalf("no captures in testdata/captures: %v", err)
	}
	for _, name := range all {
		text, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		// The head of each capture has every kind of its lines; whole
		// captures make each run, and the minimising of finds, slow.
		head := strings.Join(strings.SplitAfterN(string(text), "\n", 25)[:min(24, strings.Count(string(text), "\n"))], "")
		f.Add(head, false)
		f.Add(head, true)
	}
	f.Fuzz(func(t *testing.T, output string, stderr bool) {
		counts := tally.New(ports, states)
		table := newTable(parser.Parser{}, counts.Add, true)
		lines := strings.Split(output, "\n")
		for _, line := range lines {
			table.read(line)
		}
		var errText []string
		if stderr {
			errText = []string{"netstat: no support for `AF INET (tcp)' on this system."}
		}
		if err := table.check(runner.Output{Lines: len(lines), Stderr: errText}); err != nil {
			return
		}
		if table.socketRows == 0 && strings.TrimSpace(output) != "" {
			t.Fatalf("success on output with no socket row: %q", output)
		}
		total := 0
		for _, port := range ports {
			total += counts.Total(port)
		}
		if total > len(lines) {
			t.Fatalf("counted %d connections in %d lines", total, len(lines))
		}
		if most := counts.MaxPerClient(); most > total || most < 0 {
			t.Fatalf("max per client %d of a total of %d", most, total)
		}
	})
}

func TestTableReadsWithoutAllocating(t *testing.T) {
	text, err := os.ReadFile(captures.Path("ss-iproute2-6.1.0_Htan_mixed.txt"))
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimRight(string(text), "\n"), "\n")
	table := newTable(parser.Parser{}, tally.New(ports, states).Add, true)
	for _, line := range lines { // the clients' map entries are made once
		table.read(line)
	}
	if allocs := testing.AllocsPerRun(10, func() {
		for _, line := range lines {
			table.read(line)
		}
	}); allocs != 0 {
		t.Fatalf("%v allocations per %d lines", allocs, len(lines))
	}
}
