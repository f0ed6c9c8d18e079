// Package metricstest reads metrics out of a Prometheus registry in tests.
package metricstest

import (
	"fmt"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// Sum sums the values of the series of name in g that carry the given
// label pairs (a counter's or gauge's value, a histogram's sample count)
// and says how many series there were.
func Sum(g prometheus.Gatherer, name string, labels ...string) (sum float64, n int, err error) {
	if len(labels)%2 != 0 {
		return 0, 0, fmt.Errorf("metric %s: odd label list %q", name, labels)
	}
	mfs, err := g.Gather()
	if err != nil {
		return 0, 0, err
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			have := map[string]string{}
			for _, lp := range m.GetLabel() {
				have[lp.GetName()] = lp.GetValue()
			}
			for i := 0; i+1 < len(labels); i += 2 {
				if v, ok := have[labels[i]]; !ok || v != labels[i+1] {
					continue next
				}
			}
			switch {
			case m.Counter != nil:
				sum += m.Counter.GetValue()
			case m.Gauge != nil:
				sum += m.Gauge.GetValue()
			case m.Histogram != nil:
				sum += float64(m.Histogram.GetSampleCount())
			default:
				return 0, 0, fmt.Errorf("metric %s: not a counter, gauge or histogram", name)
			}
			n++
		}
	}
	return sum, n, nil
}

// Value is Sum for series that must exist: it fails the test when g has
// no such metric or no series with those labels, so a renamed metric or
// label cannot pass as a zero.
func Value(t testing.TB, g prometheus.Gatherer, name string, labels ...string) float64 {
	t.Helper()
	v, n, err := Sum(g, name, labels...)
	if err != nil {
		t.Fatal(err)
	}
	if n == 0 {
		t.Fatalf("metric %s: no series with labels %q", name, labels)
	}
	return v
}

// ValueOrZero is Value for a series that legitimately does not exist yet
// (a counter never incremented): absent, it is 0.
func ValueOrZero(t testing.TB, g prometheus.Gatherer, name string, labels ...string) float64 {
	t.Helper()
	v, _, err := Sum(g, name, labels...)
	if err != nil {
		t.Fatal(err)
	}
	return v
}
