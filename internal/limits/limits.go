// Package limits knows Consul's per-client connection limits, given as
// numbers or read from the agent (/v1/agent/self), and re-read so that a
// `consul reload` shows.
//
// A read that fails never holds up or fails a collection: the last value
// read stays, and before the first good read there is no value at all,
// not a guessed default.
package limits

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-version"
	"golang.org/x/sys/unix"

	"github.com/consul-conn-exporter/consul-conn-exporter/internal/bodylimit"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/say"
)

// Limit is one configured limit: a number, or auto (read from the agent).
type Limit struct {
	N    int
	Auto bool
}

// ParseLimit reads "auto" or a number of connections, 0 for none (as in
// Consul's configuration).
func ParseLimit(s string) (Limit, error) {
	if s == "auto" {
		return Limit{Auto: true}, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 {
		return Limit{}, fmt.Errorf("%q is neither a number of connections (0: no limit) nor auto", s)
	}
	return Limit{N: n}, nil
}

// Snapshot is what is known of the limits at one moment.
type Snapshot struct {
	// HTTP, RPC and GRPC are the per-client limits: 0 where there is
	// none, or where it is not known (auto, and no read has worked: ReadOK
	// false).
	HTTP, RPC, GRPC int
	// Auto is set when a limit is read from the agent; then ReadOK says
	// whether the last read worked and ReadErr why not.
	Auto    bool
	ReadOK  bool
	ReadErr error
	// Took is how long the last read took.
	Took time.Duration
	// TooManyConnections is a last read the agent answered with 429: this
	// host's own address is at the agent's HTTP limit.
	TooManyConnections bool
	// Notes say, one each, what the reads found that the counts cannot
	// show: a port the agent serves that is not watched (its connections
	// there are not counted), a limiter the agent's version does not have.
	Notes []string
	// TLSPorts are the watched ports the agent serves HTTPS on, as the
	// last read said, where the HTTP limit is read from it; ReadAt is when
	// the last read that worked began (CLOCK_MONOTONIC, ns; 0 before one).
	TLSPorts []uint16
	ReadAt   uint64
}

// errNotRead is an auto limit no read has been made for yet.
var errNotRead = errors.New("the limits have not been read from the Consul agent yet")

// Err is why the last read of the agent did not work, nil where it did, or
// where no limit is read from it.
func (s Snapshot) Err() error {
	switch {
	case !s.Auto || s.ReadOK:
		return nil
	case s.ReadErr != nil:
		return s.ReadErr
	}
	return errNotRead
}

// Source gives the limits, reading the agent where a limit is auto.
type Source struct {
	http, rpc, grpc                Limit
	httpPorts, rpcPorts, grpcPorts []uint16
	refresh, readTimeout           time.Duration
	// agent is how to reach the agent, nil when no limit is auto. A client
	// is made from it at each read, so that a rotated token file is read.
	agent  *api.Config
	logger *slog.Logger

	reach Reach

	first     sync.Once
	soon      chan struct{} // ReadSoon's
	mu        sync.Mutex
	snapshot  Snapshot
	readState say.Tracker // logged once per change
	warned    map[string]bool
}

// Config is the limits the flags give, for the watched ports (a warning
// names a port the agent serves that is not among them), and how to reach
// the agent for auto ones.
type Config struct {
	HTTP, RPC, GRPC                Limit
	HTTPPorts, RPCPorts, GRPCPorts []uint16
	Refresh                        time.Duration
	Agent                          Agent
}

// Reach is where the reads of the agent go, and whom they tell of their
// connections; either may be nil.
type Reach struct {
	// At says which of the agent's addresses is its own listener's: the
	// reads go there, and nowhere where none is, or where the listeners
	// have not been judged yet (whatever else answers there, another
	// user's server on the name's other address, or at Consul's default
	// one, does not give the limit). Nil: the name, as given.
	At func() (netip.AddrPort, bool)
	// Own is told of each of the exporter's connections to the agent,
	// which the kernel's events then never count.
	Own OwnConnections
}

// NewSource gives config's limits, reading auto ones from the agent that
// Consul's standard environment names (CONSUL_HTTP_ADDR,
// CONSUL_HTTP_TOKEN(_FILE), CONSUL_CACERT, ...), as far as reach goes.
func NewSource(limits Config, reach Reach, logger *slog.Logger) (*Source, error) {
	http, rpc, httpPorts, refresh, agent := limits.HTTP, limits.RPC, limits.HTTPPorts, limits.Refresh, limits.Agent
	s := &Source{
		http: http, rpc: rpc, grpc: limits.GRPC, httpPorts: httpPorts, rpcPorts: limits.RPCPorts, grpcPorts: limits.GRPCPorts, reach: reach,
		refresh: refresh, readTimeout: min(refresh, 5*time.Second), logger: logger,
		warned:   map[string]bool{},
		soon:     make(chan struct{}, 1),
		snapshot: Snapshot{HTTP: http.N, RPC: rpc.N, GRPC: limits.GRPC.N, Auto: http.Auto || rpc.Auto || limits.GRPC.Auto},
	}
	if !s.snapshot.Auto {
		return s, nil
	}
	// Not pooled: no idle connection of ours holds one of the agent's
	// per-client slots between reads.
	config := api.DefaultNonPooledConfig()
	if os.Getenv(api.HTTPAddrEnvName) == "" && len(httpPorts) > 0 {
		// Consul's default client_addr at the first watched HTTP port, as
		// the listeners take it: not the api package's 8500, where the
		// agent is watched on another port.
		config.Address = net.JoinHostPort("127.0.0.1", strconv.Itoa(int(httpPorts[0])))
	}
	agent.over(config)
	config.Transport.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		conn, err := s.dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return &writeFirst{Conn: conn, written: make(chan struct{})}, nil
	}
	client, err := api.NewHttpClient(config.Transport, config.TLSConfig)
	if err != nil {
		return nil, fmt.Errorf("consul client for --limit auto: %w", err)
	}
	client.Timeout = s.readTimeout
	client.Transport = bodylimit.Transport(client.Transport, maxAnswer)
	config.HttpClient = client
	s.agent = config
	return s, nil
}

