package ledger

import (
	"bytes"
	"encoding/json"
	"time"

	"github.com/kreabus/kreabus/pkg/events"
	"github.com/kreabus/kreabus/pkg/krea"
)

// Key prefixes in the bucket. Every key is one of these followed by one
// ID token, so each kind of record is a subject space of its own that can
// be read or watched without touching the others.
const (
	// RequestKeyPrefix prefixes req.<request_id>: the request's lifecycle,
	// written by the submitter (intent, outcome) and by the Recorder when
	// a webhook proves which job a request made.
	RequestKeyPrefix = "req."
	// JobKeyPrefix prefixes job.<job_id>: the job's owner and state,
	// created by the submitter when Krea answers and kept up to date by
	// the Recorder from the job events on KREA_JOBS.
	JobKeyPrefix = "job."
	// OpenKeyPrefix prefixes open.<job_id>: present while a job is not
	// terminal. It is the reconciler's work list: a watch on open.> holds
	// the jobs in flight only, however many the bucket keeps.
	OpenKeyPrefix = "open."
)

// Request lifecycle statuses of a req.<request_id> record, besides
// events.StatusSubmitted (Krea made job JobID) and events.StatusRejected.
const (
	// StatusSending: attempt Attempt was about to be sent at IntentAt; a
	// job may exist once the call reached Krea.
	StatusSending krea.Status = "sending"
	// StatusRetrying: attempt Attempt certainly made no job (429, a 4xx
	// other than a refusal, or a connection that failed before the request
	// was sent); the request is free to be sent again.
	StatusRetrying krea.Status = "retrying"
	// StatusUncertain: attempt Attempt reached Krea (or may have) and no
	// usable answer came back: a job may exist. It is not sent again
	// until evidence settles it (see the submitter's resolution).
	StatusUncertain krea.Status = "uncertain"
)

// Record is one ledger entry, stored as JSON under req.<request_id>,
// job.<job_id> or open.<job_id>.
type Record struct {
	RequestID string `json:"request_id,omitempty"`
	JobID     string `json:"job_id,omitempty"`
	// Path is the Krea API path the request named, when known.
	Path string `json:"path,omitempty"`
	// Status: on a request record its lifecycle (sending, retrying,
	// uncertain, submitted, rejected); on a job record "submitted", a Krea
	// status, or the terminal status once Terminal is set (it never
	// changes then).
	Status   krea.Status `json:"status,omitempty"`
	Terminal bool        `json:"terminal"`
	// Metadata is the request's metadata as compact JSON, when it had any.
	Metadata    json.RawMessage `json:"metadata,omitempty"`
	SubmittedAt time.Time       `json:"submitted_at,omitzero"`
	UpdatedAt   time.Time       `json:"updated_at,omitzero"`
	// Source is who produced the status: submitter, webhook or poll.
	Source events.Source `json:"source,omitempty"`
	// Reason and Rejection are set on the record of a rejected request
	// (Status "rejected", no job): the reason and the rejected event's
	// body, so a redelivery re-publishes it instead of calling the API.
	Reason    string          `json:"reason,omitempty"`
	Rejection json.RawMessage `json:"rejection,omitempty"`
	// Attempt counts the API calls made for a request that count towards
	// its retries; IntentAt is when the latest one was about to be sent,
	// EndedAt when an uncertain one ended (an answer that said nothing
	// usable, or the client's timeout).
	Attempt  int       `json:"attempt,omitempty"`
	IntentAt time.Time `json:"intent_at,omitzero"`
	EndedAt  time.Time `json:"ended_at,omitzero"`
	// Extra marks a job record as a second (paid) job of its request.
	Extra bool `json:"extra,omitempty"`
	// Events are where the job's events are stored on KREA_JOBS (on a job
	// record), or the request's rejected event (on a request record), as
	// the Recorder applied them: the status service reads them by
	// sequence instead of scanning the stream. At most MaxEventRefs.
	Events []EventRef `json:"events,omitempty"`
}

// MaxEventRefs bounds the event references one record keeps: a job has a
// submitted, a terminal and the odd non-terminal event.
const MaxEventRefs = 16

// EventRef is one event stored on KREA_JOBS.
type EventRef struct {
	Subject string        `json:"subject"`
	Seq     uint64        `json:"seq"`
	Time    time.Time     `json:"time,omitzero"`
	Source  events.Source `json:"source,omitempty"`
}

