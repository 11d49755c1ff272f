package e2e

import (
	"bytes"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/consul-conn-exporter/consul-conn-exporter/internal/testkit/exposition"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/testkit/loopback"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/testkit/portopener"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/testkit/programs"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/textfile"
)

// soakFor bounds the soak test; CI runs it whole. SOAK_FOR=10m soaks
// longer (the sampling's own soak of the peaks issue).
var soakFor = func() time.Duration {
	if d, err := time.ParseDuration(os.Getenv("SOAK_FOR")); err == nil && d > 0 {
		return d
	}
	return 40 * time.Second
}()

// The long-running mode under a minute of load: the textfile and /metrics
// together at a fast interval, parallel scrapes, connections opened and
// closed under it, and a command that every seventh run hangs past its
// timeout. The file must always be whole, and nothing may grow: open files,
// goroutines, leftover children, memory.
func TestSoakLongRunningStaysFlat(t *testing.T) {
	for _, source := range soakSources {
		t.Run(source.name, func(t *testing.T) { soak(t, source.args) })
	}
}

// soakSources are the ways of reading the socket table the soak runs with.
var soakSources = []struct {
	name string
	args func(t *testing.T, dir string, port uint16) []string
}{
	{"ss, hanging every seventh run", func(t *testing.T, dir string, port uint16) []string {
		programs.Need(t, "ss", "apt-get install iproute2")
		// sleep's odd argument marks it, so that a leftover one can be found.
		script := filepath.Join(dir, "sometimes-hangs.sh")
		require.NoError(t, os.WriteFile(script, fmt.Appendf(nil, `n=$(( $(cat %[1]s/runs 2>/dev/null || echo 0) + 1 ))
echo $n > %[1]s/runs
if [ $((n %% 7)) -eq 0 ]; then sleep %[2]s; fi
exec ss -Htan state established state close-wait '( sport = :%[3]d )'
`, dir, soakMarker, port), 0o644))
		return []string{"--command", "sh " + script, "--command.timeout", "300ms"}
	}},
	{"the built-in netlink reader", func(*testing.T, string, uint16) []string {
		return []string{"--source", "netlink"}
	}},
}

const soakMarker = "29.0417"

