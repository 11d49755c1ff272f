// PromQL text the alerts, the rules and the dashboard share.
{
  // A series selector: name with the matchers given that are not empty,
  // e.g. series('up', ['job="a"', '']) is up{job="a"}, series('up', []) is up.
  series(name, matchers)::
    local set = std.filter(function(m) m != '', matchers);
    if set == [] then name else '%s{%s}' % [name, std.join(',', set)],

  // One of the exporter's series: the operator's selector (c.selector)
  // and the matchers given.
  exporter(c, name, matchers=[]):: self.series(name, [c.selector] + matchers),

  // An agent's labels, for "on (...)": its target and its fleet, as
  // instance names may repeat from one datacenter to another; and more.
  agent(c, more=[]):: self.by(['job', 'instance'] + c.fleetLabels + more),

  // The limiter groups, each recorded and drawn apart, never summed: the
  // labels besides the agent's that tell one group of a limiter from
  // another (a gRPC port is a group of its own).
  limiters: [
    { name: 'http', title: 'HTTP', keep: [] },
    { name: 'rpc', title: 'RPC', keep: [] },
    { name: 'grpc', title: 'gRPC', keep: ['port'] },
  ],

  // The exporter's numbers frozen: the textfile (node_exporter) or the
  // push (Pushgateway) older than c.staleAfterSeconds when it was scraped
  // (its age now would add up to a scrape interval), or unchanged over
  // c.staleFor (a host's clock ahead of Prometheus' hides the age).
  // node_exporter before 1.3 names the file without its directory.
  // node_exporter's and the Pushgateway's own series: the selector is not
  // theirs.
  stale(c)::
    local textfile = 'node_textfile_mtime_seconds{file=~"(.*/)?consul_open_http_connections[.]prom"}';
    local push = 'push_time_seconds{job="%s"}' % c.pushJob;
    std.join('\nor\n', std.flattenArrays([
      ['timestamp(%s) - %s > %d' % [series, series, c.staleAfterSeconds], 'changes(%s[%s]) == 0' % [series, c.staleFor]]
      for series in [textfile, push]
    ])) + '\n',

  // The labels of a fleet, for "by (...)" and a rule's level.
  by(labels):: std.join(', ', labels),
  level(labels):: std.join('_', labels),

  // A range as the alerts' texts say it: '5m' is "5 minutes", '1h' "hour";
  // one of more units ('1h30m') as it is.
  words(range)::
    local count = range[:std.length(range) - 1];
    local units = { s: 'second', m: 'minute', h: 'hour', d: 'day', w: 'week' };
    local unit = range[std.length(range) - 1];
    if count == '' || !std.all([std.member('0123456789', digit) for digit in std.stringChars(count)]) || !std.objectHas(units, unit) then range
    else if std.parseInt(count) == 1 then units[unit]
    else '%s %ss' % [count, units[unit]],
}
