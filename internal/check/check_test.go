package check

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/consul-conn-exporter/consul-conn-exporter/internal/collector"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/limits"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/listeners"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/table/socket"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/tally"
	"github.com/consul-conn-exporter/consul-conn-exporter/internal/whatif"
)

var states = []socket.State{socket.StateEstablished, socket.StateCloseWait}

// group holds n connections from client on port, against limit.
func group(l *collector.Limiter, port uint16, limit int, held map[string]int) collector.GroupCounts {
	counts := tally.New([]uint16{port}, states)
	peerPort := uint16(40000)
	for client, n := range held {
		for range n {
			peerPort++
			counts.Add(socket.Socket{
				State: socket.StateEstablished,
				Local: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port),
				Peer:  netip.AddrPortFrom(netip.MustParseAddr(client), peerPort),
			})
		}
	}
	return collector.GroupCounts{Group: collector.Group{Limiter: l, Ports: []uint16{port}}, Limit: limit, Counts: counts}
}

func result(groups ...collector.GroupCounts) collector.Result {
	return collector.Result{Groups: groups, States: states, TopClients: 10}
}

var thresholds = Flags{warning: 0.8, critical: 1.0, format: "text"}

func TestVerdicts(t *testing.T) {
	for _, tc := range []struct {
		name   string
		res    collector.Result
		status Status
		reason string
	}{
		{"idle", result(group(collector.HTTP, 8500, 200, nil)), OK, "no client holds a connection"},
		{"below warning", result(group(collector.HTTP, 8500, 200, map[string]int{"10.0.0.5": 159})), OK, "10.0.0.5 holds 159 of the 200 HTTP connections http_max_conns_per_client allows"},
		{"at warning", result(group(collector.HTTP, 8500, 200, map[string]int{"10.0.0.5": 160})), Warning, "10.0.0.5 holds 160"},
		{"at the limit", result(group(collector.HTTP, 8500, 200, map[string]int{"10.0.0.5": 200, "10.0.0.6": 3})), Critical, "10.0.0.5 holds 200 of the 200"},
		{"the RPC group is worse", result(
			group(collector.HTTP, 8500, 200, map[string]int{"10.0.0.5": 100}),
			group(collector.RPC, 8300, 100, map[string]int{"10.0.0.7": 90})), Warning, "10.0.0.7 holds 90 of the 100 RPC connections rpc_max_conns_per_client allows"},
		{"failed collection", collector.Result{Err: errors.New("ss exited with status 1")}, Unknown, "cannot count the connections: ss exited with status 1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := thresholds.Evaluate(tc.res)
			assert.Equal(t, tc.status, r.Status)
			assert.Contains(t, r.Reason, tc.reason)
		})
	}
}

func TestAutoLimitsThatCannotBeReadAreUnknownOr429Critical(t *testing.T) {
	res := result(group(collector.HTTP, 8500, 0, map[string]int{"10.0.0.5": 3}))
	res.Limits = limits.Snapshot{Auto: true, ReadErr: errors.New("reading the limits from the Consul agent: 403 Permission denied")}
	r := thresholds.Evaluate(res)
	assert.Equal(t, Unknown, r.Status)
	assert.Contains(t, r.Reason, "403 Permission denied")
	assert.Equal(t, 3, r.Groups[0].Clients[0].Connections, "the counts are still shown")

	res.Limits.TooManyConnections = true
	assert.Equal(t, Critical, thresholds.Evaluate(res).Status, "the agent refused this host itself")
}

func TestJSONReadsBackWithAnEmptyClientList(t *testing.T) {
	var out bytes.Buffer
	f := thresholds
	f.format = "json"
	assert.Equal(t, OK, f.Print(&out, result(group(collector.HTTP, 8500, 200, nil))))
	assert.Contains(t, out.String(), `"clients": []`)
	var back Report
	require.NoError(t, json.Unmarshal(out.Bytes(), &back))
	assert.Equal(t, OK, back.Status)
	assert.Equal(t, "http_max_conns_per_client", back.Groups[0].LimitName)
}

func TestTextEndsWithTheVerdict(t *testing.T) {
	var out bytes.Buffer
	status := thresholds.Print(&out, result(group(collector.HTTP, 8500, 200, map[string]int{"10.0.0.5": 170})))
	assert.Equal(t, Warning, status)
	lines := bytes.Split(bytes.TrimSpace(out.Bytes()), []byte("\n"))
	assert.Equal(t, "WARNING: 10.0.0.5 holds 170 of the 200 HTTP connections http_max_conns_per_client allows (85%)", string(lines[len(lines)-1]))
	assert.Contains(t, out.String(), "HTTP connections (limit 200 per client: http_max_conns_per_client)")
}

func TestThresholdsAreValidated(t *testing.T) {
	for _, f := range []Flags{{warning: -0.1, critical: 1}, {warning: 0.8, critical: 0}, {warning: 0.9, critical: 0.8}, {warning: math.NaN(), critical: 1}, {warning: 0.8, critical: math.NaN()}, {warning: 0.8, critical: math.Inf(1)}} {
		assert.Error(t, f.Validate(), fmt.Sprint(f.warning, f.critical))
	}
	assert.NoError(t, thresholds.Validate())
}

