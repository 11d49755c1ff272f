// Package mixin is the jsonnet that makes the alerts, the recording rules
// and the dashboard deploy/ ships, and the Helm chart's PrometheusRule
// (mixin.libsonnet, set by config.libsonnet); its tests check the committed
// files are what it makes.
package mixin

//go:generate go tool -modfile=../tools/go.mod jsonnet -S -c -m .. generate.jsonnet
