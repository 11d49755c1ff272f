// Package deploy holds the files operators copy as they are; its tests run
// each file's own checker.
package deploy

import (
	"debug/elf"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/consul-conn-exporter/consul-conn-exporter/internal/testkit/programs"
)

func TestSystemdUnitsVerifyAndAreHardened(t *testing.T) {
	analyze := programs.Need(t, "systemd-analyze", "apt-get install systemd")
	// verify insists that ExecStart's program exists: point the units at a
	// freshly built exporter.
	dir := t.TempDir()
	binary := filepath.Join(dir, "consul_conn_exporter")
	out, err := exec.Command("go", "build", "-o", binary, "..").CombinedOutput()
	require.NoError(t, err, "%s", out)
	units, err := filepath.Glob("systemd/*")
	require.NoError(t, err)
	var copies []string
	for _, unit := range units {
		text, err := os.ReadFile(unit)
		require.NoError(t, err)
		copy := filepath.Join(dir, filepath.Base(unit))
		require.NoError(t, os.WriteFile(copy, []byte(strings.ReplaceAll(string(text), "/usr/bin/consul_conn_exporter", binary)), 0o644))
		copies = append(copies, copy)
	}

	// verify exits 0 on unknown keys and bad values, and only says so.
	out, err = exec.Command(analyze, append([]string{"verify"}, copies...)...).CombinedOutput()
	assert.NoError(t, err)
	assert.Empty(t, strings.TrimSpace(string(out)), "systemd-analyze verify")

	for _, unit := range copies {
		if !strings.HasSuffix(unit, ".service") {
			continue
		}
		// Exposure 2.0 of 10: systemd rates it "OK" and better.
		out, err := exec.Command(analyze, "security", "--offline=true", "--threshold=20", unit).CombinedOutput()
		assert.NoError(t, err, "systemd-analyze security %s:\n%s", filepath.Base(unit), out)
	}
}

func TestPrometheusConfigAndAlertRules(t *testing.T) {
	promtool := programs.Need(t, "promtool", "apt-get install prometheus")
	for _, args := range [][]string{
		{"check", "config", "prometheus/prometheus.yml"},
		{"check", "rules", "--lint=all", "--lint-fatal", "prometheus/alerts.yml", "prometheus/rules.yml"},
		{"test", "rules", "prometheus/alerts_test.yml", "prometheus/rules_test.yml"},
	} {
		out, err := exec.Command(promtool, args...).CombinedOutput()
		assert.NoError(t, err, "promtool %s:\n%s", strings.Join(args, " "), out)
	}
}

// Both DaemonSets are strictly valid, in the node's network (ss must see
// the node's sockets), in a namespace of their own labelled privileged for
// that alone; their container sets every field the restricted Pod Security
// Standard asks, probes that run no collection, requests and limits, and an
// image in a registry (a placeholder to replace). The one with --refusals
// adds only the capabilities its kernel program needs at start.
func TestDaemonSetsPassReview(t *testing.T) {
	var ns corev1.Namespace
	decode(t, "kubernetes/namespace.yaml", &ns)
	assert.Equal(t, "privileged", ns.Labels["pod-security.kubernetes.io/enforce"], "hostNetwork")
	for file, add := range map[string][]corev1.Capability{"kubernetes/daemonset.yaml": nil, "kubernetes/daemonset-refusals.yaml": {"BPF", "PERFMON"}} {
		t.Run(file, func(t *testing.T) {
			var ds appsv1.DaemonSet
			decode(t, file, &ds)
			assert.Equal(t, "DaemonSet", ds.Kind)
			assert.Equal(t, ns.Name, ds.Namespace)
			spec := ds.Spec.Template.Spec
			assert.True(t, spec.HostNetwork, "ss must see the node's sockets")
			assert.Equal(t, ds.Spec.Selector.MatchLabels, ds.Spec.Template.Labels)
			require.Len(t, spec.Containers, 1)
			c := spec.Containers[0]
			assertRestricted(t, c, add)
			assert.Equal(t, add != nil, slices.Contains(c.Args, "--refusals"))
			assert.Regexp(t, `^registry\.example\.com/consul-conn-exporter:\d+\.\d+\.\d+$`, c.Image, "a registry to replace, a version")
			probesRunNoCollection(t, c)
			assert.False(t, c.Resources.Requests.Cpu().IsZero())
			assert.False(t, c.Resources.Requests.Memory().IsZero())
			assert.False(t, c.Resources.Limits.Memory().IsZero())
		})
	}
}

