// Package exposition reads Prometheus' text format for tests, into
// `name{label="value",...}` -> value, labels sorted by name, and makes
// what the outputs are given to write.
package exposition

import (
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Parse reads every sample of r; an error means r is not valid text format.
func Parse(r io.Reader) (map[string]float64, error) {
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(r)
	if err != nil {
		return nil, err
	}
	metrics := map[string]float64{}
	for name, family := range families {
		for _, m := range family.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
			}
			sort.Strings(labels)
			key := name
			if len(labels) > 0 {
				key += "{" + strings.Join(labels, ",") + "}"
			}
			switch {
			case m.Histogram != nil: // as the text has it: _bucket{le=...}, _sum, _count
				h := m.GetHistogram()
				for _, b := range h.GetBucket() {
					bucket := append(slices.Clone(labels), fmt.Sprintf("le=%q", model.FloatString(b.GetUpperBound()).String()))
					sort.Strings(bucket)
					metrics[name+"_bucket{"+strings.Join(bucket, ",")+"}"] = float64(b.GetCumulativeCount())
				}
				suffix := ""
				if len(labels) > 0 {
					suffix = "{" + strings.Join(labels, ",") + "}"
				}
				metrics[name+"_sum"+suffix] = h.GetSampleSum()
				metrics[name+"_count"+suffix] = float64(h.GetSampleCount())
			case m.Counter != nil:
				metrics[key] = m.GetCounter().GetValue()
			case m.Untyped != nil:
				metrics[key] = m.GetUntyped().GetValue()
			default:
				metrics[key] = m.GetGauge().GetValue()
			}
		}
	}
	return metrics, nil
}

// Gauge is a gatherer of one gauge, name, at v: what an output writes.
func Gauge(name string, v float64) prometheus.Gatherer {
	reg := prometheus.NewPedanticRegistry()
	g := prometheus.NewGauge(prometheus.GaugeOpts{Name: name, Help: "A gauge for a test."})
	g.Set(v)
	reg.MustRegister(g)
	return reg
}
