// What an operator sets: import the mixin and override these, e.g.
//   (import 'mixin.libsonnet') + { _config+:: { selector: 'cluster="prod"' } }
{
  _config+:: {
    // Label matchers every alert, recording rule and panel adds to the
    // exporter's series, e.g. 'job="consul-conn-exporter"'. Empty: the
    // series of these names wherever they come from (the exporter's own
    // /metrics, node_exporter's textfile job, a Pushgateway).
    selector: '',

    // The labels a fleet is split by, from your scrape configuration's
    // target labels (the exporter does not know them): ['datacenter'],
    // ['cluster'], or both. The fleet's recording rules are named after
    // them (datacenter:consul_http_busiest_client:ratio_max) and the
    // dashboard has a variable for each.
    fleetLabels: ['datacenter'],
    assert std.length(self.fleetLabels) > 0 : "fleetLabels: name the target labels the fleet is split by, e.g. ['datacenter'] (one datacenter: keep it, unset, and the fleet is one)",
    assert !std.member(self.fleetLabels, 'job') && !std.member(self.fleetLabels, 'instance') : 'fleetLabels: job and instance are the agents, not a fleet of them',

    // A client above this share of a limit, for nearLimitFor, warns; at
    // the limit for atLimitFor, pages. The dashboard draws both lines.
    nearLimitRatio: 0.8,
    nearLimitFor: '5m',
    atLimitFor: '1m',

    // The window the refusals, the samples at the limit and the churn are
    // judged over.
    refusalWindow: '5m',
    // What a limit not set yet would refuse (--whatif.limit) is told over
    // this window: an hour of traffic before a change.
    whatIfWindow: '1h',

    // How long the limits may go unread (--limit auto), the counts fail,
    // or a feature fail, before it is said.
    limitsUnreadableFor: '15m',
    countFailingFor: '5m',
    featureFailingWindow: '15m',
    countAbsentFor: '15m',
    portNotListeningFor: '5m',

    // The textfile (node_exporter) or the push (Pushgateway) is stale
    // after four of the exporter's 15 s intervals; the job it pushes as.
    staleAfterSeconds: 60,
    staleFor: '5m',
    pushJob: 'consul_conn_exporter',

    // An agent whose series are gone (its target down, its textfile or
    // push no longer served) makes its fleet's numbers unknown for this
    // long after it last counted; then it has left the fleet (say a target
    // down for longer with an alert on up).
    agentGoneAfter: '1h',

    // Connections a client opens per second, for churnFor, that one
    // reusing its connections would not.
    churnPerSecond: 50,
    churnFor: '10m',

    // Each alert's runbook_url is this and the alert's name in lower case.
    runbookURLBase: 'https://github.com/consul-conn-exporter/consul-conn-exporter/blob/main/docs/metrics.md#',

    dashboardUID: 'consul-conn-exporter',
    dashboardTags: ['consul', 'consul-conn-exporter'],
    dashboardRefresh: '30s',
  },
}
