// Recording rules: each agent's standing against its limits, and the
// fleet's, per the fleet's labels. Each limiter group (HTTP, the servers'
// RPC, each gRPC port) is recorded apart and never summed with another;
// a gRPC port keeps its port label.
local promql = import 'promql.libsonnet';

{
  local c = $._config,
  local s(name, matchers=[]) = promql.series(name, [c.selector] + matchers),
  local fleet = promql.level(c.fleetLabels),

  // An agent's numbers are not known now: frozen (the textfile or push
  // not renewed), or failing (its count, or the feature named).
  local indented(expr) = std.join('\n', ['  ' + line for line in std.split(std.rstripChars(expr, '\n'), '\n')]),
  local frozen = promql.stale(c),
  local failing(collectors) = '%s == 0\nor\n%s' % [s('consul_conn_exporter_collector_success', ['collector=~"%s"' % collectors]), frozen],
  // expr, but not for the agents or fleets (on) one of whose agents is
  // not known now: a fleet's number over some of its agents is no number.
  local unless(expr, on, unknown) = '%s\nunless on (%s)\n(\n%s\n)\n' % [expr, on, indented(unknown)],

  local groupRules(group, keep) =
    local by = promql.by(c.fleetLabels + keep);
    local on = promql.by(c.fleetLabels);
    local open = s('consul_open_%s_connections_max_per_client' % group);
    local limit = s('consul_%s_max_conns_per_client' % group);
    [
      // The busiest client's share of the agent's limit: 1 is refusals.
      {
        record: 'instance:consul_%s_busiest_client:ratio' % group,
        expr: unless('%s / %s' % [open, limit], 'job, instance', frozen),
      },
      // The connections the busiest client may still open: the agent's
      // headroom, what the fleet's table sorts by. Absent, not 0, where
      // the count or the limit is not known.
      {
        record: 'instance:consul_%s_client_headroom:connections' % group,
        expr: unless('clamp_min(%s - %s, 0)' % [limit, open], 'job, instance', frozen),
      },
      {
        record: '%s:consul_%s_busiest_client:ratio_max' % [fleet, group],
        expr: unless('max by (%s) (instance:consul_%s_busiest_client:ratio)' % [by, group], on, failing('source|limits')),
      },
      {
        record: '%s:consul_%s_client_headroom:connections_min' % [fleet, group],
        expr: unless('min by (%s) (instance:consul_%s_client_headroom:connections)' % [by, group], on, failing('source|limits')),
      },
      // Every client at an agent's limit, as the exporter counts them (not
      // only --clients.top's); a client at the limit of two agents is two.
      {
        record: '%s:consul_%s_clients_at_limit:count' % [fleet, group],
        expr: unless('sum by (%s) (%s)' % [by, s('consul_%s_clients_at_limit' % group)], on, failing('source|limits')),
      },
      // --refusals: the connections the agents refused, a minute, over
      // the refusal window.
      {
        record: '%s:consul_refused_%s_connections_per_minute:rate%s' % [fleet, group, c.refusalWindow],
        expr: unless('sum by (%s) (rate(%s[%s])) * 60' % [by, s('consul_refused_%s_connections_total' % group), c.refusalWindow], on, failing('source|refusals')),
      },
    ],

  prometheusRules+:: {
    groups+: [{
      name: 'consul-connections-fleet',
      rules: groupRules('http', []) + groupRules('rpc', []) + groupRules('grpc', ['port']),
    }],
  },
}