func soak(t *testing.T, sourceArgs func(*testing.T, string, uint16) []string) {
	l := loopback.Listen(t, "127.0.0.1")
	work, dir := t.TempDir(), t.TempDir()
	addr := freeAddr(t)
	args := append([]string{"--textfile.directory", dir, "--web.listen-address", addr, "--port", port(l),
		"--interval", "100ms", "--sample.interval", "100ms"}, sourceArgs(t, work, l.Port())...)
	exporter := startServer(t, append([]string{plainBinary}, args...)...)
	pid := exporter.cmd.Process.Pid

	// The sampler keeps no connection open, so that it is not counted.
	sampler := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	goroutines := func() int {
		resp, err := sampler.Get("http://" + addr + "/metrics")
		require.NoError(t, err)
		return int(parseBody(t, resp)["go_goroutines"])
	}
	// atRest is the exporter with no scrape but the sampler's: the fewest
	// goroutines and open files of 30 samples, since its loop's collection
	// (with its goroutines and pipes) may be under way at any one of them.
	atRest := func() (leastGoroutines, leastFiles int) {
		leastGoroutines, leastFiles = 1<<30, 1<<30
		for range 30 {
			leastGoroutines, leastFiles = min(leastGoroutines, goroutines()), min(leastFiles, openFiles(t, pid))
			time.Sleep(50 * time.Millisecond) // sampling pace
		}
		return leastGoroutines, leastFiles
	}
	restGoroutines, restFiles := atRest()

	deadline := time.Now().Add(soakFor)
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	// Four scrapers back to back, each on a keep-alive connection.
	for range 4 {
		wg.Go(func() {
			client := &http.Client{Timeout: 5 * time.Second}
			defer client.CloseIdleConnections()
			for time.Now().Before(deadline) {
				resp, err := client.Get("http://" + addr + "/metrics")
				if err != nil {
					errs <- err
					return
				}
				var body bytes.Buffer
				_, err = body.ReadFrom(resp.Body)
				resp.Body.Close()
				if err == nil && !bytes.Contains(body.Bytes(), []byte("consul_conn_exporter_collect_success")) {
					err = fmt.Errorf("scrape without collect_success: %s", body.String())
				}
				if err != nil {
					errs <- err
					return
				}
			}
		})
	}
	// Connections come and go under it: a new batch each second.
	wg.Go(func() {
		var held []portopener.Pair
		for i := 0; time.Now().Before(deadline); i++ {
			pairs, err := l.Open(t.Context(), netip.MustParseAddr(fmt.Sprintf("127.0.0.%d", 130+i%5)), 20+i%30)
			if err != nil {
				errs <- err
				return
			}
			portopener.CloseAll(held)
			held = pairs
			time.Sleep(time.Second) // the pace of the load, not a synchronisation
		}
		portopener.CloseAll(held)
	})
	// The file is read as node_exporter would, as often as it can be.
	reads := 0
	wg.Go(func() {
		for time.Now().Before(deadline) {
			f, err := os.Open(filepath.Join(dir, textfile.FileName))
			if os.IsNotExist(err) {
				continue
			}
			if err == nil {
				var metrics map[string]float64
				metrics, err = exposition.Parse(f)
				f.Close()
				if _, ok := metrics["consul_conn_exporter_collect_success"]; err == nil && !ok {
					err = fmt.Errorf("a textfile without collect_success: %v", metrics)
				}
			}
			if err != nil {
				errs <- err
				return
			}
			reads++
		}
	})

	type sample struct{ rss, fds, goroutines, leftover int }
	var samples []sample
	for time.Now().Before(deadline) {
		time.Sleep(2 * time.Second) // sampling pace
		samples = append(samples, sample{rss: rssKiB(t, pid), fds: openFiles(t, pid), goroutines: goroutines(), leftover: markedSleeps(t, 2*time.Second)})
	}
	wg.Wait()
	// Load over, scrapers' connections closed: back at rest, a leak of one
	// goroutine or file per collection would show as hundreds more. A
	// couple may be started once, on first need, during the load.
	// On a busy machine the scrapers' connections and the last
	// collections may take a while to wind down: wait for the count to
	// settle, within a bound a leak would never meet.
	var afterGoroutines, afterFiles int
	settled := func() bool {
		afterGoroutines, afterFiles = atRest()
		return afterGoroutines <= restGoroutines+2 && afterFiles <= restFiles+2
	}
	if !assert.Eventually(t, settled, time.Minute, time.Second, "goroutines and open files back at rest") {
		t.Logf("at rest before the load: %d goroutines, %d files; after: %d, %d", restGoroutines, restFiles, afterGoroutines, afterFiles)
	}
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	log, err := exporter.stop(syscall.SIGTERM)
	require.NoError(t, err, "exit 0 on SIGTERM: %s", log)

	t.Logf("textfile reads: %d; at rest before and after (goroutines, files): %d %d, %d %d; samples (RSS KiB, fds, goroutines, sleeps alive past 2s): %v",
		reads, restGoroutines, restFiles, afterGoroutines, afterFiles, samples)
	assert.Greater(t, reads, 100)
	require.Greater(t, len(samples), 10)
	half := len(samples) / 2
	var peak int
	for _, s := range samples[2:half] {
		peak = max(peak, s.rss)
	}
	for _, s := range samples {
		// Measured by hand over 5 minutes: RSS flat at 19 MB. 8 MiB of slack
		// over the first half's peak covers the garbage collector's timing;
		// a leak of a few KiB per collection (400 here) would pass it.
		assert.LessOrEqual(t, s.rss, peak+8<<10, "RSS grew: %v", samples)
		assert.LessOrEqual(t, s.rss, 48<<10, "RSS beyond 48 MiB: %v", samples)
		assert.LessOrEqual(t, s.goroutines, 100, "goroutines: %v", samples)
		assert.LessOrEqual(t, s.fds, 64, "open files: %v", samples)
	}
	for _, s := range samples {
		// The hanging commands of the moment may be two (the collections'
		// and the samples' run apart), each killed at its 300 ms timeout:
		// none lives for seconds.
		assert.Zero(t, s.leftover, "hung commands left running past their timeout: %v", samples)
	}
	assert.Eventually(t, func() bool { return markedSleeps(t, 0) == 0 }, 10*time.Second, 10*time.Millisecond,
		"a hung command outlived the exporter")
	assert.NotContains(t, log, "level=WARN")
}

func rssKiB(t *testing.T, pid int) int {
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	require.NoError(t, err)
	for line := range strings.Lines(string(status)) {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			kib, err := strconv.Atoi(f[1])
			require.NoError(t, err)
			return kib
		}
	}
	t.Fatal("no VmRSS")
	return 0
}

func openFiles(t *testing.T, pid int) int {
	entries, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	require.NoError(t, err)
	return len(entries)
}

// markedSleeps counts the soak command's sleeps alive for longer than age,
// anywhere (an orphan is re-parented away from the exporter, so its
// children are not enough to look at).
func markedSleeps(t *testing.T, age time.Duration) int {
	procs, err := filepath.Glob("/proc/[0-9]*/cmdline")
	require.NoError(t, err)
	n := 0
	for _, p := range procs {
		text, err := os.ReadFile(p)
		if err != nil || !bytes.Equal(text, []byte("sleep\x00"+soakMarker+"\x00")) {
			continue
		}
		if pid, err := strconv.Atoi(filepath.Base(filepath.Dir(p))); err == nil {
			if d, alive := programs.AliveFor(pid); alive && d >= age {
				n++
			}
		}
	}
	return n
}
