package bridged

// Copies of package bridge's test helpers that the program's tests use.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/extensions"
	"github.com/google/uuid"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kreabus/kreabus/internal/cetest"
	"github.com/kreabus/kreabus/pkg/events"
	"github.com/kreabus/kreabus/pkg/krea"
)

const testSecret = "test-current-secret-0123456789abcdef"

// okAnswer is the 200 body.
type okAnswer struct {
	JobID     string      `json:"job_id"`
	Status    krea.Status `json:"status"`
	Duplicate *bool       `json:"duplicate"`
}

// response is an answer of the bridge, read whole.
type response struct {
	code   int
	header http.Header
	body   []byte
}

func (r response) errMsg(t testing.TB) string {
	t.Helper()
	var v map[string]any
	if err := json.Unmarshal(r.body, &v); err != nil {
		t.Fatalf("error body %q is not JSON: %v", r.body, err)
	}
	msg, ok := v["error"].(string)
	if !ok || len(v) != 1 || msg == "" {
		t.Fatalf("error body %q is not {\"error\": \"...\"}", r.body)
	}
	return msg
}

func (r response) ok(t testing.TB) okAnswer {
	t.Helper()
	if r.code != http.StatusOK {
		t.Fatalf("code %d, want 200; body %s", r.code, r.body)
	}
	var a okAnswer
	dec := json.NewDecoder(bytes.NewReader(r.body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&a); err != nil || a.Duplicate == nil || a.JobID == "" || a.Status == "" {
		t.Fatalf("200 body %q: %v", r.body, err)
	}
	return a
}

// jobBody is a Krea webhook body, with unknown fields and odd spacing so
// byte-for-byte storage shows.
func jobBody(jobID string, status krea.Status) []byte {
	return fmt.Appendf(nil, `{"job_id": %q,  "status":%q, "created_at":"2026-02-13T02:20:58.265Z",`+
		`"completed_at":"2026-02-13T02:21:09.001Z","result":{"urls":["https://gen.krea.ai/images/%s.png"]},`+
		`"estimated_time": 12.5, "type":"image", "extra": {"nested": [1, 2.5e3, true, null, "\u00e9"]}}`,
		jobID, status, uuid.NewString())
}

func storedMsgs(t testing.TB, js jetstream.JetStream) []jetstream.Msg {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := js.Stream(ctx, events.StreamJobs)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	n := int(info.State.Msgs)
	if n == 0 {
		return nil
	}
	c, err := st.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	var out []jetstream.Msg
	for len(out) < n {
		batch, err := c.Fetch(n-len(out), jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		got := 0
		for m := range batch.Messages() {
			out = append(out, m)
			got++
		}
		if err := batch.Error(); err != nil {
			t.Fatalf("fetch: %v", err)
		}
		if got == 0 {
			t.Fatalf("fetched %d of %d messages", len(out), n)
		}
	}
	return out
}

// checkEvent checks a stored event against what was posted.
func checkEvent(t testing.TB, m jetstream.Msg, jobID string, status krea.Status, requestID string, body []byte) {
	t.Helper()
	if want := events.JobSubject(status); m.Subject() != want {
		t.Errorf("subject %q, want %q", m.Subject(), want)
	}
	if !bytes.Equal(m.Data(), body) {
		t.Errorf("stored body differs from the posted body:\n got %q\nwant %q", m.Data(), body)
	}
	h := m.Headers()
	msgID := jobID
	if !status.IsTerminal() {
		msgID = jobID + ":" + string(status)
	}
	want := map[string]string{
		events.HeaderMsgID:         msgID,
		events.HeaderJobID:         jobID,
		events.HeaderStatus:        string(status),
		events.HeaderRequestID:     requestID,
		events.HeaderSource:        string(events.SourceWebhook),
		events.HeaderCESpecVersion: "1.0",
		events.HeaderCEID:          msgID,
		events.HeaderCEType:        "ai.krea.job." + string(status),
		events.HeaderCESource:      events.CESource,
	}
	for k, v := range want {
		if got := h.Get(k); got != v {
			t.Errorf("header %s = %q, want %q", k, got, v)
		}
	}
	if _, err := time.Parse(time.RFC3339Nano, h.Get(events.HeaderCETime)); err != nil {
		t.Errorf("ce-time %q: %v", h.Get(events.HeaderCETime), err)
	}
	// As a CloudEvents consumer reads it, with the official SDK.
	ev, err := cetest.Decode(h, m.Data())
	if err != nil {
		t.Fatalf("stored event is not a valid CloudEvent: %v", err)
	}
	if ev.ID() != msgID || ev.DataContentType() != "application/json" || string(ev.Data()) != string(body) {
		t.Errorf("as a CloudEvent: id %q datacontenttype %q", ev.ID(), ev.DataContentType())
	}
	tp := h.Get(events.HeaderTraceParent)
	if dt, ok := extensions.GetDistributedTracingExtension(*ev); ok != (tp != "") || dt.TraceParent != tp {
		t.Errorf("tracing extension %+v, %v; traceparent %q", dt, ok, tp)
	}
}
