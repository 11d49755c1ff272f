package parser_test

import (
	"os"
	"strings"
	"testing"

	"github.com/consul-conn-exporter/consul-conn-exporter/internal/testkit/captures"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/consul-conn-exporter/consul-conn-exporter/internal/table/parser"
)

// manyLines repeats the lines of a real capture to n lines: the table of a
// host with n sockets, in the mix of forms (IPv4, IPv6, v4-mapped, zones,
// every state) the capture has.
func manyLines(tb testing.TB, capture string, n int) []string {
	tb.Helper()
	text, err := os.ReadFile(captures.Path(capture))
	require.NoError(tb, err)
	rows := strings.Split(strings.TrimRight(string(text), "\n"), "\n")
	lines := make([]string, n)
	for i := range lines {
		lines[i] = rows[i%len(rows)]
	}
	return lines
}

var benchCaptures = []string{
	"ss-iproute2-6.1.0_Htan_mixed.txt",
	"netstat-net-tools-2.10_tanW_mixed.txt",
}

func TestParseLineDoesNotAllocate(t *testing.T) {
	for _, capture := range benchCaptures {
		lines := manyLines(t, capture, 1000)
		allocs := testing.AllocsPerRun(10, func() {
			for _, line := range lines {
				parser.Parser{}.ParseLine(line)
			}
		})
		assert.Zero(t, allocs, "%s: allocations per 1000 lines", capture)
	}
}

func BenchmarkParseLine(b *testing.B) {
	for _, capture := range benchCaptures {
		b.Run(strings.SplitN(capture, "_", 2)[0], func(b *testing.B) {
			lines := manyLines(b, capture, 100_000)
			b.ReportAllocs()
			for b.Loop() {
				for _, line := range lines {
					parser.Parser{}.ParseLine(line)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(lines)), "ns/line")
		})
	}
}