// The PodMonitor scrapes the DaemonSet's pods on their metrics port.
func TestPodMonitorScrapesTheDaemonSet(t *testing.T) {
	var pm monitoringv1.PodMonitor
	decode(t, "kubernetes/podmonitor.yaml", &pm)
	assert.Equal(t, "PodMonitor", pm.Kind)
	var ds appsv1.DaemonSet
	decode(t, "kubernetes/daemonset.yaml", &ds)
	assert.Equal(t, ds.Namespace, pm.Namespace)
	assert.Equal(t, ds.Spec.Template.Labels, pm.Spec.Selector.MatchLabels)
	require.Len(t, pm.Spec.PodMetricsEndpoints, 1)
	endpoint := pm.Spec.PodMetricsEndpoints[0]
	require.NotNil(t, endpoint.Port)
	assert.Equal(t, ds.Spec.Template.Spec.Containers[0].Ports[0].Name, *endpoint.Port)
	assert.Equal(t, "/metrics", endpoint.Path)
}

// ruleGroups are the groups of a rule file, read strictly as the
// Prometheus operator's type (what the chart's PrometheusRule holds).
func ruleGroups(t *testing.T, file string) []monitoringv1.RuleGroup {
	t.Helper()
	var rules struct {
		Groups []monitoringv1.RuleGroup `json:"groups"`
	}
	text, err := os.ReadFile(file)
	require.NoError(t, err)
	require.NoError(t, yaml.UnmarshalStrict(text, &rules), "%s: unknown or misspelt fields", file)
	return rules.Groups
}

// decode reads a manifest into its Kubernetes API type; a field the type
// does not know (a typo) fails.
func decode(t *testing.T, file string, into any) {
	t.Helper()
	text, err := os.ReadFile(file)
	require.NoError(t, err)
	require.NoError(t, yaml.UnmarshalStrict(text, into), "%s: unknown or misspelt fields", file)
}

// assertRestricted checks what the restricted Pod Security Standard asks of
// a container (the pod's own fields, hostNetwork, are the DaemonSet's one
// documented exception): not root, no privilege escalation, every
// capability dropped and none added but add, the runtime's seccomp profile,
// and, beyond it, a read-only root. With capabilities to add, root: for
// another user they would not be in effect (no ambient capabilities in a
// pod).
func assertRestricted(t *testing.T, c corev1.Container, add []corev1.Capability) {
	t.Helper()
	sc := c.SecurityContext
	require.NotNil(t, sc)
	require.NotNil(t, sc.RunAsNonRoot)
	assert.Equal(t, add == nil, *sc.RunAsNonRoot)
	require.NotNil(t, sc.RunAsUser)
	assert.Equal(t, add == nil, *sc.RunAsUser != 0)
	require.NotNil(t, sc.AllowPrivilegeEscalation)
	assert.False(t, *sc.AllowPrivilegeEscalation)
	require.NotNil(t, sc.ReadOnlyRootFilesystem)
	assert.True(t, *sc.ReadOnlyRootFilesystem)
	assert.Nil(t, sc.Privileged)
	require.NotNil(t, sc.SeccompProfile)
	assert.Equal(t, corev1.SeccompProfileTypeRuntimeDefault, sc.SeccompProfile.Type)
	require.NotNil(t, sc.Capabilities)
	assert.Equal(t, []corev1.Capability{"ALL"}, sc.Capabilities.Drop)
	assert.Equal(t, add, sc.Capabilities.Add)
}

