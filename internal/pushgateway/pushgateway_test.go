package pushgateway

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/consul-conn-exporter/consul-conn-exporter/internal/testkit/exposition"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func gatherer(*testing.T) prometheus.Gatherer {
	return exposition.Gauge("consul_open_http_connections", 42)
}

func TestPushPutsTheGroupWithBasicAuthFromTheURL(t *testing.T) {
	var method, path, user, pass, body string
	gateway := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		method, path = r.Method, r.URL.Path
		user, pass, _ = r.BasicAuth()
		b, _ := io.ReadAll(r.Body)
		body = string(b)
		w.WriteHeader(http.StatusOK)
	}))
	defer gateway.Close()
	url := strings.Replace(gateway.URL, "http://", "http://ops:s3cret@", 1)
	p, err := New(url, "consul_conn_exporter", "host1", time.Second, gateway.Client())
	require.NoError(t, err)
	assert.NotContains(t, p.String(), "s3cret", "no message shows the password")

	require.NoError(t, p.Push(gatherer(t)))
	assert.Equal(t, http.MethodPut, method, "PUT replaces the whole group")
	assert.Equal(t, "/metrics/job/consul_conn_exporter/instance/host1", path)
	assert.Equal(t, "ops", user)
	assert.Equal(t, "s3cret", pass)
	assert.NotEmpty(t, body)
}

func TestPushFailureIsOneClippedLine(t *testing.T) {
	gateway := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, strings.Repeat("no\n", 1000), http.StatusInternalServerError)
	}))
	defer gateway.Close()
	p, err := New(gateway.URL, "job", "host1", time.Second, gateway.Client())
	require.NoError(t, err)
	err = p.Push(gatherer(t))
	require.ErrorContains(t, err, "push to "+gateway.URL)
	assert.NotContains(t, err.Error(), "\n")
	assert.Less(t, len(err.Error()), 400)
}

func TestSilentGatewayTimesOut(t *testing.T) {
	release := make(chan struct{})
	gateway := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { <-release }))
	defer gateway.Close()
	defer close(release)
	p, err := New(gateway.URL, "job", "host1", 100*time.Millisecond, gateway.Client())
	require.NoError(t, err)
	assert.ErrorContains(t, p.Push(gatherer(t)), "no answer within 100ms (--push.timeout)")
}

func TestBadURLsAreRefusedWithoutShowingCredentials(t *testing.T) {
	for _, url := range []string{"ftp://gw:9091", "gw:9091", "http://", "http://u:pw@%zz"} {
		_, err := New(url, "job", "host1", time.Second, http.DefaultClient)
		require.Error(t, err, url)
		assert.NotContains(t, err.Error(), "pw", url)
	}
	_, err := New("http://gw:9091", "", "host1", time.Second, http.DefaultClient)
	assert.ErrorContains(t, err, "must not be empty")
}

// A query (or fragment) would be pushed to as part of the path
// (...?x=1/metrics/job/...): refused, and never quoted, a token being
// what a query holds.
func TestAQueryInTheURLIsRefusedWithoutShowingIt(t *testing.T) {
	for _, url := range []string{"http://gw:9091/?token=s3cret", "https://u:pw@gw:9091/prefix?token=s3cret", "http://gw:9091/#s3cret", "http://gw:9091/?"} {
		_, err := New(url, "job", "host1", time.Second, http.DefaultClient)
		require.ErrorContains(t, err, "a query or fragment would be pushed to as part of the path", url)
		assert.NotContains(t, err.Error(), "s3cret", url)
		assert.NotContains(t, err.Error(), "pw", url)
	}
}

func TestARedirectedPushFails(t *testing.T) {
	var methods []string
	mux := http.NewServeMux()
	mux.HandleFunc("/metrics/", func(w http.ResponseWriter, r *http.Request) {
		methods = append(methods, r.Method)
		http.Redirect(w, r, "/elsewhere"+r.URL.Path, http.StatusMovedPermanently)
	})
	mux.HandleFunc("/elsewhere/", func(w http.ResponseWriter, r *http.Request) {
		methods = append(methods, r.Method)
		w.WriteHeader(http.StatusOK)
	})
	gateway := httptest.NewServer(mux)
	defer gateway.Close()
	client := &http.Client{}
	guard(client)
	p, err := New(gateway.URL, "job", "host1", time.Second, client)
	require.NoError(t, err)
	err = p.Push(gatherer(t))
	require.ErrorContains(t, err, "redirects to")
	assert.Equal(t, []string{http.MethodPut}, methods, "no GET that pushes nothing")
}

func TestAHugeErrorPageIsNotReadWhole(t *testing.T) {
	var written int64
	gateway := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusInternalServerError)
		chunk := []byte(strings.Repeat("e", 64<<10))
		defer func() { w.(http.Flusher).Flush() }()
		for range 4096 { // 256 MiB, unless the client stops reading
			n, err := w.Write(chunk)
			written += int64(n)
			if err != nil {
				return
			}
		}
	}))
	client := &http.Client{}
	guard(client)
	p, err := New(gateway.URL, "job", "host1", 10*time.Second, client)
	require.NoError(t, err)
	err = p.Push(gatherer(t))
	require.ErrorContains(t, err, "500")
	assert.Less(t, len(err.Error()), 400)
	gateway.Close() // waits for the handler, whose writes fail once the client hangs up
	assert.Less(t, written, int64(32<<20), "the client stopped reading long before 256 MiB")
}
