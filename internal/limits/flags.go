package limits

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/alecthomas/kingpin/v2"
)

// Flags are the limits as given on the command line, and how to reach the
// agent for auto ones.
type Flags struct {
	http, rpc, grpc string
	refresh         time.Duration
	agent           Agent
}

// Agent is how to reach the agent where the flags say (consul_exporter's
// names); what they leave empty comes from Consul's environment
// (CONSUL_HTTP_ADDR, CONSUL_CACERT, ...), as for the consul CLI.
type Agent struct {
	Server, CAFile, CertFile, KeyFile, ServerName, TokenFile string
	Insecure                                                 bool
}

// AddFlags declares the limits' flags on app.
func AddFlags(app *kingpin.Application) *Flags {
	f := &Flags{}
	app.Flag("limit", "Consul's http_max_conns_per_client (0: no limit), or auto to read it from the agent (CONSUL_HTTP_ADDR, CONSUL_HTTP_TOKEN_FILE, ... as for the consul CLI; the token needs agent:read).").
		Default("200").StringVar(&f.http)
	app.Flag("rpc.limit", "Consul's rpc_max_conns_per_client for the --rpc.port group, or auto.").
		Default("100").StringVar(&f.rpc)
	app.Flag("grpc.limit", "Consul's grpc_max_conns_per_client, or auto (none before Consul 2.0.3).").
		Default("100").StringVar(&f.grpc)
	app.Flag("limit.refresh", "How often an auto limit is read again, so that a consul reload shows.").
		Default("5m").DurationVar(&f.refresh)
	a := &f.agent
	app.Flag("consul.server", "The agent's HTTP API for --limit auto: host:port, http:// or https:// (default: CONSUL_HTTP_ADDR, else 127.0.0.1:8500).").
		PlaceHolder("127.0.0.1:8500").StringVar(&a.Server)
	app.Flag("consul.ca-file", "CA certificate file to verify the agent's TLS certificate (default: CONSUL_CACERT).").StringVar(&a.CAFile)
	app.Flag("consul.cert-file", "Client certificate file for the agent's TLS (default: CONSUL_CLIENT_CERT).").StringVar(&a.CertFile)
	app.Flag("consul.key-file", "Client key file for the agent's TLS (default: CONSUL_CLIENT_KEY).").StringVar(&a.KeyFile)
	app.Flag("consul.server-name", "Name to verify in the agent's TLS certificate (default: CONSUL_TLS_SERVER_NAME, else the host of --consul.server).").StringVar(&a.ServerName)
	app.Flag("consul.insecure", "Do not verify the agent's TLS certificate (default: CONSUL_HTTP_SSL_VERIFY=false).").BoolVar(&a.Insecure)
	app.Flag("consul.token-file", "File holding an ACL token with agent:read, read at each refresh (default: CONSUL_HTTP_TOKEN_FILE, or CONSUL_HTTP_TOKEN).").StringVar(&a.TokenFile)
	return f
}

// Server is the agent's address: --consul.server, else CONSUL_HTTP_ADDR,
// else "" (127.0.0.1:8500).
func (f *Flags) Server() string {
	if f.agent.Server != "" {
		return f.agent.Server
	}
	return os.Getenv("CONSUL_HTTP_ADDR")
}

// Config checks the flags and gives their limits for the watched ports.
func (f *Flags) Config(httpPorts, rpcPorts, grpcPorts []uint16) (Config, error) {
	http, err := ParseLimit(f.http)
	if err != nil {
		return Config{}, fmt.Errorf("--limit: %w", err)
	}
	rpc, err := ParseLimit(f.rpc)
	if err != nil {
		return Config{}, fmt.Errorf("--rpc.limit: %w", err)
	}
	grpc, err := ParseLimit(f.grpc)
	if err != nil {
		return Config{}, fmt.Errorf("--grpc.limit: %w", err)
	}
	// A limiter with no group: nothing to read or report.
	if len(rpcPorts) == 0 {
		rpc = Limit{}
	}
	if len(grpcPorts) == 0 {
		grpc = Limit{}
	}
	if f.refresh < time.Second {
		return Config{}, errors.New("--limit.refresh must be 1s or more: each refresh is a request to the agent")
	}
	config := Config{HTTP: http, RPC: rpc, GRPC: grpc, HTTPPorts: httpPorts, RPCPorts: rpcPorts, GRPCPorts: grpcPorts, Refresh: f.refresh, Agent: f.agent}
	// A client made now says what is wrong with its TLS files, before
	// anything starts.
	if _, err := NewSource(config, Reach{}, slog.New(slog.DiscardHandler)); err != nil {
		return Config{}, err
	}
	return config, nil
}
