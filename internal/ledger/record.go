package ledger

import (
	"bytes"
	"encoding/json"
	"time"

	"github.com/kreabus/kreabus/pkg/events"
	"github.com/kreabus/kreabus/pkg/krea"
)

// Key prefixes in the bucket.
const (
	// RequestKeyPrefix prefixes req.<request_id>: written by the submitter
	// once the API accepted the request.
	RequestKeyPrefix = "req."
	// JobKeyPrefix prefixes job.<job_id>: written by the Recorder from the
	// job events on KREA_JOBS.
	JobKeyPrefix = "job."
)

// MaxIDLen bounds request and job IDs used as keys.
const MaxIDLen = 128

// Record is one ledger entry, stored as JSON under req.<request_id> or
// job.<job_id>.
type Record struct {
	RequestID string `json:"request_id,omitempty"`
	JobID     string `json:"job_id,omitempty"`
	// Path is the Krea API path the request named, when known.
	Path string `json:"path,omitempty"`
	// Status is the latest status known: "submitted", a Krea status, or
	// the terminal status once Terminal is set (it never changes then).
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
}

// RequestKey is the bucket key of a request record.
func RequestKey(requestID string) string { return RequestKeyPrefix + requestID }

// JobKey is the bucket key of a job record.
func JobKey(jobID string) string { return JobKeyPrefix + jobID }

// validID reports whether id can be a key token: 1 to MaxIDLen characters
// of [A-Za-z0-9_-]. Request IDs and Krea's UUID job IDs all are.
func validID(id string) bool { return len(id) <= MaxIDLen && keyToken(id) }

// keyToken reports whether s is a non-empty run of [A-Za-z0-9_-]: safe as a
// key or name token, with no dots, wildcards or spaces.
func keyToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < 'a' || c > 'z') && (c < 'A' || c > 'Z') && (c < '0' || c > '9') && c != '_' && c != '-' {
			return false
		}
	}
	return true
}

func hasMetadata(m json.RawMessage) bool {
	m = bytes.TrimSpace(m)
	return len(m) > 0 && !bytes.Equal(m, []byte("null"))
}

// sameContent compares two records, ignoring UpdatedAt.
func sameContent(a, b *Record) bool {
	return a.RequestID == b.RequestID && a.JobID == b.JobID && a.Path == b.Path &&
		a.Status == b.Status && a.Terminal == b.Terminal && bytes.Equal(a.Metadata, b.Metadata) &&
		a.SubmittedAt.Equal(b.SubmittedAt) && a.Source == b.Source
}

// applyEvent returns the job record cur becomes once ev is applied, and
// whether anything changed. cur may be nil (no record yet). The rules make
// applying events idempotent and order-independent where it matters:
//
//   - a terminal record never changes status again (the first terminal
//     event recorded wins);
//   - request ID, metadata, path and submission time are filled in once;
//   - a non-terminal status replaces another non-terminal one.
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
