package bridge

import (
	"bytes"
	"errors"

	"github.com/kreabus/kreabus/internal/jsonscan"
	"github.com/kreabus/kreabus/pkg/events"
	"github.com/kreabus/kreabus/pkg/krea"
)

// Webhook is what the bridge reads from a webhook body: only the two fields
// it routes on. The body itself is stored as received.
type Webhook struct {
	// JobID is the job's UUID in canonical lowercase form.
	JobID string
	// Status is Valid: safe as a subject token.
	Status krea.Status
}

// Parse errors. Their text is the body of the 400 answer.
var (
	ErrNotJSON       = errors.New("body is not valid JSON")
	ErrNotObject     = errors.New("body is not a JSON object")
	ErrJobIDMissing  = errors.New("job_id is missing")
	ErrJobIDInvalid  = errors.New("job_id is not a UUID")
	ErrStatusMissing = errors.New("status is missing")
	ErrStatusInvalid = errors.New("status is not a well-formed job status")
	// ErrFieldNotString: job_id or status is a number, object, array,
	// boolean or null. A null after a value would leave encoding/json
	// with the value and other decoders with nothing.
	ErrFieldNotString = errors.New("job_id and status must be strings")
	// ErrFieldAmbiguous: job_id or status appears more than once, or under
	// another letter case (JOB_ID, Status, ſtatus). encoding/json matches
	// keys case-insensitively and takes the last one; case-sensitive
	// decoders (most other languages) take the exact key: the two would
	// read different jobs from one stored event.
	ErrFieldAmbiguous = errors.New("job_id or status appears more than once or in another letter case")
	// ErrNotUTF8: a string holds bytes that are not UTF-8. encoding/json
	// replaces them, strict decoders (Python's json.loads) fail on the
	// stored event.
	ErrNotUTF8 = errors.New("body is not valid UTF-8")
)

// ParseWebhook validates body as JSON and extracts job_id and status.
//
// It is a single pass over the body, without building any value. The body
// is stored as the event and read by consumers in any language, so it
// accepts only what every JSON decoder reads the same way: the whole body
// must be valid JSON (RFC 8259, encoding/json's grammar) and valid UTF-8,
// the top level must be an object, and job_id and status must each appear
// exactly once, as strings, under exactly these keys (escapes decoded).
// Then json.Unmarshal into a struct (case-insensitive keys, last one wins)
// and a case-sensitive decoder both see the job and status the headers
// name. job_id must be a UUID in the 8-4-4-4-12 form (it is returned in
// lowercase); status must be krea.Status.Valid.
func ParseWebhook(body []byte) (Webhook, error) {
	p := jsonscan.New(body)
	if p.End() {
		return Webhook{}, ErrNotJSON
	}
	if p.Peek() != '{' {
		if jsonscan.Valid(body) {
			return Webhook{}, ErrNotObject
		}
		return Webhook{}, ErrNotJSON
	}
	var jobID, status field
	if !topObject(&p, &jobID, &status) || !p.End() {
		return Webhook{}, ErrNotJSON
	}
	if p.NotUTF8() {
		return Webhook{}, ErrNotUTF8
	}
	if jobID.ambiguous || status.ambiguous {
		return Webhook{}, ErrFieldAmbiguous
	}
	if jobID.bad || status.bad {
		return Webhook{}, ErrFieldNotString
	}
	var w Webhook
	if !jobID.set {
		return w, ErrJobIDMissing
	}
	id, ok := jobID.value()
	if !ok {
		return w, ErrJobIDInvalid
	}
	w.JobID, ok = canonicalUUID(id)
	if !ok {
		return w, ErrJobIDInvalid
	}
	if !status.set {
		return w, ErrStatusMissing
	}
	st, ok := status.value()
	if !ok {
		return w, ErrStatusInvalid
	}
	w.Status = internStatus(st)
	// submitted, rejected and mirrored are kreabus' own events, never
	// Krea's: a webhook naming them would take the submitter's or the
	// mirror's de-duplication IDs.
	if !w.Status.Valid() || events.IsKreabusStatus(w.Status) {
		return Webhook{}, ErrStatusInvalid
	}
	return w, nil
}

