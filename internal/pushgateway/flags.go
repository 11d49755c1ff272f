package pushgateway

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"time"

	"github.com/alecthomas/kingpin/v2"
	"github.com/prometheus/common/config"

	"github.com/consul-conn-exporter/consul-conn-exporter/internal/bodylimit"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/say"
)

// Flags say where to push.
type Flags struct {
	url, job, instance, configFile string
	timeout                        time.Duration
}

// AddFlags declares the push flags on app; job is the default job label.
func AddFlags(app *kingpin.Application, job string) *Flags {
	f := &Flags{}
	app.Flag("push.url", "Pushgateway to push to, e.g. https://pushgateway:9091.").StringVar(&f.url)
	app.Flag("push.config.file", "Prometheus HTTP client configuration for the push (basic_auth with password_file, authorization with credentials_file, tls_config, proxy_url), so that no secret is in argv.").
		StringVar(&f.configFile)
	app.Flag("push.job", "Pushgateway job label.").Default(job).StringVar(&f.job)
	app.Flag("push.instance", "Pushgateway instance label (default: the hostname).").StringVar(&f.instance)
	app.Flag("push.timeout", "Give up a push after this long.").Default("10s").DurationVar(&f.timeout)
	return f
}

// Enabled is a push URL given.
func (f *Flags) Enabled() bool { return f.url != "" }

// Pusher is the pusher the flags describe, nil without --push.url. A bad
// configuration file is an error now, not at the first push.
func (f *Flags) Pusher(logger *slog.Logger) (*Pusher, error) {
	if f.url == "" {
		if f.configFile != "" {
			return nil, errors.New("--push.config.file needs --push.url")
		}
		return nil, nil
	}
	if f.timeout <= 0 {
		return nil, errors.New("--push.timeout must be positive")
	}
	instance := f.instance
	if instance == "" {
		var err error
		if instance, err = os.Hostname(); err != nil {
			return nil, fmt.Errorf("no hostname for the push instance (%v): pass --push.instance", err)
		}
	}
	client, auth, err := f.client()
	if err != nil {
		return nil, fmt.Errorf("--push.config.file %s: %s", f.configFile, say.Fold(err.Error()))
	}
	guard(client)
	p, err := New(f.url, f.job, instance, f.timeout, client)
	if err != nil {
		return nil, err
	}
	if p.username != "" {
		if auth {
			return nil, errors.New("credentials in both --push.url and --push.config.file: keep them in the file")
		}
		logger.Warn("the password in --push.url can be read by every local user (ps, /proc/PID/cmdline): put it in a password_file named by --push.config.file")
	}
	return p, nil
}

// client is the HTTP client of the configuration file (a plain one
// without), and whether it authenticates.
func (f *Flags) client() (*http.Client, bool, error) {
	if f.configFile == "" {
		return &http.Client{}, false, nil
	}
	cfg, _, err := config.LoadHTTPConfigFile(f.configFile)
	if err != nil {
		return nil, false, err
	}
	if err := cfg.Validate(); err != nil {
		return nil, false, err
	}
	// Secrets are read at each push; make sure now that they can be.
	for _, file := range []string{basicAuthFile(cfg), credentialsFile(cfg)} {
		if _, err := os.ReadFile(file); file != "" && err != nil {
			return nil, false, err
		}
	}
	client, err := config.NewClientFromConfig(*cfg, "consul_conn_exporter")
	if err != nil {
		return nil, false, err
	}
	return client, cfg.BasicAuth != nil || cfg.Authorization != nil || cfg.OAuth2 != nil, nil
}

// maxAnswer bounds what is read of the gateway's answer: an error page is
// quoted clipped anyway.
const maxAnswer = 64 << 10

// guard makes client fail a push that is redirected, rather than follow
// it with a GET that pushes nothing and succeeds, and bounds the answers
// it reads.
func guard(client *http.Client) {
	client.CheckRedirect = func(req *http.Request, _ []*http.Request) error {
		return fmt.Errorf("the Pushgateway redirects to %s: set --push.url to where it redirects", req.URL.Redacted())
	}
	transport := client.Transport
	if transport == nil {
		transport = http.DefaultTransport
	}
	client.Transport = bodylimit.Transport(transport, maxAnswer)
}

func basicAuthFile(cfg *config.HTTPClientConfig) string {
	if cfg.BasicAuth == nil {
		return ""
	}
	return cfg.BasicAuth.PasswordFile
}

func credentialsFile(cfg *config.HTTPClientConfig) string {
	if cfg.Authorization == nil {
		return ""
	}
	return cfg.Authorization.CredentialsFile
}
