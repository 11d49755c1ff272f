// PromQL text the alerts, the rules and the dashboard share.
{
  // A series selector: name with the matchers given that are not empty,
  // e.g. series('up', ['job="a"', '']) is up{job="a"}, series('up', []) is up.
  series(name, matchers)::
    local set = std.filter(function(m) m != '', matchers);
    if set == [] then name else '%s{%s}' % [name, std.join(',', set)],

  // The labels of a fleet, for "by (...)" and a rule's level.
  by(labels):: std.join(', ', labels),
  level(labels):: std.join('_', labels),

  // A range as the alerts' texts say it: '5m' is "5 minutes", '1h' "hour".
  words(range)::
    local n = std.parseInt(range[:std.length(range) - 1]);
    local unit = { s: 'second', m: 'minute', h: 'hour', d: 'day' }[range[std.length(range) - 1]];
    if n == 1 then unit else '%d %ss' % [n, unit],
}
