package mixin

import (
	"encoding/json"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/consul-conn-exporter/consul-conn-exporter/internal/testkit/programs"
)

// jsonnet runs a tool of go-jsonnet, as pinned in tools/go.mod, here, and
// fails the test if it fails.
func jsonnet(t *testing.T, tool string, args ...string) []byte {
	t.Helper()
	out, err := programs.Tool(t, tool, args...).CombinedOutput()
	require.NoError(t, err, "%s %s:\n%s", tool, strings.Join(args, " "), out)
	return out
}

// The files deploy/ and the chart ship are what go generate makes of the
// mixin, byte for byte: the command is doc.go's own, into a directory of
// the test's.
func TestShippedFilesAreWhatTheMixinMakes(t *testing.T) {
	doc, err := os.ReadFile("doc.go")
	require.NoError(t, err)
	line := regexp.MustCompile(`(?m)^//go:generate go tool -modfile=\.\./tools/go\.mod jsonnet (.*) -m \.\. (.*)$`).FindSubmatch(doc)
	require.NotNil(t, line, "doc.go's go:generate line")
	dir := t.TempDir()
	jsonnet(t, "jsonnet", slices.Concat(strings.Fields(string(line[1])), []string{"-m", dir}, strings.Fields(string(line[2])))...)

	var made []string
	require.NoError(t, filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		name, err := filepath.Rel(dir, path)
		require.NoError(t, err)
		made = append(made, name)
		want, err := os.ReadFile(path)
		require.NoError(t, err)
		got, err := os.ReadFile(filepath.Join("..", name))
		require.NoError(t, err)
		assert.Equal(t, string(want), string(got), "%s differs from the mixin's: run go generate ./mixin", name)
		return nil
	}))
	assert.ElementsMatch(t, []string{"deploy/prometheus/alerts.yml", "deploy/prometheus/rules.yml", "deploy/grafana/consul-conn-exporter.json",
		"charts/consul-conn-exporter/files/prometheus-rules.yaml"}, made)
}

func TestJsonnetIsFormatted(t *testing.T) {
	files, err := filepath.Glob("*sonnet")
	require.NoError(t, err)
	require.NotEmpty(t, files)
	jsonnet(t, "jsonnetfmt", append([]string{"--test"}, files...)...)
}

type rules struct {
	Groups []struct {
		Name  string `json:"name"`
		Rules []struct {
			Alert       string            `json:"alert"`
			Record      string            `json:"record"`
			Expr        string            `json:"expr"`
			Annotations map[string]string `json:"annotations"`
		} `json:"rules"`
	} `json:"groups"`
}

// exporterSeries finds the exporter's own series in a query: consul_...
// names, not a recorded name (level:consul_...:operations), each with the
// matchers it is selected with. Quoted text (a file's name, a job) is not a
// name: series are found where it is blanked.
var (
	exporterSeries = regexp.MustCompile(`(?:^|[^:\w])(consul_\w+)(\{[^}]*\})?`)
	quoted         = regexp.MustCompile(`"[^"]*"`)
)

// selectors are the exporter's series in expr, and their matchers.
func selectors(expr string) (found [][2]string) {
	blanked := quoted.ReplaceAllStringFunc(expr, func(q string) string { return `"` + strings.Repeat("x", len(q)-2) + `"` })
	for _, at := range exporterSeries.FindAllStringSubmatchIndex(blanked, -1) {
		matchers := ""
		if at[4] >= 0 {
			matchers = expr[at[4]:at[5]]
		}
		found = append(found, [2]string{expr[at[2]:at[3]], matchers})
	}
	return found
}

