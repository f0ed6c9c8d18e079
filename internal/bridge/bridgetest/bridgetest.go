// Package bridgetest holds what tests of the bridge and of the programs
// that serve it check webhooks and their stored events with.
package bridgetest

import (
	"bytes"
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

// OKAnswer is the 200 body.
type OKAnswer struct {
	JobID     string      `json:"job_id"`
	Status    krea.Status `json:"status"`
	Duplicate *bool       `json:"duplicate"`
}

// Response is an answer of the bridge, read whole.
type Response struct {
	Code   int
	Header http.Header
	Body   []byte
}

// ErrMsg is the message of the answer's {"error": "..."} body.
func (r Response) ErrMsg(t testing.TB) string {
	t.Helper()
	return ErrMsg(t, r.Body)
}

// OK is the answer's 200 body; it fails the test on any other answer.
func (r Response) OK(t testing.TB) OKAnswer {
	t.Helper()
	return OK(t, r.Code, r.Body)
}

// ErrMsg is the message of an error answer's body, {"error": "..."}; it
// fails the test when the body is anything else.
func ErrMsg(t testing.TB, body []byte) string {
	t.Helper()
	var v map[string]any
	if err := json.Unmarshal(body, &v); err != nil {
		t.Fatalf("error body %q is not JSON: %v", body, err)
	}
	msg, ok := v["error"].(string)
	if !ok || len(v) != 1 || msg == "" {
		t.Fatalf("error body %q is not {\"error\": \"...\"}", body)
	}
	return msg
}

// OK decodes a 200 answer; it fails the test on another code or a body
// that is not exactly an OKAnswer.
func OK(t testing.TB, code int, body []byte) OKAnswer {
	t.Helper()
	if code != http.StatusOK {
		t.Fatalf("code %d, want 200; body %s", code, body)
	}
	var a OKAnswer
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&a); err != nil || a.Duplicate == nil || a.JobID == "" || a.Status == "" {
		t.Fatalf("200 body %q: %v", body, err)
	}
	return a
}

// JobBody is a Krea webhook body, with unknown fields and odd spacing so
// byte-for-byte storage shows.
func JobBody(jobID string, status krea.Status) []byte {
	return fmt.Appendf(nil, `{"job_id": %q,  "status":%q, "created_at":"2026-02-13T02:20:58.265Z",`+
		`"completed_at":"2026-02-13T02:21:09.001Z","result":{"urls":["https://gen.krea.ai/images/%s.png"]},`+
		`"estimated_time": 12.5, "type":"image", "extra": {"nested": [1, 2.5e3, true, null, "\u00e9"]}}`,
		jobID, status, uuid.NewString())
}

// CheckEvent checks a stored event against what was posted.
func CheckEvent(t testing.TB, m jetstream.Msg, jobID string, status krea.Status, requestID string, body []byte) {
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
