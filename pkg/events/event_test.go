package events_test

import (
	"encoding/json"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go"

	"github.com/kreabus/kreabus/pkg/events"
	"github.com/kreabus/kreabus/pkg/krea"
)

const testJobID = "6c2b3c3a-9f0e-4d7c-8a52-1f6f0e2b7d11"

func TestJobMsgIDs(t *testing.T) {
	for _, tc := range []struct {
		status krea.Status
		want   string
	}{
		{krea.StatusCompleted, testJobID},
		{krea.StatusFailed, testJobID},
		{krea.StatusCancelled, testJobID},
		{events.StatusSubmitted, testJobID + ":submitted"},
		{krea.StatusProcessing, testJobID + ":processing"},
		{krea.StatusIntermediateComplete, testJobID + ":intermediate-complete"},
		{"some-new-status", testJobID + ":some-new-status"},
	} {
		if got := events.JobMsgID(testJobID, tc.status); got != tc.want {
			t.Errorf("JobMsgID(%s) = %q, want %q", tc.status, got, tc.want)
		}
		h := events.EventHeaders{JobID: testJobID, Status: tc.status, RequestID: "req-1"}
		if got := h.MsgID(); got != tc.want {
			t.Errorf("EventHeaders.MsgID(%s) = %q, want %q", tc.status, got, tc.want)
		}
	}
	h := events.EventHeaders{Status: events.StatusRejected, RequestID: "req-1"}
	if got := h.MsgID(); got != "rejected:req-1" || events.RejectedMsgID("req-1") != "rejected:req-1" {
		t.Errorf("rejected MsgID = %q", got)
	}
	if events.JobSubject(krea.StatusCompleted) != "krea.jobs.completed" || events.JobSubject(events.StatusRejected) != "krea.jobs.rejected" {
		t.Error("JobSubject")
	}
}

