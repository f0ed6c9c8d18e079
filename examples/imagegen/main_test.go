package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kreabus/kreabus/internal/natstest"
	"github.com/kreabus/kreabus/pkg/events"
	"github.com/kreabus/kreabus/pkg/krea"
)

// fakePipeline stands in for the submitter and the bridge: it takes each
// request off KREA_REQUESTS and publishes its job's events, ending as the
// prompt says ("fail", "reject", "never") or completed.
func fakePipeline(t *testing.T) (url string, seen func() []*events.Request) {
	t.Helper()
	s, _, js := natstest.JetStream(t)
	ctx := context.Background()
	if err := events.EnsureStreams(ctx, js, events.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	// Someone else's job, to be ignored.
	other := events.NewJobMsg(events.EventHeaders{JobID: uuid.NewString(), Status: krea.StatusCompleted, RequestID: "someone-else", Source: events.SourceWebhook}, []byte(`{}`))

	cons, err := js.CreateOrUpdateConsumer(ctx, events.StreamRequests, jetstream.ConsumerConfig{Durable: "fake-submitter", AckPolicy: jetstream.AckExplicitPolicy})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var reqs []*events.Request
	// The test may end while a callback is still publishing; what fails
	// then (the connection is closing) is no failure of the test.
	var stopping atomic.Bool
	report := func(err error) {
		if err != nil && !stopping.Load() {
			t.Error(err)
		}
	}
	cc, err := cons.Consume(func(m jetstream.Msg) {
		req, err := events.DecodeRequest(m.Data())
		if err != nil {
			t.Errorf("fake submitter got an invalid request: %v", err)
			_ = m.Term()
			return
		}
		mu.Lock()
		reqs = append(reqs, req)
		mu.Unlock()
		var in struct{ Prompt string }
		_ = json.Unmarshal(req.Input, &in)
		publish := func(h events.EventHeaders, body string) {
			h.RequestID, h.Metadata = req.RequestID, req.Metadata
			_, err := js.PublishMsg(ctx, events.NewJobMsg(h, []byte(body)))
			report(err)
		}
		_, err = js.PublishMsg(ctx, other)
		report(err)
		jobID := uuid.NewString()
		switch in.Prompt {
		case "reject":
			publish(events.EventHeaders{Status: events.StatusRejected, Source: events.SourceSubmitter, Reason: "refused by the API: 402"}, `{}`)
		case "never":
		default:
			publish(events.EventHeaders{JobID: jobID, Status: events.StatusSubmitted, Source: events.SourceSubmitter}, fmt.Sprintf(`{"job_id":%q,"status":"queued"}`, jobID))
			if in.Prompt == "fail" {
				publish(events.EventHeaders{JobID: jobID, Status: krea.StatusFailed, Source: events.SourceWebhook}, fmt.Sprintf(`{"job_id":%q,"status":"failed","error":{"code":"nsfw","message":"content filtered"}}`, jobID))
			} else {
				publish(events.EventHeaders{JobID: jobID, Status: krea.StatusCompleted, Source: events.SourceWebhook}, fmt.Sprintf(`{"job_id":%q,"status":"completed","result":{"urls":["https://cdn.example/%s.png"]}}`, jobID, jobID))
			}
		}
		_ = m.Ack()
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stopping.Store(true); cc.Stop() })
	return s.ClientURL(), func() []*events.Request {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(reqs)
	}
}

func runImagegen(t *testing.T, url string, args ...string) (int, string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	env := map[string]string{"NATS_URL": url}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	code := run(ctx, args, func(k string) string { return env[k] }, &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

func TestImagegenCompleted(t *testing.T) {
	url, seen := fakePipeline(t)
	code, out, errOut := runImagegen(t, url, "-prompt", "a red fox", "-user", "7")
	if code != 0 {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, out, errOut)
	}
	reqs := seen()
	if len(reqs) != 1 {
		t.Fatalf("%d requests published", len(reqs))
	}
	req := reqs[0]
	if req.Path != "/generate/image/bfl/flux-1-dev" || string(req.Metadata) != `{"app":"imagegen","user":"7"}` {
		t.Errorf("request %+v, metadata %s", req, req.Metadata)
	}
	var in map[string]any
	_ = json.Unmarshal(req.Input, &in)
	if in["prompt"] != "a red fox" || in["width"] != float64(1024) || in["height"] != float64(576) {
		t.Errorf("input %s", req.Input)
	}
	for _, want := range []string{
		"request " + req.RequestID + `: /generate/image/bfl/flux-1-dev "a red fox"`,
		"submitted request=" + req.RequestID + " job=",
		"completed request=" + req.RequestID + " job=",
		"\n  https://cdn.example/",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "someone-else") {
		t.Errorf("printed another request's event:\n%s", out)
	}
	if errOut != "" {
		t.Errorf("stderr: %s", errOut)
	}
}

func TestImagegenFailedAndRejected(t *testing.T) {
	url, _ := fakePipeline(t)
	code, out, _ := runImagegen(t, url, "-prompt", "fail")
	if code != 1 || !strings.Contains(out, `failed    request=`) || !strings.Contains(out, `reason="content filtered"`) {
		t.Errorf("failed job: exit %d\n%s", code, out)
	}
	code, out, _ = runImagegen(t, url, "-prompt", "reject")
	if code != 1 || !strings.Contains(out, `rejected  request=`) || !strings.Contains(out, `reason="refused by the API: 402"`) {
		t.Errorf("rejected request: exit %d\n%s", code, out)
	}
}

func TestImagegenTimeout(t *testing.T) {
	url, _ := fakePipeline(t)
	code, _, errOut := runImagegen(t, url, "-prompt", "never", "-timeout", "2s")
	if code != 1 || !strings.Contains(errOut, "has not ended after 2s") {
		t.Errorf("exit %d, stderr %s", code, errOut)
	}
}

func TestImagegenNoPipeline(t *testing.T) {
	s := natstest.RunServer(t) // JetStream, but no kreabus streams
	code, _, errOut := runImagegen(t, s.ClientURL())
	if code != 1 || !strings.Contains(errOut, "start the pipeline first") {
		t.Errorf("exit %d, stderr %s", code, errOut)
	}
	code, _, errOut = runImagegen(t, "nats://127.0.0.1:1")
	if code != 1 || !strings.Contains(errOut, "connect to NATS") {
		t.Errorf("exit %d, stderr %s", code, errOut)
	}
	if code, _, _ := runImagegen(t, s.ClientURL(), "-nope"); code != 2 {
		t.Errorf("bad flag: exit %d", code)
	}
	if code, _, errOut := runImagegen(t, s.ClientURL(), "-path", "/jobs"); code != 2 || !strings.Contains(errOut, "not an allowed Krea generation path") {
		t.Errorf("bad path: exit %d, stderr %s", code, errOut)
	}
}
