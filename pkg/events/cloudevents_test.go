package events_test

import (
	"encoding/json"
	"net/http"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/extensions"
	"github.com/nats-io/nats.go"

	"github.com/kreabus/kreabus/internal/cetest"
	"github.com/kreabus/kreabus/pkg/events"
	"github.com/kreabus/kreabus/pkg/krea"
)

// TestEventsAreCloudEvents decodes every kind of event NewJobMsg makes
// with the official CloudEvents Go SDK and validates it: the attributes a
// non-Go receiver needs (datacontenttype to read the body, the tracing
// extension to join the trace) are there with their values.
func TestEventsAreCloudEvents(t *testing.T) {
	const (
		jobID = "4d0e5f97-9721-4422-b88c-73a9032d7de1"
		trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	)
	at := time.Date(2026, 3, 1, 11, 30, 45, 123000000, time.UTC)
	cases := []struct {
		name   string
		h      events.EventHeaders
		body   string
		id     string
		traced bool
	}{
		{"webhook, traced", events.EventHeaders{JobID: jobID, Status: krea.StatusCompleted, RequestID: "req-1", Source: events.SourceWebhook,
			Metadata: json.RawMessage(`{"user":"42"}`), TraceParent: trace, Time: at},
			`{"job_id":"` + jobID + `","status":"completed","result":{"urls":["https://x/1.png"]}}`, jobID, true},
		{"poll, non-terminal", events.EventHeaders{JobID: jobID, Status: krea.StatusProcessing, RequestID: "req-1", Source: events.SourcePoll,
			CESource: "kreabus/reconciler", Time: at}, `{"job_id":"` + jobID + `","status":"processing"}`, jobID + ":processing", false},
		{"submitted", events.EventHeaders{JobID: jobID, Status: events.StatusSubmitted, RequestID: "req-1", Source: events.SourceSubmitter, Time: at},
			`{"job_id":"` + jobID + `","status":"queued"}`, jobID + ":submitted", false},
		{"rejected", events.EventHeaders{Status: events.StatusRejected, RequestID: "req-2", Source: events.SourceSubmitter, Reason: "path not allowed", Time: at},
			`{"request_id":"req-2","path":"/x","reason":"path not allowed","kind":"invalid"}`, "rejected:req-2", false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			m := events.NewJobMsg(c.h, []byte(c.body))
			ev, err := cetest.Decode(m.Header, m.Data)
			if err != nil {
				t.Fatalf("the SDK refuses the event: %v\nheaders %v", err, m.Header)
			}
			if ev.SpecVersion() != "1.0" || ev.ID() != c.id || ev.Type() != "ai.krea.job."+string(c.h.Status) ||
				ev.DataContentType() != "application/json" || !ev.Time().Equal(at) {
				t.Errorf("attributes: specversion %q id %q type %q datacontenttype %q time %v",
					ev.SpecVersion(), ev.ID(), ev.Type(), ev.DataContentType(), ev.Time())
			}
			wantSource := c.h.CESource
			if wantSource == "" {
				wantSource = events.CESource
			}
			if ev.Source() != wantSource {
				t.Errorf("source %q, want %q", ev.Source(), wantSource)
			}
			var data map[string]any
			if err := ev.DataAs(&data); err != nil || string(ev.Data()) != c.body {
				t.Errorf("data %q not the body as JSON: %v", ev.Data(), err)
			}
			dt, ok := extensions.GetDistributedTracingExtension(*ev)
			if c.traced != ok || (ok && dt.TraceParent != trace) {
				t.Errorf("distributed tracing extension: %+v, %v; want traced %v", dt, ok, c.traced)
			}
			if c.traced && m.Header.Get(events.HeaderTraceParent) != trace {
				t.Errorf("W3C traceparent header %q", m.Header.Get(events.HeaderTraceParent))
			}
		})
	}
}

// TestCloudEventsDecoderRefuses keeps the SDK check from passing vacuously:
// an event missing a required attribute is refused.
func TestCloudEventsDecoderRefuses(t *testing.T) {
	m := events.NewJobMsg(events.EventHeaders{JobID: "4d0e5f97-9721-4422-b88c-73a9032d7de1", Status: krea.StatusCompleted, Source: events.SourceWebhook}, []byte(`{}`))
	for _, drop := range []string{events.HeaderCESource, events.HeaderCEID, events.HeaderCESpecVersion} {
		h := nats.Header(http.Header(m.Header).Clone())
		h.Del(drop)
		if _, err := cetest.Decode(h, m.Data); err == nil {
			t.Errorf("accepted without %s", drop)
		}
	}
	h := nats.Header(http.Header(m.Header).Clone())
	h.Set(events.HeaderCETime, "yesterday")
	if _, err := cetest.Decode(h, m.Data); err == nil {
		t.Error("accepted a ce-time that is no time")
	}
}