// probesRunNoCollection: liveness on /-/healthy, readiness on /-/ready, on
// the container's port.
func probesRunNoCollection(t *testing.T, c corev1.Container) {
	t.Helper()
	require.NotNil(t, c.LivenessProbe)
	require.NotNil(t, c.ReadinessProbe)
	assert.Equal(t, "/-/healthy", c.LivenessProbe.HTTPGet.Path)
	assert.Equal(t, "/-/ready", c.ReadinessProbe.HTTPGet.Path)
	for _, probe := range []*corev1.Probe{c.LivenessProbe, c.ReadinessProbe} {
		assert.Equal(t, c.Ports[0].Name, probe.HTTPGet.Port.String())
	}
}

func TestYAMLFilesLint(t *testing.T) {
	yamllint := programs.Need(t, "yamllint", "apt-get install yamllint")
	files, err := filepath.Glob("*/*.y*ml")
	require.NoError(t, err)
	out, err := exec.Command(yamllint, append([]string{"-d", "{extends: default, rules: {line-length: {max: 160}, document-start: disable}}"}, files...)...).CombinedOutput()
	assert.NoError(t, err, "yamllint:\n%s", out)
}

// The release build (deploy/build.sh, which the package and the images
// use) stamps the version it is given and the checkout's revision and
// branch, and makes a static binary, as the scratch and Alpine images need,
// of at most 17 MiB (go1.27.3, the release toolchain, adds 0.6 MiB to
// 1.26.8's 15.8).
func TestReleaseBuildIsStampedStaticAndSmall(t *testing.T) {
	git := programs.Need(t, "git", "apt-get install git")
	out := filepath.Join(t.TempDir(), "consul_conn_exporter")
	build, err := exec.Command("bash", "build.sh", out, "1.2.3").CombinedOutput()
	require.NoError(t, err, "%s", build)

	revision, err := exec.Command(git, "rev-parse", "HEAD").Output()
	require.NoError(t, err)
	branch, err := exec.Command(git, "rev-parse", "--abbrev-ref", "HEAD").Output()
	require.NoError(t, err)
	version, err := exec.Command(out, "--version").CombinedOutput()
	require.NoError(t, err)
	assert.Contains(t, string(version), fmt.Sprintf("consul_conn_exporter, version 1.2.3 (branch: %s, revision: %s)",
		strings.TrimSpace(string(branch)), strings.TrimSpace(string(revision))))
	assert.Regexp(t, `build user:\s+\S+@\S+`, string(version))
	assert.Regexp(t, `build date:\s+\d{8}-\d\d:\d\d:\d\d`, string(version))

	binary, err := elf.Open(out)
	require.NoError(t, err)
	defer binary.Close()
	for _, prog := range binary.Progs {
		assert.NotEqual(t, elf.PT_INTERP, prog.Type, "dynamically linked: needs a loader the images lack")
	}
	info, err := os.Stat(out)
	require.NoError(t, err)
	assert.LessOrEqual(t, info.Size(), int64(17<<20), "the product binary grew past 17 MiB")
	t.Logf("release binary: %.1f MiB", float64(info.Size())/(1<<20))

	// The Dockerfile builds with it too.
	dockerfile, err := os.ReadFile("container/Dockerfile")
	require.NoError(t, err)
	assert.Contains(t, string(dockerfile), "RUN bash deploy/build.sh /consul_conn_exporter")
	// And carries the OCI labels the scratch image's test reads back.
	containerfile, err := os.ReadFile("container/Containerfile.netlink")
	require.NoError(t, err)
	labels := regexp.MustCompile(`(?s)ARG VERSION\n.*?image.created="\$\{CREATED\}"\n`)
	require.NotEmpty(t, labels.Find(containerfile))
	assert.Equal(t, string(labels.Find(containerfile)), string(labels.Find(dockerfile)))
}