// OwnConnections are told of each of the exporter's connections to the
// agent, by its socket, before it connects: the kernel's events (--source
// events) never count them, whatever source address the kernel picks.
type OwnConnections interface {
	Own(fd int) error
}

// errNoAgent is a read not made: no address of the agent's is known to be
// its own listener's.
var errNoAgent = errors.New("no listener of the agent's is known at its address (the listeners' warning or error says why): not read from whatever answers there")

// dialer is how the api package dials (its DefaultNonPooledConfig's).
var dialer = net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}

// dial connects to the agent: where the exporter's own connections are to
// be told of (Reach.Own), a TCP socket is told of before it connects.
func (s *Source) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	if at := s.reach.At; at != nil && strings.HasPrefix(network, "tcp") {
		agent, judged := at()
		if !judged || !agent.IsValid() {
			return nil, errNoAgent
		}
		addr = agent.String()
	}
	own := s.reach.Own
	if own == nil || !strings.HasPrefix(network, "tcp") {
		return dialer.DialContext(ctx, network, addr)
	}
	d := dialer
	d.Control = func(_, _ string, raw syscall.RawConn) error {
		var err error
		if cerr := raw.Control(func(fd uintptr) { err = own.Own(int(fd)) }); cerr != nil {
			return cerr
		}
		return err
	}
	return d.DialContext(ctx, network, addr)
}

// over puts what the flags say over what the environment said in config:
// a flag given wins.
func (a Agent) over(config *api.Config) {
	for _, f := range []struct {
		to   *string
		flag string
	}{{&config.Address, a.Server}, {&config.TLSConfig.CAFile, a.CAFile}, {&config.TLSConfig.CertFile, a.CertFile},
		{&config.TLSConfig.KeyFile, a.KeyFile}, {&config.TLSConfig.Address, a.ServerName}, {&config.TokenFile, a.TokenFile}} {
		if f.flag != "" {
			*f.to = f.flag
		}
	}
	if a.TokenFile != "" {
		config.Token = "" // the file given wins over CONSUL_HTTP_TOKEN
	}
	if a.Insecure {
		config.TLSConfig.InsecureSkipVerify = true
	}
}

// maxAnswer bounds the agent's answer: /v1/agent/self is a few KiB.
const maxAnswer = 1 << 20

// Snapshot is the limits as last known; the agent is read first if it
// has not been yet, so that a single collection says its limit.
func (s *Source) Snapshot() Snapshot {
	s.firstRead()
	s.mu.Lock()
	defer s.mu.Unlock()
	snap := s.snapshot
	snap.Notes = slices.Clone(snap.Notes)
	snap.TLSPorts = slices.Clone(snap.TLSPorts)
	return snap
}

