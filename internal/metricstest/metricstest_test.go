package metricstest

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func TestSumFindsNoMissingSeries(t *testing.T) {
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "kreabus_test_total", Help: "test"}, []string{"code", "kind"})
	reg.MustRegister(c)
	c.WithLabelValues("200", "a").Add(2)
	c.WithLabelValues("200", "b").Add(3)
	if v, n, err := Sum(reg, "kreabus_test_total", "code", "200"); err != nil || v != 5 || n != 2 {
		t.Errorf("present series: %v over %d, %v", v, n, err)
	}
	if v := Value(t, reg, "kreabus_test_total", "code", "200", "kind", "a"); v != 2 {
		t.Errorf("one series: %v", v)
	}
	for _, q := range [][]string{{"kreabus_renamed_total"}, {"kreabus_test_total", "code", "500"}, {"kreabus_test_total", "outcome", "200"}} {
		if v, n, err := Sum(reg, q[0], q[1:]...); err != nil || n != 0 {
			t.Errorf("%q: %v over %d series, %v; want no series", q, v, n, err)
		}
	}
	if _, _, err := Sum(reg, "kreabus_test_total", "code"); err == nil {
		t.Error("odd label list: no error")
	}
}
