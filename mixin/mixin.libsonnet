// The consul-conn-exporter mixin: alerts, recording rules and a dashboard
// from one source, set by _config (config.libsonnet).
(import 'config.libsonnet') +
(import 'alerts.libsonnet') +
(import 'rules.libsonnet') +
(import 'dashboards.libsonnet')
