// Package pushgateway pushes metrics to a Prometheus Pushgateway, replacing
// the group of this job and instance on every push.
package pushgateway

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/push"

	"github.com/consul-conn-exporter/consul-conn-exporter/internal/say"
)

// Pusher pushes to one gateway under one job and instance.
type Pusher struct {
	url                string // without credentials, so that no message shows them
	username, password string // from the URL
	job, instance      string
	timeout            time.Duration
	client             *http.Client
}

// New pushes to rawURL (http://[user:password@]host:port[/path]) with the
// grouping key job and instance, through client.
func New(rawURL, job, instance string, timeout time.Duration, client *http.Client) (*Pusher, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		// url's own error repeats the whole URL, credentials and all.
		return nil, errors.New("--push.url is not a URL; want http://host:port")
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("--push.url %s: want http://host:port or https://host:port", u.Redacted())
	}
	if u.RawQuery != "" || u.Fragment != "" || u.ForceQuery {
		// Never said: a query is where a token is put.
		u.RawQuery, u.Fragment, u.ForceQuery = "", "", false
		return nil, fmt.Errorf("--push.url %s: a query or fragment would be pushed to as part of the path; give the gateway's address alone (a token goes in --push.config.file)", u.Redacted())
	}
	if job == "" || instance == "" {
		return nil, errors.New("--push.job and --push.instance must not be empty")
	}
	p := &Pusher{job: job, instance: instance, timeout: timeout, client: client}
	if u.User != nil {
		p.username = u.User.Username()
		p.password, _ = u.User.Password()
		u.User = nil
	}
	p.url = u.String()
	return p, nil
}

// String is the gateway's URL without credentials.
func (p *Pusher) String() string { return p.url }

// Push replaces the group's metrics with what g gathers (an HTTP PUT),
// giving up after the timeout.
func (p *Pusher) Push(g prometheus.Gatherer) error {
	ctx, cancel := context.WithTimeout(context.Background(), p.timeout)
	defer cancel()
	pusher := push.New(p.url, p.job).Grouping("instance", p.instance).Gatherer(g).Client(p.client)
	if p.username != "" {
		pusher = pusher.BasicAuth(p.username, p.password)
	}
	if err := pusher.PushContext(ctx); err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("push to %s: no answer within %s (--push.timeout)", p.url, p.timeout)
		}
		// A gateway's error page quoted whole would flood the log.
		return fmt.Errorf("push to %s: %s", p.url, say.Clip(err.Error(), 300))
	}
	return nil
}
