// Package bodylimit bounds what the exporter reads of a server's answer, so
// that a server (or a proxy in front of one) that answers with hundreds of
// megabytes cannot take the exporter's memory with it.
package bodylimit

import (
	"fmt"
	"io"
	"net/http"
)

// Transport is next with every response body cut at limit bytes: a read
// past it fails, naming the limit.
func Transport(next http.RoundTripper, limit int64) http.RoundTripper {
	return roundTripper{next: next, limit: limit}
}

type roundTripper struct {
	next  http.RoundTripper
	limit int64
}

func (rt roundTripper) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := rt.next.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	resp.Body = &body{ReadCloser: resp.Body, left: rt.limit, limit: rt.limit, host: req.URL.Host}
	return resp, nil
}

type body struct {
	io.ReadCloser
	left, limit int64
	host        string
}

func (b *body) Read(p []byte) (int, error) {
	if b.left <= 0 {
		// One byte more tells a body of exactly limit bytes from a longer one.
		if n, _ := b.ReadCloser.Read(make([]byte, 1)); n == 0 {
			return 0, io.EOF
		}
		return 0, fmt.Errorf("the answer of %s is longer than %d bytes: not read further", b.host, b.limit)
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.ReadCloser.Read(p)
	b.left -= int64(n)
	return n, err
}
