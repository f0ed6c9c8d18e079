package admin

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kreabus/kreabus/internal/logging"
)

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	res, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, string(b)
}

func TestEndpoints(t *testing.T) {
	s := New(logging.Discard)
	var failing error
	s.AddCheck("nats", func(context.Context) error { return failing })
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "kreabus_test_total", Help: "test"})
	s.Registry().MustRegister(c)
	c.Inc()
	if err := s.Start(Config{Listen: "127.0.0.1:0", Pprof: true}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Shutdown(context.Background()) })
	base := "http://" + s.Addr()

	if code, _ := get(t, base+"/healthz"); code != http.StatusOK {
		t.Fatalf("healthz %d", code)
	}
	if code, body := get(t, base+"/readyz"); code != http.StatusOK {
		t.Fatalf("readyz %d %s", code, body)
	}
	failing = errors.New("nats not connected")
	code, body := get(t, base+"/readyz")
	var r struct{ Failed map[string]string }
	if code != http.StatusServiceUnavailable || json.Unmarshal([]byte(body), &r) != nil || r.Failed["nats"] != "nats not connected" {
		t.Fatalf("readyz with a failing check: %d %s", code, body)
	}
	failing = nil
	s.SetDraining()
	if code, body := get(t, base+"/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "draining") {
		t.Fatalf("readyz while draining: %d %s", code, body)
	}
	if code, _ := get(t, base+"/healthz"); code != http.StatusOK {
		t.Fatalf("healthz while draining %d", code)
	}
	if code, _ := get(t, base+"/debug/pprof/cmdline"); code != http.StatusOK {
		t.Errorf("pprof on: %d", code)
	}
	code, body = get(t, base+"/metrics")
	for _, want := range []string{"kreabus_test_total 1", "go_goroutines", "process_resident_memory_bytes"} {
		if code != http.StatusOK || !strings.Contains(body, want) {
			t.Errorf("metrics lack %q (%d)", want, code)
		}
	}
}

func TestOff(t *testing.T) {
	s := New(logging.Discard)
	if err := s.Start(Config{}); err != nil || s.Addr() != "" {
		t.Fatalf("empty address: %v %q", err, s.Addr())
	}
	if err := s.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
}

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
