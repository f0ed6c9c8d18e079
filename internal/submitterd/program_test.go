package submitterd

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/kreabus/kreabus/internal/config"
	"github.com/kreabus/kreabus/internal/natstest"
	"github.com/kreabus/kreabus/internal/program"
	"github.com/kreabus/kreabus/pkg/events"
	"github.com/kreabus/kreabus/pkg/krea/kreatest"
)

func TestMainMissingSetting(t *testing.T) {
	env := map[string]string{
		"KREA_API_TOKEN":         "tok-secret-123",
		"KREABUS_WEBHOOK_SECRET": "hook-secret-456",
	}
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	var stderr bytes.Buffer
	code := Main(context.Background(), nil, lookup, &stderr)
	out := stderr.String()
	if code != program.ExitConfig || strings.Count(out, "\n") != 1 || !strings.Contains(out, "KREABUS_PUBLIC_URL") {
		t.Errorf("exit %d, stderr %q", code, out)
	}
	env["KREABUS_PUBLIC_URL"] = "not a url"
	stderr.Reset()
	code = Main(context.Background(), nil, lookup, &stderr)
	out = stderr.String()
	if code != program.ExitConfig || strings.Count(out, "\n") != 1 || !strings.Contains(out, "KREABUS_PUBLIC_URL") ||
		strings.Contains(out, "tok-secret-123") || strings.Contains(out, "hook-secret-456") {
		t.Errorf("exit %d, stderr %q", code, out)
	}
}

// TestMainEndToEnd runs cmd/submitter's Main against an embedded NATS and
// the simulator: streams are created, a request becomes a submitted event
// (the ledger Recorder records the job), /readyz is 200, and cancelling the
// context (SIGTERM) exits 0. The API token never appears in the logs.
func TestMainEndToEnd(t *testing.T) {
	ns := natstest.RunServer(t)
	sim := kreatest.NewServer(kreatest.Config{Token: "sim-token-0123456789", WebhookAttempts: 1})
	defer sim.Close()
	env := map[string]string{
		"NATS_URL":                   ns.ClientURL(),
		"KREA_API_TOKEN":             "sim-token-0123456789",
		"KREA_API_URL":               sim.URL,
		"KREABUS_PUBLIC_URL":         "http://127.0.0.1:1",
		"KREABUS_WEBHOOK_SECRET":     testSecret,
		"KREABUS_ADMIN_LISTEN":       "127.0.0.1:0",
		"KREABUS_LOG_LEVEL":          "debug",
		"KREABUS_SUBMIT_CONCURRENCY": "4",
		// Webhooks go nowhere: the reconciler must poll the job.
		"KREABUS_WEBHOOK_GRACE": "500ms",
		"KREABUS_POLL_INTERVAL": "100ms",
	}
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	var logs natstest.Buffer
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	exit := make(chan int, 1)
	go func() { exit <- Main(ctx, nil, lookup, &logs) }()

	_, js := natstest.ConnectJetStream(t, ns.ClientURL())
	natstest.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		_, err := js.Stream(ctx, events.StreamRequests)
		return err
	})
	req := goodRequest("main-1")
	if _, err := events.PublishRequest(ctx, js, req, events.WithTraceParent(traceParent)); err != nil {
		t.Fatal(err)
	}
	var ev *events.Event
	natstest.CheckFor(t, 15*time.Second, 20*time.Millisecond, func() error {
		st, err := js.Stream(ctx, events.StreamJobs)
		if err != nil {
			return err
		}
		m, err := st.GetLastMsgForSubject(ctx, "krea.jobs.submitted")
		if err != nil {
			return err
		}
		ev, err = events.DecodeEvent(m.Subject, m.Header, m.Data)
		return err
	})
	if ev.RequestID != "main-1" || ev.Source != events.SourceSubmitter {
		t.Errorf("event %+v", ev)
	}
	// The webhook never arrives (the public URL is dead): the reconciler
	// polls the job and publishes its terminal event.
	natstest.CheckFor(t, 15*time.Second, 50*time.Millisecond, func() error {
		st, err := js.Stream(ctx, events.StreamJobs)
		if err != nil {
			return err
		}
		m, err := st.GetLastMsgForSubject(ctx, "krea.jobs.completed")
		if err != nil {
			return err
		}
		done, err := events.DecodeEvent(m.Subject, m.Header, m.Data)
		if err != nil {
			return err
		}
		if done.JobID != ev.JobID || done.Source != events.SourcePoll || done.RequestID != "main-1" {
			return fmt.Errorf("completed event %+v", done)
		}
		return nil
	})
	// The admin server answers on the address in the logs.
	var adminAddr string
	natstest.CheckFor(t, 5*time.Second, 20*time.Millisecond, func() error {
		for _, line := range strings.Split(logs.String(), "\n") {
			var rec map[string]any
			if json.Unmarshal([]byte(line), &rec) == nil && rec["admin"] != nil {
				adminAddr, _ = rec["admin"].(string)
			}
		}
		if adminAddr == "" {
			return fmt.Errorf("no admin address logged")
		}
		return nil
	})
	natstest.CheckFor(t, 10*time.Second, 50*time.Millisecond, func() error {
		resp, err := http.Get("http://" + adminAddr + "/readyz")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("readyz %d %s", resp.StatusCode, b)
		}
		return nil
	})
	resp, err := http.Get("http://" + adminAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, name := range []string{
		"kreabus_submitter_requests_consumed_total", "kreabus_submitter_api_calls_total",
		"kreabus_submitter_api_duration_seconds", "kreabus_submitter_retries_total",
		"kreabus_submitter_paused", "kreabus_submitter_pauses_total", "kreabus_nats_connected",
	} {
		if !bytes.Contains(metrics, []byte(name)) {
			t.Errorf("/metrics lacks %s", name)
		}
	}

	cancel()
	select {
	case code := <-exit:
		if code != program.ExitOK {
			t.Errorf("exit %d; logs:\n%s", code, logs.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Main did not return after the signal")
	}
	if out := logs.String(); strings.Contains(out, "sim-token-0123456789") || strings.Contains(out, testSecret) {
		t.Errorf("a secret is in the logs:\n%s", out)
	}
}

// TestExampleConfigLoads keeps config/submitter.yaml in step with the
// settings: every key must be known and the result valid.
func TestExampleConfigLoads(t *testing.T) {
	env := map[string]string{"KREA_API_TOKEN": "tok", "KREABUS_WEBHOOK_SECRET": "sec"}
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	var s Settings
	if err := config.Load(&s, "submitter", []string{"--config", "../../config/submitter.yaml"}, lookup); err != nil {
		t.Fatal(err)
	}
	if err := s.Validate(); err != nil {
		t.Fatal(err)
	}
	if s.Submitter.PublicURL != "https://kreabus.example.com" || s.Submitter.Concurrency != 16 {
		t.Errorf("loaded %+v", s.Submitter)
	}
}
