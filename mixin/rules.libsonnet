// Recording rules: each agent's standing against its limits, and the
// fleet's, per the fleet's labels. Each limiter group (HTTP, the servers'
// RPC, each gRPC port) is recorded apart and never summed with another;
// a gRPC port keeps its port label.
local promql = import 'promql.libsonnet';

{
  local c = $._config,
  local s(name, matchers=[]) = promql.series(name, [c.selector] + matchers),
  local fleet = promql.level(c.fleetLabels),

  local groupRules(group, keep) =
    local by = promql.by(c.fleetLabels + keep);
    local open = s('consul_open_%s_connections_max_per_client' % group);
    local limit = s('consul_%s_max_conns_per_client' % group);
    [
      // The busiest client's share of the agent's limit: 1 is refusals.
      {
        record: 'instance:consul_%s_busiest_client:ratio' % group,
        expr: '%s / %s' % [open, limit],
      },
      // The connections the busiest client may still open: the agent's
      // headroom, what the fleet's table sorts by. Absent, not 0, where
      // the count or the limit is not known.
      {
        record: 'instance:consul_%s_client_headroom:connections' % group,
        expr: 'clamp_min(%s - %s, 0)' % [limit, open],
      },
      {
        record: '%s:consul_%s_busiest_client:ratio_max' % [fleet, group],
        expr: 'max by (%s) (instance:consul_%s_busiest_client:ratio)' % [by, group],
      },
      {
        record: '%s:consul_%s_client_headroom:connections_min' % [fleet, group],
        expr: 'min by (%s) (instance:consul_%s_client_headroom:connections)' % [by, group],
      },
      // A client at the limit of two agents is two. 0 where every agent's
      // count and limit are known and none is at it; absent where none is.
      {
        record: '%s:consul_%s_clients_at_limit:count' % [fleet, group],
        expr: |||
          count by (%s) (%s >= ignoring (client) group_left %s)
          or
          0 * count by (%s) (instance:consul_%s_busiest_client:ratio)
        ||| % [by, s('consul_open_%s_connections_per_client' % group), limit, by, group],
      },
      // --refusals: the connections the agents refused, a minute, over
      // the refusal window.
      {
        record: '%s:consul_refused_%s_connections_per_minute:rate%s' % [fleet, group, c.refusalWindow],
        expr: 'sum by (%s) (rate(%s[%s])) * 60' % [by, s('consul_refused_%s_connections_total' % group), c.refusalWindow],
      },
    ],

  prometheusRules+:: {
    groups+: [{
      name: 'consul-connections-fleet',
      rules: groupRules('http', []) + groupRules('rpc', []) + groupRules('grpc', ['port']),
    }],
  },
}