// field is a top-level string member found by the scanner.
type field struct {
	raw       []byte // between the quotes, as in the body
	escaped   bool   // raw holds escape sequences
	set       bool   // a string value was seen
	seen      bool   // the key was seen (in any letter case)
	bad       bool   // a value that is not a string was seen
	ambiguous bool   // the key was seen twice, or in another letter case
}

// value returns the decoded string.
func (f *field) value() ([]byte, bool) {
	if !f.escaped {
		return f.raw, true
	}
	return jsonscan.Unquote(f.raw)
}

var (
	keyJobID  = []byte("job_id")
	keyStatus = []byte("status")
)

// topObject scans the top-level object at p's position, recording job_id
// and status.
func topObject(p *jsonscan.Scanner, jobID, status *field) bool {
	if p.Open('}') {
		return true
	}
	for {
		key, kEsc, ok := p.Key()
		if !ok {
			return false
		}
		var target *field
		if kEsc || !isASCII(key) || len(key) == len(keyJobID) {
			// Both keys have six bytes; anything else needs decoding
			// (escapes) or Unicode folding (non-ASCII) before comparing.
			if kEsc {
				if key, ok = jsonscan.Unquote(key); !ok {
					return false
				}
			}
			// encoding/json matches names with bytes.EqualFold semantics;
			// only the exact name is unambiguous.
			var exact bool
			if bytes.EqualFold(key, keyJobID) {
				target, exact = jobID, string(key) == string(keyJobID)
			} else if bytes.EqualFold(key, keyStatus) {
				target, exact = status, string(key) == string(keyStatus)
			}
			if target != nil {
				target.ambiguous = target.ambiguous || target.seen || !exact
				target.seen = true
			}
		}
		switch {
		case target != nil && p.Peek() == '"':
			raw, esc, ok := p.String()
			if !ok {
				return false
			}
			target.raw, target.escaped, target.set = raw, esc, true
		case !p.Value(1):
			return false
		case target != nil:
			target.bad = true
		}
		if end, ok := p.Next('}'); !ok || end {
			return ok
		}
	}
}

func isASCII(b []byte) bool {
	for _, c := range b {
		if c >= 0x80 {
			return false
		}
	}
	return true
}

// canonicalUUID checks the 8-4-4-4-12 hexadecimal form and returns it in
// lowercase, the form Krea uses, so the de-duplication ID of a job is the
// same whatever the case it arrived in.
func canonicalUUID(b []byte) (string, bool) {
	if len(b) != 36 {
		return "", false
	}
	var out [36]byte
	for i, c := range b {
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return "", false
			}
		default:
			switch {
			case c >= '0' && c <= '9', c >= 'a' && c <= 'f':
			case c >= 'A' && c <= 'F':
				c += 'a' - 'A'
			default:
				return "", false
			}
		}
		out[i] = c
	}
	return string(out[:]), true
}

// internStatus returns the Status of b, without allocating for the
// documented ones.
func internStatus(b []byte) krea.Status {
	switch string(b) {
	case "completed":
		return krea.StatusCompleted
	case "failed":
		return krea.StatusFailed
	case "cancelled":
		return krea.StatusCancelled
	case "processing":
		return krea.StatusProcessing
	case "queued":
		return krea.StatusQueued
	case "backlogged":
		return krea.StatusBacklogged
	case "scheduled":
		return krea.StatusScheduled
	case "sampling":
		return krea.StatusSampling
	case "intermediate-complete":
		return krea.StatusIntermediateComplete
	}
	if len(b) > krea.MaxStatusLen {
		return "" // not Valid; no need to copy a long value
	}
	return krea.Status(b)
}
