// Recording rules: each agent's standing against its limits, and the
// fleet's, per the fleet's labels. Each limiter group (HTTP, the servers'
// RPC, each gRPC port) is recorded apart and never summed with another;
// a gRPC port keeps its port label.
local promql = import 'promql.libsonnet';

{
  local c = $._config,
  local s(name, matchers=[]) = promql.exporter(c, name, matchers),
  local fleet = promql.level(c.fleetLabels),

  local success(collector) = s('consul_conn_exporter_collector_success', ['collector="%s"' % collector]),
  // Whether the agent counted, from this exporter or one before 0.4, which
  // says it only so: a fleet in a rolling upgrade has both.
  local counted = [success('source'), s('consul_conn_exporter_collect_success')],
  local limitsRead = [success('limits'), s('consul_conn_exporter_limits_read_success')],
  local agent = promql.agent(c),
  local indented(expr) = std.join('\n', ['  ' + line for line in std.split(std.rstripChars(expr, '\n'), '\n')]),
  // expr, but not for the agents or fleets (on) of which one agent is not
  // known now: a fleet's number over some of its agents is no number.
  local unless(expr, on, unknown) = '%s\nunless on (%s)\n(\n%s\n)\n' % [expr, on, indented(unknown)],
  local either(terms) = std.join('\nor\n', [std.rstripChars(term, '\n') for term in terms]),
  local any(series) = '(%s)' % std.join(' or ', series),
  local failed(series) = '(%s)' % std.join(' or ', ['%s == 0' % one for one in series]),

  local unknownAgents = 'instance:consul_conn_exporter_unknown:group',
  // A group's limit not known for an agent: not read (a limit of 0, or a
  // gRPC port without Consul's limiter, is read: none), and not kept from
  // an earlier read (the agent answers this host 429 at its own limit).
  local limitUnknown(group) = '(%s unless on (%s) %s)' % [failed(limitsRead), agent, s('consul_%s_max_conns_per_client' % group)],

  local groupRules(group, keep) =
    local by = promql.by(c.fleetLabels + keep);
    local on = promql.by(c.fleetLabels);
    local open = s('consul_open_%s_connections_max_per_client' % group);
    local limit = s('consul_%s_max_conns_per_client' % group);
    [
      // The busiest client's share of the agent's limit: 1 is refusals.
      // None for an agent not known now (its numbers frozen: those of an
      // agent whose count fails or whose series are gone are absent).
      // The unknown agents' rule comes first in the group, so that these
      // read this evaluation's.
      {
        record: 'instance:consul_%s_busiest_client:ratio' % group,
        expr: unless('%s / %s' % [open, limit], agent, unknownAgents),
      },
      // The connections the busiest client may still open: the agent's
      // headroom, what the fleet's table sorts by. Absent, not 0, where
      // the count or the limit is not known.
      {
        record: 'instance:consul_%s_client_headroom:connections' % group,
        expr: unless('clamp_min(%s - %s, 0)' % [limit, open], agent, unknownAgents),
      },
      {
        record: '%s:consul_%s_busiest_client:ratio_max' % [fleet, group],
        expr: unless('max by (%s) (instance:consul_%s_busiest_client:ratio)' % [by, group], on, either([unknownAgents, limitUnknown(group)])),
      },
      {
        record: '%s:consul_%s_client_headroom:connections_min' % [fleet, group],
        expr: unless('min by (%s) (instance:consul_%s_client_headroom:connections)' % [by, group], on, either([unknownAgents, limitUnknown(group)])),
      },
      // Every client at an agent's limit, as the exporter counts them (not
      // only --clients.top's); a client at the limit of two agents is two.
      // An exporter older than consul_*_clients_at_limit does not count
      // them: its datacenter waits for it.
      {
        record: '%s:consul_%s_clients_at_limit:count' % [fleet, group],
        expr: unless('sum by (%s) (%s)' % [by, s('consul_%s_clients_at_limit' % group)], on, either([
          unknownAgents,
          limitUnknown(group),
          '(%s unless on (%s) %s)' % [limit, promql.agent(c, keep), s('consul_%s_clients_at_limit' % group)],
        ])),
      },
      // --refusals: the connections the agents refused, a minute, over
      // the refusal window; of every agent counting, or none.
      {
        record: '%s:consul_refused_%s_connections_per_minute:rate%s' % [fleet, group, c.refusalWindow],
        expr: unless('sum by (%s) (rate(%s[%s])) * 60' % [by, s('consul_refused_%s_connections_total' % group), c.refusalWindow], on, either([
          unknownAgents,
          '%s == 0' % success('refusals'),
          '(%s unless on (%s) %s)' % [any(counted), agent, success('refusals')],
        ])),
      },
    ],

  prometheusRules+:: {
    groups+: [{
      name: 'consul-connections-fleet',
      rules: [
        // The agents not known now, each once: its count failing, its
        // numbers frozen, or its series gone (its target down, its textfile
        // or push no longer served) within agentGoneAfter of its last
        // count; after that it has left the fleet. Every fleet number of
        // its datacenter waits for it.
        {
          record: unknownAgents,
          expr: 'group by (%s) (\n%s\n)\n' % [agent, indented(either([
            failed(counted),
            promql.stale(c),
            '(%s unless on (%s) %s)' % [any(['max_over_time(%s[%s])' % [one, c.agentGoneAfter] for one in counted]), agent, any(counted)],
          ]))],
        },
      ] + std.flattenArrays([groupRules(limiter.name, limiter.keep) for limiter in promql.limiters]),
    }],
  },
}
