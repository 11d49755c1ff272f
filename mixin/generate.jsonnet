// The files deploy/ and the chart ship, from the mixin with its defaults,
// by their paths in the repository:
//   go generate ./mixin
local mixin = import 'mixin.libsonnet';
// Each text is one line of YAML however long, as the mixin makes it.
local header = |||
  # Generated from mixin/ (go generate ./mixin): edit the jsonnet, not this file.
  # yamllint disable rule:line-length
|||;
local yaml(value) = header + std.manifestYamlDoc(value, indent_array_in_object=true, quote_keys=false);

{
  'deploy/prometheus/alerts.yml': yaml(mixin.prometheusAlerts),
  'deploy/prometheus/rules.yml': yaml(mixin.prometheusRules),
  // The PrometheusRule's spec (prometheus.rules.enabled): both, as one.
  'charts/consul-conn-exporter/files/prometheus-rules.yaml': yaml({ groups: mixin.prometheusAlerts.groups + mixin.prometheusRules.groups }),
} + {
  ['deploy/grafana/' + name]: std.manifestJsonEx(mixin.grafanaDashboards[name], '  ')
  for name in std.objectFields(mixin.grafanaDashboards)
}