func TestNewJobMsgHeaders(t *testing.T) {
	at := time.Date(2026, 3, 1, 12, 30, 45, 123456789, time.FixedZone("CET", 3600))
	body := []byte(`{"job_id":"` + testJobID + `","status":"completed","result":{"urls":["https://x/1.png"]},"extra":true}`)
	m := events.NewJobMsg(events.EventHeaders{
		JobID:       testJobID,
		Status:      krea.StatusCompleted,
		RequestID:   "req-1",
		Source:      events.SourceWebhook,
		Metadata:    json.RawMessage(`{"user":"42"}`),
		TraceParent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
		Time:        at,
	}, body)
	if m.Subject != "krea.jobs.completed" {
		t.Errorf("subject %q", m.Subject)
	}
	if string(m.Data) != string(body) {
		t.Error("body not kept byte for byte")
	}
	want := nats.Header{
		"Nats-Msg-Id":        {testJobID},
		"Krea-Job-Id":        {testJobID},
		"Krea-Status":        {"completed"},
		"Kreabus-Request-Id": {"req-1"},
		"Kreabus-Source":     {"webhook"},
		"Kreabus-Metadata":   {`{"user":"42"}`},
		"traceparent":        {"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
		"ce-specversion":     {"1.0"},
		"ce-id":              {testJobID},
		"ce-type":            {"ai.krea.job.completed"},
		"ce-source":          {"kreabus"},
		"ce-time":            {"2026-03-01T11:30:45.123456789Z"},
		"ce-datacontenttype": {"application/json"},
		"ce-traceparent":     {"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
	}
	if !maps.EqualFunc(m.Header, want, slices.Equal) {
		t.Errorf("headers\n got %v\nwant %v", m.Header, want)
	}
}

func TestNewJobMsgVariants(t *testing.T) {
	// Non-terminal, no request ID, metadata or trace: those headers absent.
	m := events.NewJobMsg(events.EventHeaders{JobID: testJobID, Status: krea.StatusProcessing, Source: events.SourcePoll, CESource: "kreabus/reconciler"}, nil)
	if got := m.Header.Get("Nats-Msg-Id"); got != testJobID+":processing" {
		t.Errorf("Nats-Msg-Id = %q", got)
	}
	if got := m.Header.Get("ce-id"); got != testJobID+":processing" {
		t.Errorf("ce-id = %q", got)
	}
	if m.Header.Get("ce-type") != "ai.krea.job.processing" || m.Header.Get("ce-source") != "kreabus/reconciler" || m.Header.Get("Kreabus-Source") != "poll" {
		t.Errorf("headers %v", m.Header)
	}
	for _, name := range []string{"Kreabus-Request-Id", "Kreabus-Metadata", "traceparent", "ce-traceparent", "Kreabus-Reason"} {
		if _, ok := m.Header[name]; ok {
			t.Errorf("%s set though empty", name)
		}
	}
	ts, err := time.Parse(time.RFC3339Nano, m.Header.Get("ce-time"))
	if err != nil || time.Since(ts) > time.Minute {
		t.Errorf("ce-time %q: %v", m.Header.Get("ce-time"), err)
	}

	// Submitted.
	m = events.NewJobMsg(events.EventHeaders{JobID: testJobID, Status: events.StatusSubmitted, RequestID: "req-1", Source: events.SourceSubmitter}, nil)
	if m.Subject != "krea.jobs.submitted" || m.Header.Get("Nats-Msg-Id") != testJobID+":submitted" || m.Header.Get("ce-type") != "ai.krea.job.submitted" {
		t.Errorf("submitted: %s %v", m.Subject, m.Header)
	}

	// Rejected: no job, reason on one line, null metadata left out.
	m = events.NewJobMsg(events.EventHeaders{Status: events.StatusRejected, RequestID: "req-9", Source: events.SourceSubmitter, Reason: "path: not allowed\r\nX-Evil: 1", Metadata: json.RawMessage("null")}, []byte(`{}`))
	if m.Subject != "krea.jobs.rejected" || m.Header.Get("Nats-Msg-Id") != "rejected:req-9" || m.Header.Get("ce-id") != "rejected:req-9" || m.Header.Get("ce-type") != "ai.krea.job.rejected" {
		t.Errorf("rejected: %s %v", m.Subject, m.Header)
	}
	if _, ok := m.Header["Krea-Job-Id"]; ok {
		t.Error("Krea-Job-Id set on a rejected event")
	}
	if _, ok := m.Header["Kreabus-Metadata"]; ok {
		t.Error("null metadata carried")
	}
	if r := m.Header.Get("Kreabus-Reason"); r != "path: not allowed  X-Evil: 1" {
		t.Errorf("reason %q", r)
	}
	if long := events.NewJobMsg(events.EventHeaders{Status: events.StatusRejected, RequestID: "r", Reason: strings.Repeat("x", 5000)}, nil); len(long.Header.Get("Kreabus-Reason")) != 1024 {
		t.Errorf("long reason kept %d bytes", len(long.Header.Get("Kreabus-Reason")))
	}
}

func TestDecodeEvent(t *testing.T) {
	body := []byte(`{"job_id":"` + testJobID + `","status":"completed","completed_at":"2026-03-01T11:30:46Z","result":{"urls":["https://x/1.png","https://x/2.png"]},"unknown":{"a":1}}`)
	m := events.NewJobMsg(events.EventHeaders{JobID: testJobID, Status: krea.StatusCompleted, RequestID: "req-1", Source: events.SourceWebhook, Metadata: json.RawMessage(`{"user":"42"}`), Reason: "r"}, body)
	ev, err := events.DecodeEvent(m.Subject, m.Header, m.Data)
	if err != nil {
		t.Fatal(err)
	}
	if ev.Status != krea.StatusCompleted || ev.JobID != testJobID || ev.RequestID != "req-1" || ev.Source != events.SourceWebhook || ev.Reason != "r" ||
		string(ev.Metadata) != `{"user":"42"}` || ev.Time.IsZero() || string(ev.Raw) != string(body) {
		t.Errorf("event %+v", ev)
	}
	if ev.Job.JobID != testJobID || ev.Job.Result == nil || len(ev.Job.Result.URLs) != 2 || ev.Job.CompletedAt == nil {
		t.Errorf("job %+v", ev.Job)
	}

	// No body (a rejected event may have none), no headers.
	ev, err = events.DecodeEvent("krea.jobs.rejected", nil, nil)
	if err != nil || ev.Status != events.StatusRejected {
		t.Errorf("empty event: %+v, %v", ev, err)
	}

	for _, bad := range []string{`{"job_id":`, `[1]`, `"x"`, `{"status":5}`} {
		if _, err := events.DecodeEvent("krea.jobs.completed", nil, []byte(bad)); err == nil {
			t.Errorf("DecodeEvent(%s) accepted", bad)
		}
	}
}

// A reason cut at 1024 bytes inside a multi-byte character still leaves
// valid UTF-8 in the header (the cut character becomes U+FFFD).
func TestNewJobMsgLongReasonStaysUTF8(t *testing.T) {
	reason := strings.Repeat("x", 1023) + "é and more"
	m := events.NewJobMsg(events.EventHeaders{Status: events.StatusRejected, RequestID: "r", Reason: reason}, nil)
	if got := m.Header.Get(events.HeaderReason); !utf8.ValidString(got) || !strings.HasPrefix(got, strings.Repeat("x", 1023)) {
		t.Errorf("Kreabus-Reason = %q", got[len(got)-8:])
	}
}

// A rejected event without a request ID (a request too broken to decode
// has none) must not share a Nats-Msg-Id with every other such event, or
// JetStream would drop all but the first within the duplicate window.
func TestRejectedWithoutRequestIDIsNotDeduplicated(t *testing.T) {
	a := events.NewJobMsg(events.EventHeaders{Status: events.StatusRejected, Reason: "body: not JSON"}, nil)
	b := events.NewJobMsg(events.EventHeaders{Status: events.StatusRejected, Reason: "body: not an object"}, nil)
	if id := a.Header.Get(events.HeaderMsgID); id != "" || b.Header.Get(events.HeaderMsgID) != "" {
		t.Errorf("rejected event without request ID has Nats-Msg-Id %q", id)
	}
	if a.Header.Get(events.HeaderCEID) == "" || a.Header.Get(events.HeaderCEID) == b.Header.Get(events.HeaderCEID) {
		t.Errorf("ce-id not unique: %q", a.Header.Get(events.HeaderCEID))
	}
}

// A krea.jobs.rejected body is the submitter's rejection, not a job object:
// its "status" may be an HTTP status number; DecodeEvent must accept it.
func TestDecodeEventRejectedBody(t *testing.T) {
	body := `{"request_id":"req-9","reason":"refused by the API","kind":"api_refused","status":402,"error":"Payment required"}`
	m := events.NewJobMsg(events.EventHeaders{Status: events.StatusRejected, RequestID: "req-9", Source: events.SourceSubmitter, Reason: "refused by the API"}, []byte(body))
	ev, err := events.DecodeEvent(m.Subject, m.Header, m.Data)
	if err != nil {
		t.Fatalf("DecodeEvent refuses a well-formed rejected event: %v", err)
	}
	if ev.RequestID != "req-9" || string(ev.Raw) != body {
		t.Errorf("event %+v", ev)
	}
}

func BenchmarkNewJobMsg(b *testing.B) {
	h := events.EventHeaders{JobID: "0b9d6c1e-5f0a-4f57-a8f1-2a6f0f8b9a11", Status: "completed", RequestID: "req-1",
		Source: events.SourceWebhook, Metadata: []byte(`{"user":"42"}`)}
	body := []byte(`{"job_id":"0b9d6c1e-5f0a-4f57-a8f1-2a6f0f8b9a11","status":"completed"}`)
	b.ReportAllocs()
	for b.Loop() {
		_ = events.NewJobMsg(h, body)
	}
}

// The bridge stores any body whose job_id and status check out; a field of
// an unexpected type must not make DecodeEvent drop the job's event.
func TestDecodeEventToleratesOddFields(t *testing.T) {
	for _, body := range []string{
		`{"job_id":"0b9d6c1e-5f0a-4f57-a8f1-2a6f0f8b9a11","status":"completed","created_at":1735689600}`,
		`{"job_id":"0b9d6c1e-5f0a-4f57-a8f1-2a6f0f8b9a11","status":"completed","completed_at":""}`,
		`{"job_id":"0b9d6c1e-5f0a-4f57-a8f1-2a6f0f8b9a11","status":"completed","result":[]}`,
	} {
		m := events.NewJobMsg(events.EventHeaders{JobID: "0b9d6c1e-5f0a-4f57-a8f1-2a6f0f8b9a11", Status: "completed", Source: events.SourceWebhook}, []byte(body))
		ev, err := events.DecodeEvent(m.Subject, m.Header, m.Data)
		if err != nil {
			t.Errorf("%s: %v", body, err)
			continue
		}
		if ev.Job.JobID != "0b9d6c1e-5f0a-4f57-a8f1-2a6f0f8b9a11" || ev.Job.Status != "completed" || string(ev.Raw) != body {
			t.Errorf("%s: event %+v", body, ev)
		}
	}
	if _, err := events.DecodeEvent("krea.jobs.completed", nil, []byte(`{"job_id":`)); err == nil {
		t.Error("a body that is not JSON decoded")
	}
}

func TestEventRejection(t *testing.T) {
	body := `{"request_id":"r1","path":"/generate/image/bfl/flux-1","reason":"model unavailable (410)","kind":"model_unavailable","http_status":410,"error":{"error":"model_unavailable"},"replacement":"/generate/image/bfl/flux-1-dev"}`
	ev, err := events.DecodeEvent("krea.jobs.rejected", nats.Header{}, []byte(body))
	if err != nil {
		t.Fatal(err)
	}
	r, err := ev.Rejection()
	if err != nil {
		t.Fatal(err)
	}
	if r.RequestID != "r1" || r.Kind != events.RejectModelUnavailable || r.HTTPStatus != 410 || r.Replacement != "/generate/image/bfl/flux-1-dev" || string(r.Error) != `{"error":"model_unavailable"}` {
		t.Errorf("rejection %+v", r)
	}
	out, err := json.Marshal(r)
	if err != nil || string(out) != body {
		t.Errorf("round trip: %s (%v)", out, err)
	}
	done, err := events.DecodeEvent("krea.jobs.completed", nats.Header{}, []byte(`{"job_id":"`+testJobID+`","status":"completed"}`))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := done.Rejection(); err == nil {
		t.Error("a completed event has a rejection")
	}
	if string(done.Job.Raw) != string(done.Raw) {
		t.Errorf("Job.Raw %s, Raw %s", done.Job.Raw, done.Raw)
	}
}

func TestStatuses(t *testing.T) {
	all := events.Statuses()
	for _, s := range append(krea.Statuses(), events.StatusSubmitted, events.StatusRejected, events.StatusMirrored) {
		if !slices.Contains(all, s) || !s.Valid() {
			t.Errorf("status %q: listed %v, valid %v", s, slices.Contains(all, s), s.Valid())
		}
		if events.IsKreabusStatus(s) == slices.Contains(krea.Statuses(), s) {
			t.Errorf("IsKreabusStatus(%q) = %v", s, events.IsKreabusStatus(s))
		}
	}
	if len(all) != len(krea.Statuses())+3 {
		t.Errorf("Statuses() = %v", all)
	}
	for _, s := range []krea.Status{events.StatusCompleted, events.StatusFailed, events.StatusCancelled} {
		if !s.IsTerminal() {
			t.Errorf("%s is not terminal", s)
		}
	}
}
