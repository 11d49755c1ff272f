// The files deploy/ ships, from the mixin with its defaults:
//   go generate ./mixin
local mixin = import 'mixin.libsonnet';
// Each text is one line of YAML however long, as the mixin makes it.
local header = |||
  # Generated from mixin/ (go generate ./mixin): edit the jsonnet, not this file.
  # yamllint disable rule:line-length
|||;
local yaml(value) = header + std.manifestYamlDoc(value, indent_array_in_object=true, quote_keys=false);

{
  'prometheus/alerts.yml': yaml(mixin.prometheusAlerts),
  'prometheus/rules.yml': yaml(mixin.prometheusRules),
} + {
  ['grafana/' + name]: std.manifestJsonEx(mixin.grafanaDashboards[name], '  ')
  for name in std.objectFields(mixin.grafanaDashboards)
}
