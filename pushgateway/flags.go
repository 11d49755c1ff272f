package pushgateway

import (
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/alecthomas/kingpin/v2"
)

// Flags say where to push.
type Flags struct {
	url, job, instance string
	timeout            time.Duration
}

// AddFlags declares the push flags on app; job is the default job label.
func AddFlags(app *kingpin.Application, job string) *Flags {
	f := &Flags{}
	app.Flag("push.url", "Pushgateway to push to, e.g. http://pushgateway:9091 (user:password@ for basic auth).").StringVar(&f.url)
	app.Flag("push.job", "Pushgateway job label.").Default(job).StringVar(&f.job)
	app.Flag("push.instance", "Pushgateway instance label (default: the hostname).").StringVar(&f.instance)
	app.Flag("push.timeout", "Give up a push after this long.").Default("10s").DurationVar(&f.timeout)
	return f
}

// Pusher is the pusher the flags describe, nil without --push.url.
func (f *Flags) Pusher() (*Pusher, error) {
	if f.url == "" {
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
	return New(f.url, f.job, instance, f.timeout)
}

// Enabled is a push URL given.
func (f *Flags) Enabled() bool { return f.url != "" }