// An operator's _config reaches every query: their selector is on every
// series of the exporter's, the fleet's labels split the fleet's rules and
// name them, the thresholds and the runbooks' base are theirs; and what
// comes out is still valid for Prometheus.
func TestConfigReachesEveryQuery(t *testing.T) {
	promtool := programs.Need(t, "promtool", "apt-get install prometheus")
	out := jsonnet(t, "jsonnet", "-e", `
local mixin = (import 'mixin.libsonnet') + { _config+:: {
  selector: 'job="consul"',
  fleetLabels: ['cluster', 'datacenter'],
  nearLimitRatio: 0.9,
  refusalWindow: '10m',
  runbookURLBase: 'https://runbooks.example/consul/',
} };
{ alerts: mixin.prometheusAlerts, rules: mixin.prometheusRules, dashboard: mixin.grafanaDashboards['consul-conn-exporter.json'] }`)
	var made struct {
		Alerts, Rules rules
		Dashboard     struct {
			Templating struct{ List []struct{ Name string } }
			Panels     []struct {
				Type, Title string
				Targets     []struct{ Expr string }
			}
		}
	}
	require.NoError(t, json.Unmarshal(out, &made))

	dir := t.TempDir()
	for name, file := range map[string]rules{"alerts.yml": made.Alerts, "rules.yml": made.Rules} {
		text, err := json.Marshal(file)
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(filepath.Join(dir, name), text, 0o644))
	}
	check, err := exec.Command(promtool, "check", "rules", filepath.Join(dir, "alerts.yml"), filepath.Join(dir, "rules.yml")).CombinedOutput()
	require.NoError(t, err, "promtool check rules:\n%s", check)

	selected := func(where, expr string) {
		t.Helper()
		for _, series := range selectors(expr) {
			assert.Contains(t, series[1], `job="consul"`, "%s: %s in %s", where, series[0], expr)
		}
	}
	alerts := 0
	for _, g := range made.Alerts.Groups {
		for _, r := range g.Rules {
			alerts++
			selected(r.Alert, r.Expr)
			assert.Equal(t, "https://runbooks.example/consul/"+strings.ToLower(r.Alert), r.Annotations["runbook_url"])
			if strings.HasSuffix(r.Alert, "NearConnectionLimit") {
				assert.Contains(t, r.Expr, "> 0.9", r.Alert)
			}
		}
	}
	assert.Positive(t, alerts)
	records := 0
	for _, g := range made.Rules.Groups {
		for _, r := range g.Rules {
			records++
			selected(r.Record, r.Expr)
			if !strings.HasPrefix(r.Record, "instance:") {
				assert.True(t, strings.HasPrefix(r.Record, "cluster_datacenter:"), r.Record)
				assert.Contains(t, r.Expr, "by (cluster, datacenter", r.Record)
			}
			if strings.Contains(r.Record, "refused") {
				assert.Contains(t, r.Expr, "[10m]", r.Record)
			}
		}
	}
	assert.Positive(t, records)

	var variables []string
	for _, v := range made.Dashboard.Templating.List {
		variables = append(variables, v.Name)
	}
	assert.Equal(t, []string{"datasource", "cluster", "datacenter", "job", "instance"}, variables)
	for _, p := range made.Dashboard.Panels {
		for _, target := range p.Targets {
			selected(p.Title, target.Expr)
			assert.Contains(t, target.Expr, `cluster=~"$cluster",datacenter=~"$datacenter"`, p.Title)
			assert.NotRegexp(t, `(^|[^_])datacenter:`, target.Expr, "%s: the fleet's rules are named after both labels", p.Title)
		}
	}
}

// A fleet split by no label, or by the agents' own, is refused, saying
// what to set.
func TestFleetLabelsThatSplitNoFleetAreRefused(t *testing.T) {
	for labels, says := range map[string]string{
		"[]":                         "fleetLabels: name the target labels the fleet is split by",
		"['datacenter', 'instance']": "fleetLabels: job and instance are the agents, not a fleet of them",
		"['job']":                    "fleetLabels: job and instance are the agents, not a fleet of them",
	} {
		out, err := programs.Tool(t, "jsonnet", "-e",
			"((import 'mixin.libsonnet') + { _config+:: { fleetLabels: "+labels+" } }).prometheusRules").CombinedOutput()
		require.Error(t, err, labels)
		assert.Contains(t, string(out), says, labels)
	}
}