func TestSharesShownNeverContradictTheVerdict(t *testing.T) {
	r := thresholds.Evaluate(result(group(collector.HTTP, 8500, 200, map[string]int{"10.0.0.5": 199})))
	assert.Equal(t, Warning, r.Status)
	assert.Contains(t, r.Reason, "(99%)", "not the 100% of CRITICAL")
}

func TestNoLimitIsNoVerdict(t *testing.T) {
	res := result(group(collector.HTTP, 8500, 0, map[string]int{"10.0.0.5": 500}))
	res.Limits = limits.Snapshot{Auto: true, ReadOK: true}
	r := thresholds.Evaluate(res)
	assert.Equal(t, OK, r.Status, "Consul's 0 is no limit, read from the agent")
	assert.Equal(t, "no per-client limit applies to the connections held", r.Reason)
	assert.True(t, r.Groups[0].NoLimit)
	var out bytes.Buffer
	require.NoError(t, r.WriteText(&out, false))
	assert.Contains(t, out.String(), "HTTP connections (no per-client limit)")
}

// The worst verdict wins across groups, CRITICAL over WARNING over UNKNOWN
// over OK, and what it leaves out is said in the notes of the same output.
func TestTheWorstVerdictWinsAndTheRestIsSaid(t *testing.T) {
	unreadable := limits.Snapshot{Auto: true, ReadErr: errors.New("reading the limits from the Consul agent: connection refused")}
	for _, tc := range []struct {
		name   string
		res    collector.Result
		status Status
		reason string
		note   string
	}{
		{"an RPC client at 150%, the HTTP limit unreadable", withLimits(result(
			group(collector.HTTP, 8500, 0, map[string]int{"10.0.0.5": 3}),
			group(collector.RPC, 8300, 100, map[string]int{"10.0.0.7": 150})), unreadable),
			Critical, "10.0.0.7 holds 150 of the 100 RPC connections", "connection refused"},
		{"a warning, and a port nothing listens on", withListeners(result(
			group(collector.HTTP, 8500, 200, map[string]int{"10.0.0.5": 170})), map[uint16]int{8500: 1, 8501: 0}),
			Warning, "10.0.0.5 holds 170", "nothing listens on port 8501"},
		{"a port nothing listens on, all else OK", withListeners(result(
			group(collector.HTTP, 8500, 200, nil)), map[uint16]int{8500: 0}),
			Unknown, "nothing listens on port 8500: a wrong --port, --rpc.port or --grpc.port, or the agent is down", "no client holds a connection"},
		{"the limit unreadable, all else OK", withLimits(result(
			group(collector.HTTP, 8500, 0, map[string]int{"10.0.0.5": 3})), unreadable),
			Unknown, "connection refused", "the per-client limit of the connections held is unknown: none judged"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := thresholds.Evaluate(tc.res)
			assert.Equal(t, tc.status, r.Status)
			assert.Contains(t, r.Reason, tc.reason)
			assert.Contains(t, strings.Join(r.Notes, "\n"), tc.note)
		})
	}
}

func TestSeverityOrder(t *testing.T) {
	assert.Greater(t, severity[Critical], severity[Warning])
	assert.Greater(t, severity[Warning], severity[Unknown])
	assert.Greater(t, severity[Unknown], severity[OK])
}

func withLimits(res collector.Result, snap limits.Snapshot) collector.Result {
	res.Limits = snap
	return res
}

// withListeners says how many users listen on each watched port.
func withListeners(res collector.Result, users map[uint16]int) collector.Result {
	var ls []listeners.Listener
	var ports []uint16
	for port, n := range users {
		ports = append(ports, port)
		for uid := range n {
			ls = append(ls, listeners.Listener{Local: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port), UID: uint32(uid)})
		}
	}
	agent := listeners.Judge(ls, ports, listeners.Where{Addrs: []netip.Addr{netip.MustParseAddr("127.0.0.1")}, Port: ports[0]}, nil)
	res.Listeners = &agent
	return res
}

// A feature that failed while the counts stand is said beside the verdict,
// in the words the metrics' collector_success 0 stands for; the verdict is
// the counts'.
func TestAFailedFeatureIsSaidBesideTheVerdict(t *testing.T) {
	res := result(group(collector.HTTP, 8500, 200, map[string]int{"10.0.0.5": 170}))
	res.Parts = []collector.Part{{Name: "source"}, {Name: "events", Err: errors.New("reading the kernel's events: bad file descriptor")}}
	r := thresholds.Evaluate(res)
	assert.Equal(t, Warning, r.Status)
	assert.Contains(t, r.Notes, "events failed: reading the kernel's events: bad file descriptor")
}

