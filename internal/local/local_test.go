package local

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/kreabus/kreabus/internal/natstest"
	"github.com/kreabus/kreabus/pkg/events"
	"github.com/kreabus/kreabus/pkg/krea"
)

// TestPipelineEndToEnd runs the whole pipeline in-process: a request
// published by a service reaches the simulated Krea API through the
// submitter, the simulator's webhook crosses real HTTP to the bridge, and a
// service consumes the completed event, with the request's metadata.
func TestPipelineEndToEnd(t *testing.T) {
	out := &natstest.Buffer{}
	ctx := context.Background()
	p, err := Start(ctx, Options{DataDir: t.TempDir(), NATSPort: -1, Listen: "127.0.0.1:0", JobTime: 200 * time.Millisecond, Out: out})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })

	_, js := natstest.ConnectJetStream(t, p.NATSURL())
	got := make(chan *events.Event, 16)
	ccfg, err := events.JobsConsumerConfig("e2e-test", events.WithStatuses(events.StatusCompleted, events.StatusFailed, events.StatusRejected))
	if err != nil {
		t.Fatal(err)
	}
	jc, err := js.CreateOrUpdateConsumer(ctx, events.StreamJobs, ccfg)
	if err != nil {
		t.Fatal(err)
	}
	cons, err := events.ConsumeJobs(js.Conn(), jc, func(_ context.Context, ev *events.Event) error {
		got <- ev
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cons.Stop)

	req, err := events.NewRequest("/generate/image/bfl/flux-1-dev", map[string]any{"prompt": "a red fox"})
	if err != nil {
		t.Fatal(err)
	}
	req.Metadata = []byte(`{"user":"42"}`)
	if _, err := events.PublishRequest(ctx, js, req); err != nil {
		t.Fatal(err)
	}

	var ev *events.Event
	select {
	case ev = <-got:
	case <-time.After(30 * time.Second):
		t.Fatalf("no terminal event within 30s; printer saw:\n%s", out.String())
	}
	if ev.Status != krea.StatusCompleted || ev.RequestID != req.RequestID || ev.Source != events.SourceWebhook {
		t.Fatalf("event %+v, want completed for %s via webhook", ev, req.RequestID)
	}
	if string(ev.Metadata) != `{"user":"42"}` {
		t.Errorf("Kreabus-Metadata = %q", ev.Metadata)
	}
	if ev.Job.Result == nil || len(ev.Job.Result.URLs) == 0 || !strings.HasPrefix(ev.Job.Result.URLs[0], p.Simulator().URL+"/images/") {
		t.Errorf("no result URL in %s", ev.Raw)
	}
	// The body is the simulator's job object byte for byte.
	if want, ok := p.Simulator().JobJSON(ev.JobID); !ok || !bytes.Equal(bytes.TrimSpace(want), bytes.TrimSpace(ev.Raw)) {
		t.Errorf("stored body differs from Krea's:\n got %s\nwant %s", ev.Raw, want)
	}
	if n := p.Simulator().Submissions(); n != 1 {
		t.Errorf("Krea saw %d submissions, want 1", n)
	}

	// Exactly one terminal event and one submitted event for the job.
	natstest.CheckFor(t, 10*time.Second, 50*time.Millisecond, func() error {
		s, err := js.Stream(ctx, events.StreamJobs)
		if err != nil {
			return err
		}
		for subj, want := range map[string]uint64{"krea.jobs.submitted": 1, "krea.jobs.completed": 1} {
			info, err := s.Info(ctx, jetstream.WithSubjectFilter(subj))
			if err != nil {
				return err
			}
			if info.State.Subjects[subj] != want {
				return errorf("%s has %d messages, want %d", subj, info.State.Subjects[subj], want)
			}
		}
		return nil
	})
	natstest.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		if !strings.Contains(out.String(), "completed  "+req.RequestID) {
			return errorf("printer did not print the completed event:\n%s", out.String())
		}
		return nil
	})
}

