package promreg

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func TestRegister(t *testing.T) {
	reg := prometheus.NewRegistry()
	opts := prometheus.CounterOpts{Name: "kreabus_test_total", Help: "test"}
	first, err := Register(reg, prometheus.NewCounter(opts))
	if err != nil {
		t.Fatal(err)
	}
	again, err := Register(reg, prometheus.NewCounter(opts))
	if err != nil || again != first {
		t.Fatalf("second registration: %v, same collector %v", err, again == first)
	}
	if _, err := Register(reg, prometheus.NewGauge(prometheus.GaugeOpts{Name: "kreabus_test_total", Help: "other"})); err == nil {
		t.Fatal("a different collector under the same name registered")
	}
	if _, err := Register[prometheus.Counter](nil, prometheus.NewCounter(opts)); err != nil {
		t.Fatalf("nil registerer: %v", err)
	}
}