// The verdict names what most of the busiest client's connections are
// doing, where the source tells it, and the JSON has each use; a source
// that tells none adds nothing.
func TestTheVerdictNamesTheBusiestClientsBiggestUse(t *testing.T) {
	g := group(collector.HTTP, 8500, 200, map[string]int{"10.0.0.5": 40})
	for i, use := range append(slices.Repeat([]socket.Use{socket.UseIdle}, 150), slices.Repeat([]socket.Use{socket.UseWaiting}, 40)...) {
		g.Counts.Add(socket.Socket{State: socket.StateEstablished, Local: netip.MustParseAddrPort("127.0.0.1:8500"),
			Peer: netip.AddrPortFrom(netip.MustParseAddr("10.0.0.5"), uint16(50000+i)), Use: use})
	}
	r := thresholds.Evaluate(result(g))
	assert.Equal(t, Critical, r.Status)
	assert.Equal(t, "10.0.0.5 holds 230 of the 200 HTTP connections http_max_conns_per_client allows (115%), 150 idle in the client's pool", r.Reason)
	assert.Equal(t, map[string]int{"idle": 150, "waiting": 40, "unknown": 40}, r.Groups[0].Clients[0].Uses)

	told := thresholds.Evaluate(result(group(collector.HTTP, 8500, 200, map[string]int{"10.0.0.5": 190})))
	assert.Equal(t, "10.0.0.5 holds 190 of the 200 HTTP connections http_max_conns_per_client allows (95%)", told.Reason)
	assert.Nil(t, told.Groups[0].Clients[0].Uses)
}

// A limit not set yet that would refuse someone is a WARNING naming them
// and how often; the limit that is set stays the verdict where it is
// worse, the prediction beside it; none refused changes nothing.
func TestAWhatIfLimitThatWouldRefuseIsAWarning(t *testing.T) {
	res := result(group(collector.HTTP, 8500, 200, map[string]int{"10.0.0.5": 25, "10.0.0.6": 15, "10.0.0.7": 40}))
	res.WhatIf = [][]whatif.Limit{{
		{Limit: 20, Refused: 25, Clients: []tally.ClientCount{{Client: netip.MustParseAddr("10.0.0.7"), Count: 20}, {Client: netip.MustParseAddr("10.0.0.5"), Count: 5}}},
		{Limit: 50},
	}}
	r := thresholds.Evaluate(res)
	assert.Equal(t, Warning, r.Status)
	assert.Equal(t, "at http_max_conns_per_client 20, 10.0.0.7 would be refused 20 connections, 10.0.0.5 5", r.Reason)
	assert.Contains(t, r.Notes, "10.0.0.7 holds 40 of the 200 HTTP connections http_max_conns_per_client allows (20%)")
	assert.Equal(t, []WhatIf{{Limit: 20, Refused: 25, Clients: []WhatIfClient{{"10.0.0.7", 20}, {"10.0.0.5", 5}}}, {Limit: 50, Clients: []WhatIfClient{}}}, r.Groups[0].WhatIf)

	res.Groups[0].Limit = 40
	r = thresholds.Evaluate(res)
	assert.Equal(t, Critical, r.Status, "at the limit that is set")
	assert.Contains(t, r.Notes, "at http_max_conns_per_client 20, 10.0.0.7 would be refused 20 connections, 10.0.0.5 5")

	res.Groups[0].Limit = 200
	res.WhatIf[0] = res.WhatIf[0][1:]
	assert.Equal(t, OK, thresholds.Evaluate(res).Status, "none would be refused")
}

// Each gRPC port is judged as a group of its own (60 and 85 of 100 from one
// client: 85%, WARNING, never 145), named by its port in the verdict, the
// what-if line and the text's heading.
func TestEachGRPCPortIsJudgedAndNamedApart(t *testing.T) {
	res := result(group(collector.HTTP, 8500, 200, map[string]int{"10.0.0.5": 10}),
		group(collector.GRPC, 8502, 100, map[string]int{"10.0.0.6": 60}), group(collector.GRPC, 8503, 100, map[string]int{"10.0.0.6": 85}))
	res.WhatIf = [][]whatif.Limit{nil, {{Limit: 50, Refused: 10, Clients: []tally.ClientCount{{Client: netip.MustParseAddr("10.0.0.6"), Count: 10}}}}, nil}
	r := thresholds.Evaluate(res)
	assert.Equal(t, Warning, r.Status)
	assert.Equal(t, "10.0.0.6 holds 85 of the 100 gRPC port 8503 connections grpc_max_conns_per_client allows (85%)", r.Reason)
	assert.Contains(t, r.Notes, "at grpc_max_conns_per_client 50 on gRPC port 8502, 10.0.0.6 would be refused 10 connections")
	var text bytes.Buffer
	require.NoError(t, r.WriteText(&text, false))
	assert.Contains(t, text.String(), "gRPC port 8502 connections (limit 100 per client: grpc_max_conns_per_client)")
	assert.Contains(t, text.String(), "HTTP connections (limit 200 per client: http_max_conns_per_client)")
}