// ReadSoon has Run read the agent now, rather than at the next refresh:
// for what waits on a read made after it.
func (s *Source) ReadSoon() {
	select {
	case s.soon <- struct{}{}:
	default: // one is asked for already
	}
}

// Run reads the agent now (unless a snapshot has) and every refresh until
// ctx is done; with no auto limit it returns at once. After a failed read
// it tries again soon (1 s, doubling up to refresh), so that an agent
// started after the exporter has its limit known within seconds.
func (s *Source) Run(ctx context.Context) {
	if s.agent == nil {
		return
	}
	s.firstRead()
	retry := time.Duration(0)
	for {
		next := s.refresh
		if s.Snapshot().ReadOK {
			retry = 0
		} else {
			retry = min(max(2*retry, firstRetry), s.refresh)
			next = retry
		}
		timer := time.NewTimer(next)
		select {
		case <-ctx.Done():
			timer.Stop()
			return
		case <-timer.C:
			s.read()
		case <-s.soon:
			timer.Stop()
			s.read()
		}
	}
}

// firstRetry is the wait before the first read again after a failed one.
const firstRetry = time.Second

// firstRead reads the agent now if no read has been made yet.
func (s *Source) firstRead() {
	if s.agent != nil {
		s.first.Do(s.read)
	}
}

func (s *Source) read() {
	began, start := monotonic(), time.Now()
	read, err := s.ask()
	// An agent whose version cannot be read leaves its gRPC limit unknown:
	// the read failed, but the other limits it read apply.
	var version *versionError
	partial := errors.As(err, &version)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.snapshot.ReadOK, s.snapshot.ReadErr, s.snapshot.TooManyConnections = err == nil, nil, false
	s.snapshot.Took = time.Since(start)
	state := ""
	if err != nil {
		var status api.StatusError
		s.snapshot.TooManyConnections = errors.As(err, &status) && status.Code == http.StatusTooManyRequests
		s.snapshot.ReadErr = fmt.Errorf("reading the limits from the Consul agent: %s", explain(err))
		state = s.snapshot.ReadErr.Error()
	}
	s.readState.Log(s.logger, slog.LevelError, state, "cannot read the limits; the last ones read stay", "reading the limits from the Consul agent works again")
	if err != nil && !partial {
		return
	}
	if s.http.Auto {
		s.snapshot.HTTP, s.snapshot.TLSPorts = read.HTTP, read.TLSPorts
	}
	if s.rpc.Auto {
		s.snapshot.RPC = read.RPC
	}
	if s.grpc.Auto && !partial {
		s.snapshot.GRPC = read.GRPC
	}
	s.snapshot.ReadAt = began
}

// monotonic is CLOCK_MONOTONIC in ns, the kernel programs' clock.
func monotonic() uint64 {
	var now unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &now); err != nil {
		return 0
	}
	return uint64(now.Nano())
}

// ask reads the limits that are auto from the agent, and the watched
// ports it serves HTTPS on. A limit of 0 is Consul's "no limit".
func (s *Source) ask() (read Snapshot, err error) {
	config := *s.agent // NewClient writes the token it reads into its config
	client, err := api.NewClient(&config)
	if err != nil {
		return read, err
	}
	self, err := client.Agent().Self()
	if err != nil {
		return read, err
	}
	debug := self["DebugConfig"]
	limit := func(l Limit, key string) int {
		v, ok := debug[key].(float64)
		if l.Auto && !ok && err == nil {
			err = fmt.Errorf("the agent's DebugConfig has no %s", key)
		}
		return max(int(v), 0)
	}
	read.HTTP, read.RPC = limit(s.http, "HTTPMaxConnsPerClient"), limit(s.rpc, "RPCMaxConnsPerClient")
	if s.grpc.Auto && err == nil {
		read.GRPC, err = s.grpcLimit(self)
	}
	if err == nil {
		s.warnUnwatched(debug)
	}
	if p := number(debug["HTTPSPort"]); p > 0 && slices.Contains(s.httpPorts, uint16(p)) {
		read.TLSPorts = []uint16{uint16(p)}
	}
	return read, err
}

// Consul's external gRPC limiter came with this version; before it, an
// agent's gRPC ports have no per-client limit.
var (
	grpcLimiterSince = version.Must(version.NewVersion("2.0.3"))
	// grpcDefault is the limiter's default, where the agent does not say
	// its grpc_max_conns_per_client.
	grpcDefault = 100
)

