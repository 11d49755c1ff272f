package bodylimit

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestBodiesAreCutAtTheLimit(t *testing.T) {
	server := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, strings.Repeat("x", len(r.URL.Path)-1))
	}))
	defer server.Close()
	client := &http.Client{Transport: Transport(http.DefaultTransport, 10)}
	get := func(n int) (string, error) {
		resp, err := client.Get(server.URL + "/" + strings.Repeat("a", n))
		require.NoError(t, err)
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return string(b), err
	}
	body, err := get(10)
	assert.NoError(t, err, "exactly the limit")
	assert.Len(t, body, 10)
	body, err = get(1 << 20)
	assert.ErrorContains(t, err, "is longer than 10 bytes")
	assert.Len(t, body, 10)
}