// Without the linker's stamps, the version and revision come from Go's
// build information, never blank.
func TestPlainBuildTakesVersionAndRevisionFromGo(t *testing.T) {
	git := programs.Need(t, "git", "apt-get install git")
	out := filepath.Join(t.TempDir(), "consul_conn_exporter")
	build := exec.Command("go", "build", "-buildvcs=true", "-o", out, "..")
	build.Env = append(os.Environ(), "GOFLAGS=")
	text, err := build.CombinedOutput()
	require.NoError(t, err, "%s", text)
	revision, err := exec.Command(git, "rev-parse", "HEAD").Output()
	require.NoError(t, err)
	version, err := exec.Command(out, "--version").CombinedOutput()
	require.NoError(t, err)
	assert.Regexp(t, `version \S+ \(branch: unknown, revision: `+strings.TrimSpace(string(revision)), string(version))
	assert.NotContains(t, string(version), "version  (")
}

// `go run .`, the README's first command, says the VERSION file's version.
func TestGoRunShowsTheVersionFile(t *testing.T) {
	programs.NotShort(t, "builds and runs the exporter")
	want, err := os.ReadFile("../VERSION")
	require.NoError(t, err)
	version := strings.TrimSpace(string(want))
	out, err := exec.Command("go", "run", "..", "--version").CombinedOutput()
	require.NoError(t, err, "%s", out)
	assert.Contains(t, string(out), "version "+version+" ")
	assert.Contains(t, string(out), "license:          Apache-2.0")
	out, err = exec.Command("go", "run", "..", "--once", "--command", "true", "--textfile.directory", t.TempDir()).CombinedOutput()
	require.NoError(t, err, "%s", out)
	assert.Contains(t, string(out), "version=\"(version="+version+",")
}

// No cluster runs here: the consul-k8s values are checked for the keys the
// chart reads, a valid container for each, and arguments the binary takes.
func TestConsulK8sValuesPutTheExporterBesideEachAgent(t *testing.T) {
	text, err := os.ReadFile("kubernetes/consul-k8s-values.yaml")
	require.NoError(t, err)
	var values map[string]struct {
		Annotations     string             `json:"annotations"`
		ExtraContainers []corev1.Container `json:"extraContainers"`
	}
	require.NoError(t, yaml.UnmarshalStrict(text, &values), "unknown or misspelt fields")
	for _, role := range []string{"server", "client"} {
		t.Run(role, func(t *testing.T) {
			v, ok := values[role]
			require.True(t, ok, "no %s values", role)
			var annotations map[string]string
			require.NoError(t, yaml.UnmarshalStrict([]byte(v.Annotations), &annotations), "annotations is a YAML string")
			assert.Equal(t, "true", annotations["prometheus.io/scrape"])
			require.Len(t, v.ExtraContainers, 1)
			c := v.ExtraContainers[0]
			require.Len(t, c.Ports, 1)
			assert.Equal(t, "conn-metrics", c.Ports[0].Name)
			assert.Equal(t, annotations["prometheus.io/port"], fmt.Sprint(c.Ports[0].ContainerPort))
			assert.Contains(t, c.Args, "--source=netlink", "no ss and no /proc in the sidecar")
			assert.Contains(t, c.Args, fmt.Sprintf("--web.listen-address=:%d", c.Ports[0].ContainerPort))
			assertRestricted(t, c, nil)
			probesRunNoCollection(t, c)
			assert.Regexp(t, `^registry\.example\.com/consul-conn-exporter:\d+\.\d+\.\d+$`, c.Image)

			// The binary takes every argument: kingpin parses them all
			// before it acts on --help.
			programs.NotShort(t, "runs the exporter")
			out, err := exec.Command("go", append([]string{"run", ".."}, append(c.Args, "--help")...)...).CombinedOutput()
			assert.NoError(t, err, "%s", out)
			// And their values: check validates as the exporter does (no
			// usage error; here nothing listens on the ports, which check
			// says).
			var counting []string
			for _, arg := range c.Args {
				if !strings.HasPrefix(arg, "--web.") {
					counting = append(counting, arg)
				}
			}
			out, _ = exec.Command("go", append([]string{"run", "..", "check"}, counting...)...).CombinedOutput()
			assert.NotContains(t, string(out), "error:", "%s", out)
			assert.Contains(t, string(out), "UNKNOWN: nothing listens on port", "%s", out)
		})
	}
}