func TestSamplesEnd(t *testing.T) {
	out := &natstest.Buffer{}
	p, err := Start(context.Background(), Options{DataDir: t.TempDir(), NATSPort: -1, Listen: "127.0.0.1:0", JobTime: 100 * time.Millisecond, Out: out})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	if _, err := p.PublishSamples(context.Background(), 3); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.Done():
	case <-time.After(30 * time.Second):
		t.Fatalf("samples did not end:\n%s", out.String())
	}
	s := out.String()
	if strings.Count(s, "  completed ") != 2 || strings.Count(s, "  failed ") != 1 || strings.Count(s, "  mirrored ") != 2 ||
		strings.Count(s, "KREA_RESULTS/") != 2 || strings.Count(s, "image/png)") != 2 {
		t.Fatalf("want 2 completed and mirrored samples and 1 failed one:\n%s", s)
	}
}

func errorf(format string, args ...any) error { return fmt.Errorf(format, args...) }

// TestForeignJobRefused: with the ledger wired into the real bridge, a
// webhook whose valid token belongs to another request than the job's is
// answered 403 and stores nothing; a repeat of the job's own terminal
// webhook is answered 200 duplicate.
func TestForeignJobRefused(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	p, err := Start(ctx, Options{DataDir: dir, NATSPort: -1, Listen: "127.0.0.1:0", JobTime: 100 * time.Millisecond, Out: &natstest.Buffer{}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	ids, err := p.PublishSamples(ctx, 2)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.Done():
	case <-time.After(30 * time.Second):
		t.Fatal("samples did not end")
	}
	_, js := natstest.ConnectJetStream(t, p.NATSURL())
	// The job of the last sample that completed, and its request.
	var jobID, owner, other string
	natstest.CheckFor(t, 10*time.Second, 50*time.Millisecond, func() error {
		s, err := js.Stream(ctx, events.StreamJobs)
		if err != nil {
			return err
		}
		m, err := s.GetLastMsgForSubject(ctx, "krea.jobs.completed")
		if err != nil {
			return err
		}
		jobID, owner = m.Header.Get(events.HeaderJobID), m.Header.Get(events.HeaderRequestID)
		switch owner {
		case ids[0]:
			other = ids[1]
		case ids[1]:
			other = ids[0]
		default:
			return fmt.Errorf("completed job of request %q is no sample's", owner)
		}
		return nil
	})
	secret, err := os.ReadFile(filepath.Join(dir, "webhook-secret"))
	if err != nil {
		t.Fatal(err)
	}
	tk, err := events.NewTokenizer(strings.TrimSpace(string(secret)), "")
	if err != nil {
		t.Fatal(err)
	}
	body := []byte(`{"job_id":"` + jobID + `","status":"completed","created_at":null,"completed_at":null,"result":{"urls":[]}}`)
	post := func(requestID string) (int, string) {
		res, err := http.Post(tk.URL("http://"+p.BridgeAddr(), requestID), "application/json", bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		return res.StatusCode, string(b)
	}
	natstest.CheckFor(t, 10*time.Second, 50*time.Millisecond, func() error {
		if code, b := post(other); code != http.StatusForbidden {
			return fmt.Errorf("foreign job answered %d %s, want 403", code, b)
		}
		return nil
	})
	if code, b := post(owner); code != http.StatusOK || !strings.Contains(b, `"duplicate":true`) {
		t.Fatalf("repeat of the job's own webhook answered %d %s, want 200 duplicate", code, b)
	}
	s, _ := js.Stream(ctx, events.StreamJobs)
	info, err := s.Info(ctx, jetstream.WithSubjectFilter("krea.jobs.completed"))
	if err != nil {
		t.Fatal(err)
	}
	if n := info.State.Subjects["krea.jobs.completed"]; n != 2 {
		t.Fatalf("%d completed events, want 2", n)
	}
}
