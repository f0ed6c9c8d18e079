package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kreabus/kreabus/internal/logging"
	"github.com/kreabus/kreabus/internal/natstest"
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
	var failing atomic.Pointer[error]
	s.AddCheck("nats", func(context.Context) error {
		if err := failing.Load(); err != nil {
			return *err
		}
		return nil
	})
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
	natstest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if code, body := get(t, base+"/readyz"); code != http.StatusOK {
			return fmt.Errorf("readyz %d %s", code, body)
		}
		return nil
	})
	notConnected := errors.New("nats not connected")
	failing.Store(&notConnected)
	natstest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		code, body := get(t, base+"/readyz")
		var r struct{ Failed map[string]string }
		if code != http.StatusServiceUnavailable || json.Unmarshal([]byte(body), &r) != nil || r.Failed["nats"] != "nats not connected" {
			return fmt.Errorf("readyz with a failing check: %d %s", code, body)
		}
		return nil
	})
	failing.Store(nil)
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
	code, body := get(t, base+"/metrics")
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

// TestReadyzPrompt: /readyz answers within 100 ms whatever its checks do:
// a check that hangs (NATS stalled) is answered by its last result, or as
// failed before it ever finished; probes meanwhile share the one run.
func TestReadyzPrompt(t *testing.T) {
	s := New(logging.Discard)
	var hang atomic.Bool
	var runs atomic.Int32
	s.AddCheck("fast", func(context.Context) error { return nil })
	s.AddCheck("nats", func(ctx context.Context) error {
		runs.Add(1)
		if hang.Load() {
			<-ctx.Done() // as a request to a server that does not answer
			return ctx.Err()
		}
		return nil
	})
	if err := s.Start(Config{Listen: "127.0.0.1:0"}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Shutdown(context.Background()) })
	base := "http://" + s.Addr()
	probe := func() (int, string, time.Duration) {
		start := time.Now()
		code, body := get(t, base+"/readyz")
		return code, body, time.Since(start)
	}
	natstest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if code, body, _ := probe(); code != http.StatusOK {
			return fmt.Errorf("readyz %d %s", code, body)
		}
		return nil
	})

	hang.Store(true)
	before := runs.Load()
	for range 10 {
		code, body, took := probe()
		if took > 100*time.Millisecond {
			t.Errorf("readyz took %v while a check hangs", took)
		}
		if code != http.StatusOK {
			t.Errorf("readyz %d %s: want the last result (ready) while the check runs", code, body)
		}
	}
	if n := runs.Load() - before; n != 1 {
		t.Errorf("%d runs of the hanging check for 10 probes, want 1", n)
	}
	// The hanging run ends at CheckTimeout with a failure, reported next.
	natstest.CheckFor(t, CheckTimeout+5*time.Second, 20*time.Millisecond, func() error {
		code, body, took := probe()
		if took > 100*time.Millisecond {
			t.Errorf("readyz took %v while a check hangs", took)
		}
		if code != http.StatusServiceUnavailable || !strings.Contains(body, "deadline exceeded") {
			return fmt.Errorf("readyz %d %s", code, body)
		}
		return nil
	})

	// A check that never finished a run is a failure, reported at once.
	s2 := New(logging.Discard)
	s2.AddCheck("nats", func(ctx context.Context) error { <-ctx.Done(); return ctx.Err() })
	start := time.Now()
	failed := s2.Ready(context.Background())
	if took := time.Since(start); took > 100*time.Millisecond {
		t.Errorf("Ready took %v", took)
	}
	if failed["nats"] != "not checked yet" {
		t.Errorf("failed %v", failed)
	}
}