// Every alert fires in a test of alerts_test.yml, and every recording rule
// is evaluated in one of rules_test.yml, over a fleet (three agents or more,
// of two datacenters).
func TestEveryRuleIsTested(t *testing.T) {
	type tests struct {
		Tests []struct {
			InputSeries []struct {
				Series string `json:"series"`
			} `json:"input_series"`
			AlertRuleTest []struct {
				Alertname string            `json:"alertname"`
				ExpAlerts []json.RawMessage `json:"exp_alerts"`
			} `json:"alert_rule_test"`
			PromQLExprTest []struct {
				Expr string `json:"expr"`
			} `json:"promql_expr_test"`
		} `json:"tests"`
	}
	tested := map[string]bool{}
	fleet := map[string]map[string]bool{"instance": {}, "datacenter": {}}
	fleetLabel := regexp.MustCompile(`\b(instance|datacenter)="([^"]*)"`)
	for _, file := range []string{"prometheus/alerts_test.yml", "prometheus/rules_test.yml"} {
		var tests tests
		text, err := os.ReadFile(file)
		require.NoError(t, err)
		require.NoError(t, yaml.Unmarshal(text, &tests))
		for _, test := range tests.Tests {
			for _, r := range test.AlertRuleTest {
				if len(r.ExpAlerts) > 0 {
					tested[r.Alertname] = true
				}
			}
			for _, r := range test.PromQLExprTest {
				tested[r.Expr] = true
			}
			if file == "prometheus/rules_test.yml" {
				for _, s := range test.InputSeries {
					for _, label := range fleetLabel.FindAllStringSubmatch(s.Series, -1) {
						fleet[label[1]][label[2]] = true
					}
				}
			}
		}
	}
	assert.GreaterOrEqual(t, len(fleet["instance"]), 3, "the fleet's agents")
	assert.GreaterOrEqual(t, len(fleet["datacenter"]), 2, "the fleet's datacenters")
	for _, file := range []string{"prometheus/alerts.yml", "prometheus/rules.yml"} {
		for _, g := range ruleGroups(t, file) {
			for _, r := range g.Rules {
				assert.True(t, tested[r.Alert+r.Record], "%s: %s%s has no test that fires or evaluates it", file, r.Alert, r.Record)
			}
		}
	}
}

// Every alert links to its runbook: a section of docs/metrics.md, under
// the alert's own name, that says what to do.
func TestEveryAlertHasARunbook(t *testing.T) {
	doc, err := os.ReadFile("../docs/metrics.md")
	require.NoError(t, err)
	const base = "https://github.com/consul-conn-exporter/consul-conn-exporter/blob/main/docs/metrics.md#"
	alerts := 0
	for _, g := range ruleGroups(t, "prometheus/alerts.yml") {
		for _, r := range g.Rules {
			if r.Alert == "" {
				continue
			}
			alerts++
			url := r.Annotations["runbook_url"]
			require.True(t, strings.HasPrefix(url, base), "%s: runbook_url %q", r.Alert, url)
			anchor := strings.TrimPrefix(url, base)
			assert.Equal(t, strings.ToLower(r.Alert), anchor, "%s: the section is named after the alert", r.Alert)
			assert.Contains(t, string(doc), "\n### "+r.Alert+"\n\n", "%s: no runbook section in docs/metrics.md", r.Alert)
		}
	}
	assert.GreaterOrEqual(t, alerts, 11)
}
