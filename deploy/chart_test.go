package deploy

import (
	"bytes"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/pod-security-admission/api"
	"k8s.io/pod-security-admission/policy"
	"sigs.k8s.io/yaml"

	"github.com/consul-conn-exporter/consul-conn-exporter/internal/testkit/programs"
)

const chart = "../charts/consul-conn-exporter"

// helm runs the Helm pinned in tools/go.mod (built once by the go command).
func helm(t *testing.T, args ...string) (string, error) {
	t.Helper()
	cmd := programs.Tool(t, "helm", args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

// withValues is Helm's args with set as --set flags.
func withValues(args, set []string) []string {
	for _, s := range set {
		args = append(args, "--set", s)
	}
	return args
}

// render is the chart's objects for set (--set's words), by kind, each
// decoded strictly into its Kubernetes type: a field the type does not know
// fails.
func render(t *testing.T, set ...string) rendered {
	t.Helper()
	out, err := helm(t, withValues([]string{"template", "cce", chart, "--namespace", "consul-conn-exporter"}, set)...)
	require.NoError(t, err, "helm template --set %v:\n%s", set, out)
	var r rendered
	for _, text := range regexp.MustCompile(`(?m)^---$`).Split(out, -1) {
		var doc map[string]any
		require.NoError(t, yaml.Unmarshal([]byte(text), &doc))
		if doc == nil {
			continue // a template that rendered nothing
		}
		var into any
		switch kind := doc["kind"]; kind {
		case "DaemonSet":
			into = fresh(&r.daemonSet)
		case "Service":
			into = fresh(&r.service)
		case "PodMonitor":
			into = fresh(&r.podMonitor)
		case "ServiceMonitor":
			into = fresh(&r.serviceMonitor)
		case "PrometheusRule":
			into = fresh(&r.rules)
		default:
			t.Fatalf("a %v the tests do not know", kind)
		}
		require.NoError(t, yaml.UnmarshalStrict([]byte(text), into), "%s: unknown or misspelt fields", doc["kind"])
	}
	require.NotNil(t, r.daemonSet, "no DaemonSet")
	return r
}

// fresh is a new T, kept in *at.
func fresh[T any](at **T) *T {
	*at = new(T)
	return *at
}

type rendered struct {
	daemonSet      *appsv1.DaemonSet
	service        *corev1.Service
	podMonitor     *monitoringv1.PodMonitor
	serviceMonitor *monitoringv1.ServiceMonitor
	rules          *monitoringv1.PrometheusRule
}

// modes are the chart's modes, by the values that make them, each with the
// capabilities its features need at start.
var modes = map[string]struct {
	set  []string
	caps []corev1.Capability
}{
	"metrics":                {nil, nil},
	"textfile":               {[]string{"textfile.enabled=true"}, nil},
	"refusals":               {[]string{"refusals.enabled=true"}, []corev1.Capability{"BPF", "PERFMON"}},
	"events":                 {[]string{"events.enabled=true"}, []corev1.Capability{"BPF", "PERFMON"}},
	"refusals with textfile": {[]string{"refusals.enabled=true", "textfile.enabled=true"}, []corev1.Capability{"BPF", "PERFMON"}},
	"token":                  {[]string{"consul.limit=auto", "consul.token.existingSecret=consul-token", "consul.server=127.0.0.1:8500"}, nil},
	"every group":            {[]string{"consul.rpcPorts={8300}", "consul.grpcPorts={8502,8503}", "consul.grpcLimit=auto"}, nil},
}

func TestChartLintsStrictly(t *testing.T) {
	for name, mode := range modes {
		out, err := helm(t, withValues([]string{"lint", "--strict", chart}, mode.set)...)
		assert.NoError(t, err, "%s:\n%s", name, out)
	}
}

// The chart is released with the exporter: its version and appVersion are
// VERSION's.
func TestChartVersionIsTheExporters(t *testing.T) {
	version, err := os.ReadFile("../VERSION")
	require.NoError(t, err)
	text, err := os.ReadFile(chart + "/Chart.yaml")
	require.NoError(t, err)
	var c struct{ Version, AppVersion string }
	require.NoError(t, yaml.Unmarshal(text, &c))
	assert.Equal(t, strings.TrimSpace(string(version)), c.Version)
	assert.Equal(t, c.Version, c.AppVersion)
}

// In every mode each rendered pod's containers pass the restricted Pod
// Security Standard's container checks, and the pod's violations are
// exactly the ones the chart's README lists for its mode; the capabilities
// its features need are in effect for the user it runs as (Kubernetes gives
// a user other than root no ambient capabilities: one added for 65534 is
// not in effect).
func TestEachModesPodSecurityIsAsDocumented(t *testing.T) {
	documented := documentedViolations(t)
	evaluator, err := policy.NewEvaluator(policy.DefaultChecks(), nil)
	require.NoError(t, err)
	restricted := api.LevelVersion{Level: api.LevelRestricted, Version: api.LatestVersion()}
	for name, mode := range modes {
		t.Run(name, func(t *testing.T) {
			pod := render(t, mode.set...).daemonSet.Spec.Template
			var violations []string
			for _, result := range evaluator.EvaluatePod(restricted, &pod.ObjectMeta, &pod.Spec) {
				if !result.Allowed {
					violations = append(violations, result.ForbiddenReason)
				}
			}
			slices.Sort(violations)
			want, ok := documented[name]
			require.True(t, ok, "the README lists no violations for %q", name)
			assert.Equal(t, want, violations)

			c := pod.Spec.Containers[0]
			assert.ElementsMatch(t, mode.caps, inEffect(pod.Spec, c), "the capabilities in effect")
			assert.Equal(t, []corev1.Capability{"ALL"}, c.SecurityContext.Capabilities.Drop)
			assert.False(t, *c.SecurityContext.AllowPrivilegeEscalation)
			assert.True(t, *c.SecurityContext.ReadOnlyRootFilesystem)
		})
	}
}

// inEffect are the capabilities the container's process has at start: the
// ones added, where it runs as root; none for another user.
func inEffect(pod corev1.PodSpec, c corev1.Container) []corev1.Capability {
	uid := int64(0) // the image's user, root where neither says
	if pod.SecurityContext != nil && pod.SecurityContext.RunAsUser != nil {
		uid = *pod.SecurityContext.RunAsUser
	}
	if c.SecurityContext != nil && c.SecurityContext.RunAsUser != nil {
		uid = *c.SecurityContext.RunAsUser
	}
	if uid != 0 || c.SecurityContext == nil || c.SecurityContext.Capabilities == nil {
		return nil
	}
	return c.SecurityContext.Capabilities.Add
}

// documentedViolations reads the chart README's table of each mode's Pod
// Security violations: | `mode` | `reason`, `reason` |.
func documentedViolations(t *testing.T) map[string][]string {
	t.Helper()
	text, err := os.ReadFile(chart + "/README.md")
	require.NoError(t, err)
	row := regexp.MustCompile("(?m)^\\| ([a-z ]+) \\| ((?:`[^`]+`(?:, )?)+) \\|")
	documented := map[string][]string{}
	for _, m := range row.FindAllStringSubmatch(string(text), -1) {
		var reasons []string
		for _, r := range regexp.MustCompile("`([^`]+)`").FindAllStringSubmatch(m[2], -1) {
			reasons = append(reasons, r[1])
		}
		slices.Sort(reasons)
		documented[m[1]] = reasons
	}
	return documented
}

// A typo or a wrong type in the values is refused, naming it.
func TestTheSchemaRefusesBadValues(t *testing.T) {
	for set, want := range map[string]string{
		"web.port=abc":                            "at '/web/port': got string, want integer",
		"prometheus.podmonitor.enabled=true":      "additional properties 'podmonitor' not allowed",
		"consul.limit=-5":                         "at '/consul/limit'",
		"consul.grpcPorts={70000}":                "at '/consul/grpcPorts/0'",
		"image.digest=latest":                     "at '/image/digest'",
		"extraArgs={refusals}":                    "at '/extraArgs/0'",
		"prometheus.targetLabels.data-center=dc1": "'data-center' does not match pattern",
	} {
		out, err := helm(t, "template", "cce", chart, "--set", set)
		assert.Error(t, err, set)
		assert.Contains(t, out, want, set)
	}
}

// The toggles: the monitors, the textfile mode, a pinned image, the token.
func TestTheTogglesRenderWhatTheySay(t *testing.T) {
	plain := render(t)
	assert.Nil(t, plain.podMonitor)
	assert.Nil(t, plain.serviceMonitor)
	c := plain.daemonSet.Spec.Template.Spec.Containers[0]
	assert.Equal(t, "registry.example.com/consul-conn-exporter:0.3.0", c.Image)
	assert.Equal(t, []string{"--web.listen-address=:9855", "--port=8500", "--limit=200"}, c.Args)
	assert.True(t, plain.daemonSet.Spec.Template.Spec.HostNetwork)
	probesRunNoCollection(t, c)

	monitored := render(t, "prometheus.monitor.enabled=true", "prometheus.monitor.additionalLabels.release=kps")
	require.NotNil(t, monitored.serviceMonitor)
	require.NotNil(t, monitored.service)
	assert.Equal(t, "kps", monitored.serviceMonitor.Labels["release"])
	assert.Equal(t, monitored.service.Labels["app.kubernetes.io/name"], monitored.serviceMonitor.Spec.Selector.MatchLabels["app.kubernetes.io/name"])
	assert.Equal(t, monitored.daemonSet.Spec.Selector.MatchLabels, monitored.service.Spec.Selector)

	textfile := render(t, "textfile.enabled=true", "prometheus.podMonitor.enabled=true")
	assert.Nil(t, textfile.podMonitor, "nothing to scrape")
	c = textfile.daemonSet.Spec.Template.Spec.Containers[0]
	assert.Contains(t, c.Args, "--textfile.directory=/textfile")
	assert.Empty(t, c.Ports)
	assert.Nil(t, c.LivenessProbe)

	pinned := render(t, "image.digest=sha256:"+strings.Repeat("ab", 32), "image.tag=9.9.9")
	assert.Equal(t, "registry.example.com/consul-conn-exporter@sha256:"+strings.Repeat("ab", 32), pinned.daemonSet.Spec.Template.Spec.Containers[0].Image)

	token := render(t, modes["token"].set...)
	spec := token.daemonSet.Spec.Template.Spec
	assert.Contains(t, spec.Containers[0].Args, "--consul.token-file=/etc/consul-conn-exporter/token")
	require.Len(t, spec.Volumes, 1)
	assert.Equal(t, "consul-token", spec.Volumes[0].Secret.SecretName)
}

// prometheus.rules.enabled renders a PrometheusRule, labelled for a
// Prometheus' ruleSelector, whose groups are exactly those of
// deploy/prometheus: the mixin's alerts and the fleet's rules.
func TestThePrometheusRuleIsTheMixins(t *testing.T) {
	set := []string{"prometheus.rules.enabled=true", "prometheus.rules.additionalLabels.release=kps"}
	out, err := helm(t, withValues([]string{"lint", "--strict", chart}, set)...)
	require.NoError(t, err, "helm lint:\n%s", out)
	assert.Nil(t, render(t).rules, "off by default")
	r := render(t, set...)
	require.NotNil(t, r.rules)
	assert.Equal(t, "kps", r.rules.Labels["release"])
	shipped := append(ruleGroups(t, "prometheus/alerts.yml"), ruleGroups(t, "prometheus/rules.yml")...)
	require.Len(t, shipped, 2)
	assert.Equal(t, shipped, r.rules.Spec.Groups)
}

// prometheus.targetLabels puts the fleet's labels on every series each
// monitor scrapes, as the mixin's fleet rules split the fleet by them.
func TestTheMonitorsAddTheFleetsLabels(t *testing.T) {
	set := []string{"prometheus.podMonitor.enabled=true", "prometheus.monitor.enabled=true",
		"prometheus.targetLabels.datacenter=dc1", "prometheus.targetLabels.cluster=east"}
	out, err := helm(t, withValues([]string{"lint", "--strict", chart}, set)...)
	require.NoError(t, err, "helm lint:\n%s", out)
	r := render(t, set...)
	replace := func(label, value string) *monitoringv1.RelabelConfig {
		return &monitoringv1.RelabelConfig{Action: "replace", TargetLabel: label, Replacement: &value}
	}
	want := []monitoringv1.RelabelConfig{*replace("cluster", "east"), *replace("datacenter", "dc1")}
	require.NotNil(t, r.podMonitor)
	require.NotNil(t, r.serviceMonitor)
	assert.Equal(t, want, r.podMonitor.Spec.PodMetricsEndpoints[0].RelabelConfigs)
	assert.Equal(t, want, r.serviceMonitor.Spec.Endpoints[0].RelabelConfigs)
	assert.Empty(t, render(t, "prometheus.podMonitor.enabled=true").podMonitor.Spec.PodMetricsEndpoints[0].RelabelConfigs, "none by default")
}

// The manifests in deploy/kubernetes are the chart's, for the values that
// make them: the DaemonSet with --refusals and a PodMonitor equal in every
// field that matters to daemonset-refusals.yaml and podmonitor.yaml.
func TestTheManifestsAreTheCharts(t *testing.T) {
	r := render(t, "refusals.enabled=true", "prometheus.podMonitor.enabled=true")
	var ds appsv1.DaemonSet
	decode(t, "kubernetes/daemonset-refusals.yaml", &ds)
	assertSamePod(t, ds.Spec.Template.Spec, r.daemonSet.Spec.Template.Spec)
	var pm monitoringv1.PodMonitor
	decode(t, "kubernetes/podmonitor.yaml", &pm)
	require.NotNil(t, r.podMonitor)
	assert.Equal(t, pm.Spec.PodMetricsEndpoints, r.podMonitor.Spec.PodMetricsEndpoints)

	plain := render(t)
	var plainDS appsv1.DaemonSet
	decode(t, "kubernetes/daemonset.yaml", &plainDS)
	assertSamePod(t, plainDS.Spec.Template.Spec, plain.daemonSet.Spec.Template.Spec)
}

func assertSamePod(t *testing.T, manifest, chart corev1.PodSpec) {
	t.Helper()
	assert.Equal(t, manifest.HostNetwork, chart.HostNetwork)
	assert.Equal(t, manifest.DNSPolicy, chart.DNSPolicy)
	assert.Equal(t, manifest.Tolerations, chart.Tolerations)
	require.Len(t, chart.Containers, 1)
	m, c := manifest.Containers[0], chart.Containers[0]
	assert.Equal(t, m.Args, c.Args)
	assert.Equal(t, m.Ports, c.Ports)
	assert.Equal(t, m.LivenessProbe, c.LivenessProbe)
	assert.Equal(t, m.ReadinessProbe, c.ReadinessProbe)
	assert.Equal(t, m.Resources, c.Resources)
	assert.Equal(t, m.SecurityContext, c.SecurityContext)
}
