package collector

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/consul-conn-exporter/consul-conn-exporter/parser"
	"github.com/consul-conn-exporter/consul-conn-exporter/runner"
)

// FuzzTable feeds arbitrary output to the table reader, seeded with every
// real capture in fixtures/. Run for longer with
// go test -run '^$' -fuzz FuzzTable -fuzztime 30s ./collector
func FuzzTable(f *testing.F) {
	captures, err := filepath.Glob("../fixtures/*.txt")
	if err != nil || len(captures) == 0 {
		f.Fatalf("no captures in fixtures/: %v", err)
	}
	for _, name := range captures {
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
		all := newCounts(defaultConfig)
		table := newTable(parser.Parser{}, all.add)
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
		counts := all.groups[0]
		if table.socketRows == 0 && strings.TrimSpace(output) != "" {
			t.Fatalf("success on output with no socket row: %q", output)
		}
		total := 0
		for _, port := range defaultConfig.Ports() {
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
	text, err := os.ReadFile("../fixtures/ss-iproute2-6.1.0_Htan_mixed.txt")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimRight(string(text), "\n"), "\n")
	table := newTable(parser.Parser{}, newCounts(defaultConfig).add)
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

// BenchmarkCollect is one whole collection of a 100,000-row table: the
// command's output streamed through go-cmd, parsed and counted.
func BenchmarkCollect(b *testing.B) {
	text, err := os.ReadFile("../fixtures/ss-iproute2-6.1.0_Htan-established-close-wait-sport_mixed.txt")
	if err != nil {
		b.Fatal(err)
	}
	rows := strings.SplitAfter(strings.TrimRight(string(text), "\n")+"\n", "\n")
	var table strings.Builder
	for i := 0; i < 100_000; i++ {
		table.WriteString(rows[i%(len(rows)-1)])
	}
	capture := filepath.Join(b.TempDir(), "table.txt")
	if err := os.WriteFile(capture, []byte(table.String()), 0o644); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if res := collect(b, defaultConfig, "cat", capture); res.Err != nil {
			b.Fatal(res.Err)
		}
	}
}
