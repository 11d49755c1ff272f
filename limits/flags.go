package limits

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/alecthomas/kingpin/v2"
)

// Flags are the limits as given on the command line.
type Flags struct {
	http, rpc string
	refresh   time.Duration
}

// AddFlags declares the limits' flags on app.
func AddFlags(app *kingpin.Application) *Flags {
	f := &Flags{}
	app.Flag("limit", "Consul's http_max_conns_per_client (0: no limit), or auto to read it from the agent (CONSUL_HTTP_ADDR, CONSUL_HTTP_TOKEN_FILE, ... as for the consul CLI; the token needs agent:read).").
		Default("200").StringVar(&f.http)
	app.Flag("rpc.limit", "Consul's rpc_max_conns_per_client for the --rpc.port group, or auto.").
		Default("100").StringVar(&f.rpc)
	app.Flag("limit.refresh", "How often an auto limit is read again, so that a consul reload shows.").
		Default("5m").DurationVar(&f.refresh)
	return f
}

// Source checks the flags and gives their limits for the watched ports.
func (f *Flags) Source(httpPorts, rpcPorts []uint16, logger *slog.Logger) (*Source, error) {
	http, err := ParseLimit(f.http)
	if err != nil {
		return nil, fmt.Errorf("--limit: %w", err)
	}
	rpc, err := ParseLimit(f.rpc)
	if err != nil {
		return nil, fmt.Errorf("--rpc.limit: %w", err)
	}
	if len(rpcPorts) == 0 {
		rpc = Limit{} // no RPC group: nothing to read or report
	}
	if f.refresh < time.Second {
		return nil, errors.New("--limit.refresh must be 1s or more: each refresh is a request to the agent")
	}
	return NewSource(http, rpc, httpPorts, rpcPorts, f.refresh, logger)
}
