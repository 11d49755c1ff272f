// The alerts, each with a runbook: docs/metrics.md, under the alert's name.
local promql = import 'promql.libsonnet';

{
  local c = $._config,
  local s(name, matchers=[]) = promql.exporter(c, name, matchers),

  local alert(name, severity, expr, summary, description=null, pending=null) = {
    alert: name,
    expr: expr,
    labels: { severity: severity },
    annotations: {
      runbook_url: c.runbookURLBase + std.asciiLower(name),
      summary: summary,
    } + (if description == null then {} else { description: description }),
  } + (if pending == null then {} else { 'for': pending }),

  // A limiter group's two alerts: a client near its limit, and at it.
  local limitAlerts(group, near, at, nearSummary, atSummary, description) = [
    alert(
      near,
      'warning',
      '%s / %s > %g' % [s('consul_open_%s_connections_max_per_client' % group), s('consul_%s_max_conns_per_client' % group), c.nearLimitRatio],
      nearSummary,
      description,
      c.nearLimitFor,
    ),
    alert(
      at,
      'critical',
      '%s >= %s' % [s('consul_open_%s_connections_max_per_client' % group), s('consul_%s_max_conns_per_client' % group)],
      atSummary,
      pending=c.atLimitFor,
    ),
  ],

  prometheusAlerts+:: {
    groups+: [{
      name: 'consul-connections',
      rules:
        limitAlerts(
          'http',
          'ConsulClientNearConnectionLimit',
          'ConsulClientAtConnectionLimit',
          'A client of Consul on {{ $labels.instance }} holds {{ $value | humanizePercentage }} of http_max_conns_per_client',
          'A client of Consul on {{ $labels.instance }} is at http_max_conns_per_client: its new connections get 429',
          "Consul refuses a client's connections past the limit with 429. See consul_open_http_connections_per_client for which client.",
        ) + [
          // From the samples between scrapes (--sample.interval): a burst to
          // the limit shorter than a scrape interval, that no snapshot saw.
          alert(
            'ConsulClientAtConnectionLimitBetweenScrapes',
            'warning',
            'increase(%s[%s]) > 0' % [s('consul_http_client_at_limit_seconds_total'), c.refusalWindow],
            'A client of Consul on {{ $labels.instance }} held all of http_max_conns_per_client for {{ $value | humanizeDuration }} of the last %s' % promql.words(c.refusalWindow),
            'Its new connections got 429 meanwhile. See consul_open_http_connections_peak_per_client for which client.',
          ),
          // --refusals: counted in the kernel as Consul refuses them.
          alert(
            'ConsulRefusedConnections',
            'warning',
            'increase(%s[%s]) > 0' % [s('consul_refused_http_connections_total'), c.refusalWindow],
            'Consul on {{ $labels.instance }} refused {{ $value | humanize }} HTTP connections in the last %s: a client is at http_max_conns_per_client' % promql.words(c.refusalWindow),
            'See consul_refused_http_connections_per_client_total for which client.',
          ),
        ] +
        // Servers only (--rpc.port 8300): client agents behind one NAT
        // address share this limit.
        limitAlerts(
          'rpc',
          'ConsulRPCClientNearConnectionLimit',
          'ConsulRPCClientAtConnectionLimit',
          'A client of the Consul server on {{ $labels.instance }} holds {{ $value | humanizePercentage }} of rpc_max_conns_per_client',
          'A client of the Consul server on {{ $labels.instance }} is at rpc_max_conns_per_client: its new RPC connections are closed',
          "The server closes a client's new RPC connections past the limit. See consul_open_rpc_connections_per_client for which client.",
        ) +
        // --grpc.port (8502, 8503): Envoy sidecars, consul-dataplane and
        // peering behind one address share this limit, each port its own.
        limitAlerts(
          'grpc',
          'ConsulGRPCClientNearConnectionLimit',
          'ConsulGRPCClientAtConnectionLimit',
          "A client of Consul's gRPC port {{ $labels.port }} on {{ $labels.instance }} holds {{ $value | humanizePercentage }} of grpc_max_conns_per_client",
          "A client of Consul's gRPC port {{ $labels.port }} on {{ $labels.instance }} is at grpc_max_conns_per_client: its new gRPC connections are closed",
          "The agent closes a client's new gRPC connections past the limit, unread. See consul_open_grpc_connections_per_client for which client.",
        ) + [
          // --refusals with --grpc.port: counted in the kernel as the
          // limiter closes them.
          alert(
            'ConsulRefusedGRPCConnections',
            'warning',
            'increase(%s[%s]) > 0' % [s('consul_refused_grpc_connections_total'), c.refusalWindow],
            'Consul on {{ $labels.instance }} refused {{ $value | humanize }} gRPC connections on port {{ $labels.port }} in the last %s: a client is at grpc_max_conns_per_client' % promql.words(c.refusalWindow),
            'See consul_refused_grpc_connections_per_client_total for which client.',
          ),
          // --whatif.limit: a limit not set yet would have refused
          // connections; raise it, or fix the clients, before setting it.
          alert(
            'ConsulConnectionLimitWouldRefuse',
            'info',
            '(\n  %s\n) > 0\n' % std.join('\n  or ', [
              'label_replace(increase(%s[%s]), "group", "%s", "", "")' % [s('consul_%s_whatif_refused_total' % group), c.whatIfWindow, group]
              for group in ['http', 'rpc', 'grpc']
            ]),
            'A {{ $labels.group }} limit of {{ $labels.limit }} would have refused {{ $value | humanize }} connections on {{ $labels.instance }} in the last %s' % promql.words(c.whatIfWindow),
            'See consul_{{ $labels.group }}_whatif_refused_per_client_total for which clients; docs/limits.md, Before you change a limit.',
          ),
          // --limit auto: the agent's limits could not be read (no
          // agent:read token, agent down, or this host's address at the
          // limit).
          alert(
            'ConsulConnectionLimitUnreadable',
            'warning',
            '%s == 0' % s('consul_conn_exporter_collector_success', ['collector="limits"']),
            "consul_conn_exporter on {{ $labels.instance }} cannot read Consul's connection limits (see its log)",
            pending=c.limitsUnreadableFor,
          ),
          alert(
            'ConsulConnectionCountFailing',
            'warning',
            '%s == 0' % s('consul_conn_exporter_collector_success', ['collector="source"']),
            "consul_conn_exporter on {{ $labels.instance }} cannot count Consul's connections (see its log)",
            pending=c.countFailingFor,
          ),
          // A feature of the collection (the listeners, the programs'
          // names, the events' churn, the refusals, the peaks) fails while
          // the counts stand: its own series are absent. Over the window,
          // a feature that never worked, unless the counts never did
          // either (ConsulConnectionCountFailing's: every feature fails
          // with them); a count that fails now and then holds nothing off.
          alert(
            'ConsulConnectionExporterFeatureFailing',
            'warning',
            |||
              max_over_time(%s[%s]) == 0
              unless on (%s)
              max_over_time(%s[%s]) == 0
            ||| % [
              s('consul_conn_exporter_collector_success', ['collector!~"source|limits"']),
              c.featureFailingWindow,
              promql.agent(c),
              s('consul_conn_exporter_collector_success', ['collector="source"']),
              c.featureFailingWindow,
            ],
            'consul_conn_exporter on {{ $labels.instance }} cannot read its {{ $labels.collector }} (see its log); the counts stand',
            pending='1m',
          ),
          alert(
            'ConsulConnectionCountAbsent',
            'warning',
            'absent(%s)' % s('consul_conn_exporter_collector_success', ['collector="source"']),
            "No consul_conn_exporter reports anywhere: Consul's connection counts are not collected",
            pending=c.countAbsentFor,
          ),
          // The textfile (node_exporter) or the push (Pushgateway) has not
          // been renewed: the exporter stopped writing.
          alert(
            'ConsulConnectionCountStale',
            'warning',
            promql.stale(c),
            'Consul connection counts from {{ $labels.instance }} are stale: the exporter stopped writing',
            pending=c.staleFor,
          ),
          // A watched port nothing listens on: its count of 0 says nothing.
          alert(
            'ConsulConnectionPortNotListening',
            'warning',
            '%s == 0' % s('consul_conn_exporter_port_listening'),
            'Nothing listens on port {{ $labels.port }} on {{ $labels.instance }}: the Consul agent is down, or the exporter watches the wrong port',
            pending=c.portNotListeningFor,
          ),
          // --source events: a client opening connections faster than one
          // a request would need: it does not reuse them.
          alert(
            'ConsulClientConnectionChurn',
            'warning',
            'rate(%s[%s]) > %g' % [s('consul_opened_http_connections_per_client_total'), c.refusalWindow, c.churnPerSecond],
            '{{ $labels.client }} opens {{ $value | humanize }} HTTP connections a second to the Consul agent on {{ $labels.instance }}: it does not reuse connections',
            pending=c.churnFor,
          ),
        ],
    }],
  },
}
