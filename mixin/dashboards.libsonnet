// The dashboard: the fleet's standing first (from the recording rules),
// then each agent's panels (from the exporter's series).
local promql = import 'promql.libsonnet';

{
  local c = $._config,
  local fleet = promql.level(c.fleetLabels),
  local fleetLegend = std.join(' ', ['{{%s}}' % label for label in c.fleetLabels]),
  local fleetMatchers = ['%s=~"$%s"' % [label, label] for label in c.fleetLabels],
  local agentMatchers = fleetMatchers + ['job=~"$job"', 'instance=~"$instance"'],
  // An agent is its instance in its fleet: instance names may repeat from
  // one datacenter to another, so an agent's panel keeps the fleet's labels
  // wherever it keeps the instance, and names them.
  local ofAgents(panel) = panel {
    targets: [
      target {
        expr: std.strReplace(target.expr, 'by (instance', 'by (%s, instance' % fleetBy),
        legendFormat: std.strReplace(target.legendFormat, '{{instance}}', fleetLegend + ' {{instance}}'),
      }
      for target in super.targets
    ],
  },
  // An agent's panel: the exporter's series on the agents chosen.
  local s(name, matchers=[]) = promql.exporter(c, name, matchers + agentMatchers),
  // A fleet panel: recorded series, on the fleets chosen.
  local f(name) = promql.series(name, fleetMatchers),
  local fleetBy = promql.by(c.fleetLabels),
  local fleetWords = std.join(' and ', c.fleetLabels),
  // A fleet panel's line for each limiter group: record(group) names its
  // rule.
  local eachLimiter(record) = [
    target(f(record(limiter.name)), std.join(' ', [fleetLegend, limiter.title] + [':{{%s}}' % label for label in limiter.keep]))
    for limiter in promql.limiters
  ],

  local datasource = { type: 'prometheus', uid: '${datasource}' },
  local target(expr, legend, more={}) = { datasource: datasource, expr: expr, legendFormat: legend } + more,

  local plain = { defaults: { custom: {} }, overrides: [] },
  local from0(unit=null) = { defaults: { custom: {}, min: 0 } + (if unit == null then {} else { unit: unit }), overrides: [] },
  // A share of a limit, with lines where the alerts warn and page.
  local share = {
    defaults: {
      custom: { thresholdsStyle: { mode: 'line' } },
      unit: 'percentunit',
      min: 0,
      thresholds: {
        mode: 'absolute',
        steps: [
          { color: 'green', value: null },
          { color: 'orange', value: c.nearLimitRatio },
          { color: 'red', value: 1.0 },
        ],
      },
    },
    overrides: [],
  },

  local panel(id, type, title, description, targets, width) = {
    id: id,
    type: type,
    title: title,
    description: description,
    datasource: datasource,
    gridPos: { w: width, h: 8 },
    targets: [
      targets[i] { refId: std.char(std.codepoint('A') + i) }
      for i in std.range(0, std.length(targets) - 1)
    ],
  },
  local timeseries(id, title, description, targets, fieldConfig=plain, width=12) =
    panel(id, 'timeseries', title, description, targets, width) {
      fieldConfig: fieldConfig,
      options: {
        legend: { displayMode: 'list', placement: 'bottom', showLegend: true },
        tooltip: { mode: 'multi', sort: 'desc' },
      },
    },
  local row(id, title) = {
    id: id,
    type: 'row',
    title: title,
    collapsed: false,
    panels: [],
    gridPos: { w: 24, h: 1 },
  },

  // Left to right, a new line when the next does not fit in 24 columns.
  local layout(panels) =
    std.foldl(
      function(placed, p)
        local x = if placed.x + p.gridPos.w > 24 || p.type == 'row' && placed.x > 0 then 0 else placed.x;
        local y = if x == 0 && placed.x > 0 then placed.y + placed.h else placed.y;
        {
          panels: placed.panels + [p { gridPos+: { x: x, y: y } }],
          x: x + p.gridPos.w,
          y: y,
          h: p.gridPos.h,
        },
      panels,
      { panels: [], x: 0, y: 0, h: 0 },
    ).panels,

  local variable(name, label, of) = {
    name: name,
    label: label,
    type: 'query',
    datasource: datasource,
    query: { query: 'label_values(%s)' % of, refId: name },
    definition: 'label_values(%s)' % of,
    includeAll: true,
    allValue: '.*',
    multi: true,
    current: { selected: true, text: ['All'], value: ['$__all'] },
    refresh: 2,
    sort: 1,
  },

  local fleetPanels = [
    row(21, 'Fleet'),
    timeseries(22, "Busiest client's share of each limit", "Per %s (the recording rules of mixin/, deploy/prometheus/rules.yml): the highest share of a limit any agent's busiest client holds, for each limiter apart. At 100%% that agent refuses that client's new connections. No line for a datacenter one of whose agents is not known now." % fleetWords, eachLimiter(function(group) '%s:consul_%s_busiest_client:ratio_max' % [fleet, group]), share),
    timeseries(23, 'Clients at a limit', "Per %s: the clients holding all of an agent's limit (one at the limit of two agents is two), for each limiter apart. Every client at the limit, not only the busiest shown per agent. No line for a datacenter one of whose agents is not known now (its count failing, its numbers frozen)." % fleetWords, eachLimiter(function(group) '%s:consul_%s_clients_at_limit:count' % [fleet, group]), from0()),
    timeseries(24, 'Refused connections a minute', 'Per %s, with --refusals: the connections the agents refused a minute, over the last %s, for each limiter apart; no line for a datacenter one of whose agents has refusals not known now.' % [fleetWords, promql.words(c.refusalWindow)], eachLimiter(function(group) '%s:consul_refused_%s_connections_per_minute:rate%s' % [fleet, group, c.refusalWindow]), from0()),
    timeseries(27, 'Agents not known now', 'Per %s: the agents whose count fails, whose numbers are frozen (textfile or push not renewed) or whose series are gone since they last counted (instance:consul_conn_exporter_unknown:group). While any is, its datacenter has no fleet number above: see its own alerts.' % fleetWords, [
      target('count by (%s) (%s)\nor\n0 * count by (%s) (%s)' % [fleetBy, f('instance:consul_conn_exporter_unknown:group'), fleetBy, promql.exporter(c, 'consul_conn_exporter_build_info', fleetMatchers)], fleetLegend),
    ], from0()),
    panel(25, 'table', 'Agents by headroom, least first', "Each agent's headroom for each limiter: the connections its busiest client may still open before the agent refuses it. 0 is at the limit. Agents whose count or limit is not known, or whose numbers are frozen, are not listed.", [
      target(
        'sort(\n  %s\n)' % std.join('\n  or ', [
          'label_replace(%s, "limiter", "%s", "", "")' % [f('instance:consul_%s_client_headroom:connections' % limiter.name), limiter.title]
          for limiter in promql.limiters
        ]),
        '',
        { format: 'table', instant: true },
      ),
    ], 24) {
      fieldConfig: plain,
      options: { showHeader: true, sortBy: [{ displayName: 'headroom', desc: false }] },
      transformations: [{
        id: 'organize',
        options: {
          excludeByName: { Time: true, __name__: true },
          indexByName: std.foldl(
            function(index, label) index { [label]: std.length(index) },
            c.fleetLabels + ['instance', 'limiter', 'port', 'Value'],
            {},
          ),
          renameByName: { Value: 'headroom' },
        },
      }],
    },
  ],

  local agentPanels = [
    row(26, 'Agents'),
    timeseries(1, 'Busiest HTTP client: share of http_max_conns_per_client', "The client IP holding the most HTTP connections, as a share of the agent's per-client limit. Consul answers 429 at 100%.", [
      target('max by (instance) (%s) / max by (instance) (%s)' % [s('consul_open_http_connections_max_per_client'), s('consul_http_max_conns_per_client')], '{{instance}}'),
    ], share),
    timeseries(2, 'Busiest server RPC client: share of rpc_max_conns_per_client', "Servers only (--rpc.port 8300): the client holding the most RPC connections, as a share of the server's limit. No data until --rpc.port is set.", [
      target('max by (instance) (%s) / max by (instance) (%s)' % [s('consul_open_rpc_connections_max_per_client'), s('consul_rpc_max_conns_per_client')], '{{instance}}'),
    ], share),
    timeseries(3, 'Busiest HTTP clients', 'Connections per client IP, for the busiest clients (--clients.top): now, and at the busiest sample of the last --peak.window (a burst between scrapes shows only there).', [
      target('topk(10, %s)' % s('consul_open_http_connections_per_client'), '{{instance}} {{client}}'),
      target('topk(10, %s)' % s('consul_open_http_connections_peak_per_client'), '{{instance}} {{client}} peak'),
    ]),
    timeseries(4, 'Local programs holding the HTTP connections', 'Which programs on the host hold the connections of local clients. No data until --clients.processes is on.', [
      target('topk(10, %s)' % s('consul_open_http_connections_per_process'), '{{instance}} {{process}}'),
    ]),
    timeseries(5, 'Open HTTP connections per port', '', [
      target('sum by (instance, port) (%s)' % s('consul_open_http_connections'), '{{instance}} :{{port}}'),
    ]),
    timeseries(6, 'ESTABLISHED vs CLOSE-WAIT', 'A pile of CLOSE-WAIT is the known Consul symptom of clients that left blocking queries: those sockets still hold a slot.', [
      target('sum by (instance, state) (%s)' % s('consul_open_http_connections_by_state'), '{{instance}} {{state}}'),
    ]),
    timeseries(7, 'Open server RPC connections per port', 'No data until --rpc.port is set.', [
      target('sum by (instance, port) (%s)' % s('consul_open_rpc_connections'), '{{instance}} :{{port}}'),
    ]),
    timeseries(8, 'Busiest server RPC clients', 'No data until --rpc.port is set.', [
      target('topk(10, %s)' % s('consul_open_rpc_connections_per_client'), '{{instance}} {{client}}'),
      target('topk(10, %s)' % s('consul_open_rpc_connections_peak_per_client'), '{{instance}} {{client}} peak'),
    ]),
    timeseries(9, 'Collection success', "1 when the socket table was counted; 0 means no counts are reported (see the exporter's log). The limits line shows only with --limit auto.", [
      target('min by (instance) (%s)' % s('consul_conn_exporter_collector_success', ['collector="source"']), '{{instance}} counted'),
      target('min by (instance) (%s)' % s('consul_conn_exporter_collector_success', ['collector="limits"']), '{{instance}} limits read (--limit auto)'),
    ], from0(), 8),
    timeseries(10, 'Collection duration', '', [
      target('max by (instance) (%s)' % s('consul_conn_exporter_collect_duration_seconds'), '{{instance}}'),
    ], from0('s'), 8),
    // node_exporter's and the Pushgateway's own series: the selector is
    // not theirs.
    timeseries(11, 'Age of the counts', "How old the textfile (node_exporter) or the last push (Pushgateway) is; with the exporter's own /metrics there is nothing to age.", [
      target('time() - max by (instance) (%s)' % promql.series('node_textfile_mtime_seconds', agentMatchers[:std.length(agentMatchers) - 2] + ['instance=~"$instance"', 'file=~"(.*/)?consul_open_http_connections[.]prom"']), 'textfile {{instance}}'),
      target('time() - max by (instance) (%s)' % promql.series('push_time_seconds', agentMatchers), 'push {{instance}}'),
    ], from0('s'), 8),
    timeseries(12, 'Refused HTTP connections per client', "Connections Consul refused past http_max_conns_per_client (a 429, the connection reset unread), per client, counted in the kernel (--refusals): no panel of Consul's own shows them.", [
      target('sum by (instance) (increase(%s[$__rate_interval]))' % s('consul_refused_http_connections_total'), '{{instance}} all clients'),
      target('topk(10, increase(%s[$__rate_interval]))' % s('consul_refused_http_connections_per_client_total'), '{{instance}} {{client}}'),
    ]),
    timeseries(13, 'HTTP connections opened per second, by client', 'Connections opened to the agent per second, in all and by the clients that open the most (--source events): a client at the top whose connections live milliseconds opens one per request (see the lifetimes beside, and the ConsulClientConnectionChurn runbook).', [
      target('sum by (instance) (rate(%s[$__rate_interval]))' % s('consul_opened_http_connections_total'), '{{instance}} all clients'),
      target('topk(10, rate(%s[$__rate_interval]))' % s('consul_opened_http_connections_per_client_total'), '{{instance}} {{client}}'),
    ]),
    panel(14, 'heatmap', 'HTTP connection lifetimes', 'How long the HTTP connections that closed lived (--source events): milliseconds are a request each, up to 5 minutes blocking queries, the hour bucket leaks.', [
      target('sum by (le) (increase(%s[$__rate_interval]))' % s('consul_http_connection_duration_seconds_bucket'), '{{le}}', { format: 'heatmap' }),
    ], 12) {
      options: {
        calculate: false,
        yAxis: { unit: 's' },
        cellGap: 1,
        color: { mode: 'scheme', scheme: 'Oranges' },
      },
    },
    timeseries(15, 'HTTP connections closed per second, by who ended them', 'Closes per second by who ended the connection (--source events): agent (its FIN first), client, or reset either way. A rising reset share is clients killed, or refusals.', [
      target('sum by (instance, by) (rate(%s[$__rate_interval]))' % s('consul_closed_http_connections_total'), '{{instance}} {{by}}'),
    ]),
    timeseries(16, 'What the HTTP slots are doing', "Each connection's use (--source netlink): waiting (a request in, not answered: blocking queries, one per watch), idle (answered last: kept in the client's pool), silent (nothing sent yet), half_closed (CLOSE-WAIT), unknown (not told by the source, or both last in one tick). The fix depends on the use: docs/metrics.md#what-each-slot-is-doing.", [
      target('sum by (instance, use) (%s)' % s('consul_open_http_connections_by_use'), '{{instance}} {{use}}'),
    ], { defaults: { custom: { stacking: { mode: 'normal', group: 'A' }, fillOpacity: 40 } }, overrides: [] }, 24),
    timeseries(17, 'Connections a limit not set yet would refuse', 'Before you change a limit (--whatif.limit http=N, grpc=N, rpc=N): the connections each limit not set yet would have refused, each opening while its client held N or more, per client; judged at each open with --source events, else from the samples (never more than were). docs/limits.md, "Before you change a limit".', [
      target('sum by (instance, limit) (increase(%s[$__rate_interval]))' % s('consul_http_whatif_refused_total'), '{{instance}} HTTP at {{limit}}: all clients'),
      target('topk(10, increase(%s[$__rate_interval]))' % s('consul_http_whatif_refused_per_client_total'), '{{instance}} HTTP at {{limit}}: {{client}}'),
      target('sum by (instance, port, limit) (increase(%s[$__rate_interval]))' % s('consul_grpc_whatif_refused_total'), '{{instance}} gRPC :{{port}} at {{limit}}: all clients'),
      target('sum by (instance, limit) (increase(%s[$__rate_interval]))' % s('consul_rpc_whatif_refused_total'), '{{instance}} RPC at {{limit}}: all clients'),
    ], width=24),
    timeseries(18, 'Busiest gRPC client per port: share of grpc_max_conns_per_client', 'Agents with the external gRPC limiter (Consul 2.0.3+; --grpc.port 8502, 8503): the client holding the most gRPC connections on each port (Envoy sidecars, consul-dataplane, peering), as a share of the limit. Each port is judged as a limiter of its own. No data until --grpc.port is set, nor where the agent has no gRPC limiter.', [
      target('max by (instance, port) (%s / %s)' % [s('consul_open_grpc_connections_max_per_client'), s('consul_grpc_max_conns_per_client')], '{{instance}} :{{port}}'),
    ], share),
    timeseries(19, 'Busiest gRPC clients per port', 'No data until --grpc.port is set; the programs on this host holding them (sidecars, dataplanes) with --clients.processes.', [
      target('topk(10, %s)' % s('consul_open_grpc_connections_per_client'), '{{instance}} :{{port}} {{client}}'),
      target('topk(10, %s)' % s('consul_open_grpc_connections_peak_per_client'), '{{instance}} :{{port}} {{client}} peak'),
      target('topk(10, %s)' % s('consul_open_grpc_connections_per_process'), '{{instance}} :{{port}} {{process}} (program)'),
    ]),
    timeseries(20, 'Refused gRPC connections per port and client', "--refusals: the gRPC connections the agent's limiter closed having read nothing of them (plaintext and TLS alike), per port, and per client for the clients refused most. No data until --grpc.port and --refusals are set.", [
      target('sum by (instance, port) (increase(%s[$__rate_interval]))' % s('consul_refused_grpc_connections_total'), '{{instance}} :{{port}}'),
      target('topk(10, increase(%s[$__rate_interval]))' % s('consul_refused_grpc_connections_per_client_total'), '{{instance}} :{{port}} {{client}}'),
    ], width=24),
  ],

  grafanaDashboards+:: {
    'consul-conn-exporter.json': {
      title: 'Consul connections per client',
      uid: c.dashboardUID,
      description: "consul-conn-exporter: how close Consul's clients are to http_max_conns_per_client (servers' rpc_max_conns_per_client, the external gRPC ports' grpc_max_conns_per_client), across the fleet and per agent, who holds the connections, and whether the counts are fresh.",
      tags: c.dashboardTags,
      editable: true,
      graphTooltip: 1,
      refresh: c.dashboardRefresh,
      schemaVersion: 39,
      timezone: '',
      time: { from: 'now-6h', to: 'now' },
      annotations: { list: [] },
      templating: {
        list: [{
          name: 'datasource',
          label: 'Data source',
          type: 'datasource',
          query: 'prometheus',
          current: {},
          hide: 0,
        }] + [
          variable(label, std.asciiUpper(label[0]) + label[1:], '%s, %s' % [promql.exporter(c, 'consul_conn_exporter_build_info'), label])
          for label in c.fleetLabels
        ] + [
          variable('job', 'Job', '%s, job' % promql.exporter(c, 'consul_conn_exporter_build_info', fleetMatchers)),
          variable('instance', 'Instance', '%s, instance' % promql.exporter(c, 'consul_conn_exporter_build_info', fleetMatchers + ['job=~"$job"'])),
        ],
      },
      panels: layout(fleetPanels + [if p.type == 'row' then p else ofAgents(p) for p in agentPanels]),
    },
  },
}
