package events

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go"

	"github.com/kreabus/kreabus/pkg/krea"
)

// EventHeaders describes a job event to publish. Build the message with
// NewJobMsg so every producer sets the same headers.
type EventHeaders struct {
	JobID     string      // empty only for rejected events
	Status    krea.Status // must be Valid
	RequestID string      // when known
	Source    Source
	// Metadata is the request's metadata as compact JSON, when it had any.
	Metadata json.RawMessage
	// Reason explains a rejected event or a failure kreabus decided.
	Reason string
	// ExtraJob marks the events of a second job of the request
	// (Kreabus-Extra-Job: true).
	ExtraJob bool
	// TraceParent is a W3C traceparent to carry on, when one came in.
	TraceParent string
	// Time is the ce-time; zero means now.
	Time time.Time
	// CESource overrides the default ce-source.
	CESource string
}

// MsgID is the event's JetStream de-duplication ID; "" for a rejected
// event without a request ID, which then cannot be de-duplicated.
func (h *EventHeaders) MsgID() string {
	if h.Status == StatusRejected {
		if h.RequestID == "" {
			return ""
		}
		return RejectedMsgID(h.RequestID)
	}
	return JobMsgID(h.JobID, h.Status)
}

// NewJobMsg returns the message of a job event with body as its data and
// every contract header set. The ce-id equals the Nats-Msg-Id, so a
// CloudEvents consumer de-duplicates the same way JetStream does.
func NewJobMsg(h EventHeaders, body []byte) *nats.Msg {
	msgID := h.MsgID()
	id := msgID
	if id == "" {
		id = uuid.NewString() // ce-id must be unique all the same
	}
	t := h.Time
	if t.IsZero() {
		t = time.Now()
	}
	src := h.CESource
	if src == "" {
		src = CESource
	}
	status := string(h.Status)
	// One backing array for every header value: this runs once per webhook.
	vals := make([]string, 0, 17)
	hdr := make(nats.Header, 17)
	// NATS headers are case-sensitive: names are written exactly as the
	// contract spells them.
	put := func(name, v string) {
		vals = append(vals, v)
		hdr[name] = vals[len(vals)-1 : len(vals) : len(vals)]
	}
	if msgID != "" {
		put(HeaderMsgID, msgID)
	}
	if h.JobID != "" {
		put(HeaderJobID, h.JobID)
	}
	put(HeaderStatus, status)
	if h.RequestID != "" {
		put(HeaderRequestID, h.RequestID)
	}
	put(HeaderSource, string(h.Source))
	if len(h.Metadata) > 0 && string(h.Metadata) != "null" {
		put(HeaderMetadata, string(h.Metadata))
	}
	if h.Reason != "" {
		put(HeaderReason, sanitizeHeader(h.Reason))
	}
	if h.ExtraJob {
		put(HeaderExtraJob, "true")
	}
	put(HeaderCESpecVersion, CESpecVersion)
	put(HeaderCEID, id)
	put(HeaderCEType, CETypePrefix+status)
	put(HeaderCESource, src)
	var tb [40]byte
	put(HeaderCETime, string(t.UTC().AppendFormat(tb[:0], time.RFC3339Nano)))
	put(HeaderCEDataContentType, CEDataContentType)
	if h.TraceParent != "" {
		// Both the W3C header, for tracers that read NATS headers, and
		// the CloudEvents distributed-tracing extension attribute, for
		// CloudEvents SDKs.
		put(HeaderTraceParent, h.TraceParent)
		put(HeaderCETraceParent, h.TraceParent)
	}
	return &nats.Msg{Subject: JobSubject(h.Status), Data: body, Header: hdr}
}

// sanitizeHeader keeps a free-text value on one header line.
func sanitizeHeader(s string) string {
	if len(s) > 1024 {
		s = s[:1024]
	}
	return strings.Map(func(r rune) rune {
		if r == '\r' || r == '\n' {
			return ' '
		}
		return r
	}, s)
}

// Event is a job event as a consumer receives it.
type Event struct {
	Subject   string
	Status    krea.Status
	JobID     string
	RequestID string
	Source    Source
	Reason    string
	Metadata  json.RawMessage
	// ExtraJob is set on the events of a second job of the request
	// (Kreabus-Extra-Job: true): Krea made, and charged, two jobs for it.
	ExtraJob bool
	// TraceParent is the W3C traceparent the event carries, if any.
	TraceParent string
	// Job is the decoded body of a job event (Job.Raw is the body too);
	// empty for a rejected or mirrored event.
	Job krea.Job
	// Raw is the body as stored, whatever the event: a job object, a
	// Rejection (see Rejection) or a Mirrored (see Objects).
	Raw  json.RawMessage
	Time time.Time
	// Mirrored is the body of a krea.jobs.mirrored event (Job is empty
	// then); see Objects.
	Mirrored *Mirrored
}

// DecodeEvent decodes a job event from its subject, headers and body.
func DecodeEvent(subject string, h nats.Header, data []byte) (*Event, error) {
	e := &Event{
		Subject:   subject,
		Status:    krea.Status(strings.TrimPrefix(subject, JobsPrefix)),
		JobID:     h.Get(HeaderJobID),
		RequestID: h.Get(HeaderRequestID),
		Source:    Source(h.Get(HeaderSource)),
		Reason:    h.Get(HeaderReason),
		ExtraJob:  h.Get(HeaderExtraJob) == "true",
		Raw:       data,

		TraceParent: h.Get(HeaderTraceParent),
	}
	if md := h.Get(HeaderMetadata); md != "" {
		e.Metadata = json.RawMessage(md)
	}
	if t, err := time.Parse(time.RFC3339Nano, h.Get(HeaderCETime)); err == nil {
		e.Time = t
	}
	if e.Status == StatusMirrored {
		m, err := decodeMirrored(data)
		if err != nil {
			return e, fmt.Errorf("events: decode %s event body: %w", subject, err)
		}
		e.Mirrored = m
		if e.JobID == "" {
			e.JobID = m.JobID
		}
		if e.RequestID == "" {
			e.RequestID = m.RequestID
		}
		return e, nil
	}
	if len(data) > 0 {
		if e.Status == StatusRejected {
			// The body is a Rejection, not a job object.
			if !json.Valid(data) {
				return e, fmt.Errorf("events: decode %s event body: not JSON", subject)
			}
		} else if err := json.Unmarshal(data, &e.Job); err != nil {
			// The bridge stores what Krea sent once job_id and status check
			// out; another field of an unexpected type (a numeric
			// created_at, say) must not make consumers drop the job's only
			// terminal event. Keep those two; Raw has the rest.
			var min struct {
				JobID  string      `json:"job_id"`
				Status krea.Status `json:"status"`
			}
			if merr := json.Unmarshal(data, &min); merr != nil {
				return e, fmt.Errorf("events: decode %s event body: %w", subject, err)
			}
			e.Job = krea.Job{JobID: min.JobID, Status: min.Status}
		}
		if e.Status != StatusRejected {
			e.Job.Raw = e.Raw
		}
	}
	return e, nil
}