// addEventRef appends ref unless it is there already or the list is
// full; it reports whether it did.
func (r *Record) addEventRef(ref *EventRef) bool {
	if ref == nil || ref.Seq == 0 || len(r.Events) >= MaxEventRefs {
		return false
	}
	for _, e := range r.Events {
		if e.Seq == ref.Seq {
			return false
		}
	}
	r.Events = append(r.Events[:len(r.Events):len(r.Events)], *ref)
	return true
}

// RequestKey is the bucket key of a request record.
func RequestKey(requestID string) string { return RequestKeyPrefix + requestID }

// JobKey is the bucket key of a job record.
func JobKey(jobID string) string { return JobKeyPrefix + jobID }

// OpenKey is the bucket key that lists a job as not terminal.
func OpenKey(jobID string) string { return OpenKeyPrefix + jobID }

// ValidID reports whether id can name a ledger key. Request IDs
// (events.ValidRequestID: [A-Za-z0-9_-]{1,64}) and Krea's job IDs (UUIDs,
// 36 characters of the same alphabet) are the only IDs the ledger keys by,
// so the one request-ID check is the key check.
func ValidID(id string) bool { return events.ValidRequestID(id) }

func hasMetadata(m json.RawMessage) bool {
	m = bytes.TrimSpace(m)
	return len(m) > 0 && !bytes.Equal(m, []byte("null"))
}

// Settled reports whether a request record is final: submitted (a job
// exists) or rejected.
func (r *Record) Settled() bool {
	return r.Status == events.StatusSubmitted || r.Status == events.StatusRejected
}

// Unresolved reports whether a request record names no job and is not
// rejected: an attempt is sending, uncertain or to be retried.
func (r *Record) Unresolved() bool { return r.JobID == "" && r.Status != events.StatusRejected }

// sameContent compares two job records, ignoring UpdatedAt.
func sameContent(a, b *Record) bool {
	return a.RequestID == b.RequestID && a.JobID == b.JobID && a.Path == b.Path &&
		a.Status == b.Status && a.Terminal == b.Terminal && bytes.Equal(a.Metadata, b.Metadata) &&
		a.SubmittedAt.Equal(b.SubmittedAt) && a.Source == b.Source && a.Extra == b.Extra
}

// applyEvent returns the job record cur becomes once ev is applied, and
// whether anything changed. cur may be nil (no record yet). The rules make
// applying events idempotent and order-independent where it matters:
//
//   - a terminal record never changes status again (the first terminal
//     event recorded wins);
//   - request ID, metadata, path and submission time are filled in once;
//   - a non-terminal status replaces another non-terminal one;
//   - an extra job stays extra.
func applyEvent(cur *Record, ev *events.Event, now time.Time) (Record, bool) {
	var r Record
	if cur != nil {
		r = *cur
	}
	if r.JobID == "" {
		r.JobID = ev.JobID
	}
	if r.RequestID == "" && ev.RequestID != "" {
		r.RequestID = ev.RequestID
	}
	if !hasMetadata(r.Metadata) && hasMetadata(ev.Metadata) && r.RequestID == ev.RequestID {
		r.Metadata = ev.Metadata
	}
	if r.SubmittedAt.IsZero() {
		r.SubmittedAt = eventSubmittedAt(ev, now)
	}
	if ev.ExtraJob && r.RequestID == ev.RequestID {
		r.Extra = true
	}
	switch {
	case r.Terminal:
		// Settled: nothing un-terminals a job.
	case ev.Status.IsTerminal():
		r.Status, r.Terminal, r.Source = ev.Status, true, ev.Source
	case ev.Status == events.StatusSubmitted:
		if r.Status == "" {
			r.Status, r.Source = ev.Status, ev.Source
		}
	default:
		r.Status, r.Source = ev.Status, ev.Source
	}
	if cur != nil && sameContent(cur, &r) {
		return *cur, false
	}
	r.UpdatedAt = now.UTC()
	return r, true
}

// eventSubmittedAt is the best submission time an event tells: Krea's
// created_at, else the event's time, else now.
func eventSubmittedAt(ev *events.Event, now time.Time) time.Time {
	switch {
	case ev.Job.CreatedAt != nil && !ev.Job.CreatedAt.IsZero():
		return ev.Job.CreatedAt.UTC()
	case !ev.Time.IsZero():
		return ev.Time.UTC()
	}
	return now.UTC()
}
