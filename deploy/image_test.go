package deploy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/consul-conn-exporter/consul-conn-exporter/internal/testkit/exposition"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/testkit/loopback"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/testkit/programs"
)

// The scratch image is built for real with buildah (no daemon), and its
// entrypoint run by chroot into its root: no /proc, no ss, no shell, no
// libc inside, against live sockets on the host.
func TestScratchImageCountsWithNothingButTheBinary(t *testing.T) {
	programs.NeedRoot(t, "build an image with buildah and chroot into it")
	buildah := programs.Need(t, "buildah", "apt-get install buildah")
	chroot := programs.Need(t, "chroot", "apt-get install coreutils")

	work := t.TempDir()
	contextDir := filepath.Join(work, "context")
	require.NoError(t, os.Mkdir(contextDir, 0o755))
	build := exec.Command("bash", "build.sh", filepath.Join(contextDir, "consul_conn_exporter"))
	out, err := build.CombinedOutput()
	require.NoError(t, err, "%s", out)
	storage := []string{"--storage-driver", "vfs", "--root", filepath.Join(work, "storage"), "--runroot", filepath.Join(work, "run")}
	run := func(args ...string) string {
		t.Helper()
		out, err := exec.Command(buildah, append(storage, args...)...).Output()
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			t.Fatalf("buildah %s: %v: %s", strings.Join(args, " "), err, exit.Stderr)
		}
		require.NoError(t, err)
		return strings.TrimSpace(string(out))
	}
	t.Cleanup(func() { exec.Command(buildah, append(storage, "rm", "--all")...).Run() })
	const created = "2026-12-05T10:00:00Z"
	run("bud", "--quiet", "-f", "container/Containerfile.netlink", "-t", "consul-conn-exporter:netlink",
		"--build-arg", "VERSION=9.8.7", "--build-arg", "REVISION=0123abc", "--build-arg", "CREATED="+created, contextDir)
	container := run("from", "consul-conn-exporter:netlink")
	root := run("mount", container)
	t.Cleanup(func() { exec.Command(buildah, append(storage, "umount", container)...).Run() })

	var files []string
	require.NoError(t, filepath.Walk(root, func(path string, info os.FileInfo, err error) error {
		if err == nil && !info.IsDir() {
			files = append(files, strings.TrimPrefix(path, root))
		}
		return err
	}))
	assert.Equal(t, []string{"/consul_conn_exporter"}, files, "nothing in the image but the binary")

	var config struct {
		OCIv1 struct {
			Config struct {
				Entrypoint, Cmd []string
				Labels          map[string]string
			}
		}
	}
	require.NoError(t, json.Unmarshal([]byte(run("inspect", "--type", "image", "consul-conn-exporter:netlink")), &config))
	maps.DeleteFunc(config.OCIv1.Config.Labels, func(k, _ string) bool { return !strings.HasPrefix(k, "org.opencontainers.") }) // buildah's own
	assert.Equal(t, map[string]string{
		"org.opencontainers.image.title":       "consul-conn-exporter",
		"org.opencontainers.image.description": "Counts the connections Consul holds open, per client IP, against its per-client limits, for Prometheus",
		"org.opencontainers.image.source":      "https://github.com/consul-conn-exporter/consul-conn-exporter",
		"org.opencontainers.image.licenses":    "Apache-2.0",
		"org.opencontainers.image.version":     "9.8.7",
		"org.opencontainers.image.revision":    "0123abc",
		"org.opencontainers.image.created":     created,
	}, config.OCIv1.Config.Labels, "the OCI labels, read back")
	entrypoint := config.OCIv1.Config.Entrypoint
	assert.Equal(t, []string{"/consul_conn_exporter", "--source", "netlink"}, entrypoint)
	size := run("images", "--format", "{{.Size}}", "consul-conn-exporter:netlink")
	t.Logf("image size: %s", size)

	// Live connections on the host, counted from inside the image's root.
	l := loopback.Listen(t, "127.0.0.1")
	loopback.Open(t, l, "127.0.0.77", 17)
	probe, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := probe.Addr().String()
	probe.Close()
	argv := append(append([]string{"--userspec=65534:65534", root}, entrypoint...),
		"--web.listen-address", addr, "--port", fmt.Sprint(l.Port()))
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	exporter := exec.CommandContext(ctx, chroot, argv...)
	exporter.Env = []string{} // an empty PATH too
	require.NoError(t, exporter.Start())
	t.Cleanup(func() { exporter.Process.Kill(); exporter.Wait() })

	var metrics map[string]float64
	require.Eventually(t, func() bool {
		resp, err := http.Get("http://" + addr + "/metrics")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		metrics, err = exposition.Parse(resp.Body)
		require.NoError(t, err)
		return true
	}, 20*time.Second, 20*time.Millisecond, "the image's exporter serves /metrics")
	assert.Equal(t, 1.0, metrics["consul_conn_exporter_collect_success"])
	assert.Equal(t, 17.0, metrics[fmt.Sprintf(`consul_open_http_connections{port="%d"}`, l.Port())])
	assert.Equal(t, 17.0, metrics[`consul_open_http_connections_per_client{client="127.0.0.77"}`])
}