// versionError is an agent's version that is none: whether it has a gRPC
// limiter cannot be told.
type versionError struct{ version string }

func (e *versionError) Error() string {
	return fmt.Sprintf("the agent's version %q is not one (Config.Version): cannot tell whether it has a gRPC limiter", say.Clip(e.version, 40))
}

// grpcLimit is the agent's grpc_max_conns_per_client by its version: none
// before the limiter came, else as the agent reports it, else Consul's
// default. Each is said once, as a note.
func (s *Source) grpcLimit(self map[string]map[string]any) (int, error) {
	word, _ := self["Config"]["Version"].(string)
	v, err := version.NewVersion(word)
	if err != nil {
		return 0, &versionError{word}
	}
	if v.Core().LessThan(grpcLimiterSince) {
		s.note(fmt.Sprintf("the Consul agent %s has no gRPC per-client limiter (it came with %s): no limit applies to its gRPC connections", v.Core(), grpcLimiterSince))
		return 0, nil
	}
	if n, ok := self["DebugConfig"]["GRPCMaxConnsPerClient"].(float64); ok {
		return max(int(n), 0), nil
	}
	s.note(fmt.Sprintf("the Consul agent %s does not report grpc_max_conns_per_client: Consul's default of %d is taken", v.Core(), grpcDefault))
	return grpcDefault, nil
}

// explain is err on one line, with what grants access where that is the
// problem. The client never puts the token in an error.
func explain(err error) string {
	var status api.StatusError
	if errors.As(err, &status) {
		body := say.Clip(status.Body, 120)
		switch status.Code {
		case http.StatusForbidden:
			return fmt.Sprintf("403 %s: give a token with agent:read (CONSUL_HTTP_TOKEN_FILE)", body)
		case http.StatusTooManyRequests:
			return fmt.Sprintf("429 %s: this host's address holds all of the agent's http_max_conns_per_client", body)
		}
		return fmt.Sprintf("%d %s", status.Code, body)
	}
	return say.Fold(err.Error())
}

// note says msg once, as a warning and in the snapshot's notes.
func (s *Source) note(msg string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.warned[msg] {
		s.warned[msg] = true
		s.logger.Warn(msg)
		s.snapshot.Notes = append(s.snapshot.Notes, msg)
	}
}

// warnUnwatched warns once for each port the agent serves that is not
// watched: the connections on it are not counted.
func (s *Source) warnUnwatched(config map[string]any) {
	check := func(key, what, flag string, watched []uint16) {
		p := number(config[key])
		if p <= 0 || slices.Contains(watched, uint16(p)) {
			return
		}
		s.note(fmt.Sprintf("the Consul agent serves %s on port %d, which is not watched: add --%s %d, or its connections are not counted", what, p, flag, p))
	}
	check("HTTPPort", "HTTP", "port", s.httpPorts)
	check("HTTPSPort", "HTTPS", "port", s.httpPorts)
	if len(s.rpcPorts) > 0 && config["ServerMode"] == true {
		check("ServerPort", "server RPC", "rpc.port", s.rpcPorts)
	}
	if len(s.grpcPorts) > 0 {
		check("GRPCPort", "gRPC", "grpc.port", s.grpcPorts)
		check("GRPCTLSPort", "gRPC over TLS", "grpc.port", s.grpcPorts)
	}
}

// number is a JSON number as an int, 0 if it is none.
func number(v any) int {
	if f, ok := v.(float64); ok {
		return int(f)
	}
	return 0
}

// writeFirst is a connection that reads nothing before its first write.
// An agent at its per-client limit answers 429 and closes as soon as it
// accepts, before our request is sent; Go's client would take that answer
// for an unsolicited one on an idle connection and fail without a status.
// Read only once the request is written, it is the answer to the request:
// the 429 that says this host's address is at the limit.
type writeFirst struct {
	net.Conn
	written chan struct{}
	once    sync.Once
}

func (c *writeFirst) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.once.Do(func() { close(c.written) })
	return n, err
}

func (c *writeFirst) Read(p []byte) (int, error) {
	<-c.written
	return c.Conn.Read(p)
}

func (c *writeFirst) Close() error {
	c.once.Do(func() { close(c.written) })
	return c.Conn.Close()
}
