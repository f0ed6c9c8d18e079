package bridge

import (
	"bytes"
	"encoding/json"
	"errors"
	"unicode/utf8"

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

// maxDepth is encoding/json's nesting limit: a body it refuses, we refuse.
const maxDepth = 10000

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
	p := scanner{b: body}
	p.ws()
	if p.i >= len(p.b) {
		return Webhook{}, ErrNotJSON
	}
	if p.b[p.i] != '{' {
		if json.Valid(body) {
			return Webhook{}, ErrNotObject
		}
		return Webhook{}, ErrNotJSON
	}
	var jobID, status field
	if !p.topObject(&jobID, &status) {
		return Webhook{}, ErrNotJSON
	}
	p.ws()
	if p.i != len(p.b) {
		return Webhook{}, ErrNotJSON
	}
	if p.notUTF8 {
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
	return unquote(f.raw)
}

// unquote decodes the escapes of a JSON string's contents; rare, so it
// leans on encoding/json.
func unquote(raw []byte) ([]byte, bool) {
	q := make([]byte, 0, len(raw)+2)
	q = append(q, '"')
	q = append(q, raw...)
	q = append(q, '"')
	var s string
	if json.Unmarshal(q, &s) != nil {
		return nil, false
	}
	return []byte(s), true
}

var (
	keyJobID  = []byte("job_id")
	keyStatus = []byte("status")
)

// scanner is a JSON validator with the grammar of RFC 8259 as encoding/json
// implements it. Invalid UTF-8 inside strings does not stop the scan (as
// json.Valid accepts it) but is noted in notUTF8, so that a syntax error
// later in the body still wins.
type scanner struct {
	b       []byte
	i       int
	notUTF8 bool
}

func (p *scanner) ws() {
	for p.i < len(p.b) {
		switch p.b[p.i] {
		case ' ', '\t', '\n', '\r':
			p.i++
		default:
			return
		}
	}
}

// topObject scans the top-level object at p.i, recording job_id and status.
func (p *scanner) topObject(jobID, status *field) bool {
	if p.open('}') {
		return true
	}
	for {
		if p.i >= len(p.b) || p.b[p.i] != '"' {
			return false
		}
		kStart := p.i + 1
		kEsc, ok := p.str()
		if !ok {
			return false
		}
		key := p.b[kStart : p.i-1]
		var target *field
		if kEsc || !isASCII(key) || len(key) == len(keyJobID) {
			// Both keys have six bytes; anything else needs decoding
			// (escapes) or Unicode folding (non-ASCII) before comparing.
			if kEsc {
				if key, ok = unquote(key); !ok {
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
		p.ws()
		if p.i >= len(p.b) || p.b[p.i] != ':' {
			return false
		}
		p.i++
		p.ws()
		if p.i >= len(p.b) {
			return false
		}
		if target != nil {
			switch p.b[p.i] {
			case '"':
				vStart := p.i + 1
				vEsc, ok := p.str()
				if !ok {
					return false
				}
				target.raw, target.escaped, target.set = p.b[vStart:p.i-1], vEsc, true
			default:
				if !p.value(1) {
					return false
				}
				target.bad = true
			}
		} else if !p.value(1) {
			return false
		}
		if end, ok := p.next('}'); !ok || end {
			return ok
		}
	}
}

// open consumes the '{' or '[' at p.i and reports whether closer follows
// at once (an empty object or array), consuming that too.
func (p *scanner) open(closer byte) bool {
	p.i++
	p.ws()
	if p.i < len(p.b) && p.b[p.i] == closer {
		p.i++
		return true
	}
	return false
}

// next consumes what follows a member or an element: a comma, after which
// another comes, or closer, which ends the object or array (end). ok is
// false for anything else.
func (p *scanner) next(closer byte) (end, ok bool) {
	p.ws()
	if p.i >= len(p.b) {
		return false, false
	}
	switch p.b[p.i] {
	case ',':
		p.i++
		p.ws()
		return false, true
	case closer:
		p.i++
		return true, true
	}
	return false, false
}

func isASCII(b []byte) bool {
	for _, c := range b {
		if c >= 0x80 {
			return false
		}
	}
	return true
}

// value scans any JSON value at p.i, whose container is at depth.
func (p *scanner) value(depth int) bool {
	if p.i >= len(p.b) {
		return false
	}
	switch c := p.b[p.i]; c {
	case '"':
		_, ok := p.str()
		return ok
	case '{':
		return p.object(depth + 1)
	case '[':
		return p.array(depth + 1)
	case 't':
		return p.lit("true")
	case 'f':
		return p.lit("false")
	case 'n':
		return p.lit("null")
	default:
		if c == '-' || (c >= '0' && c <= '9') {
			return p.number()
		}
		return false
	}
}

func (p *scanner) lit(s string) bool {
	if len(p.b)-p.i < len(s) || string(p.b[p.i:p.i+len(s)]) != s {
		return false
	}
	p.i += len(s)
	return true
}

func (p *scanner) object(depth int) bool {
	if depth > maxDepth {
		return false
	}
	if p.open('}') {
		return true
	}
	for {
		if p.i >= len(p.b) || p.b[p.i] != '"' {
			return false
		}
		if _, ok := p.str(); !ok {
			return false
		}
		p.ws()
		if p.i >= len(p.b) || p.b[p.i] != ':' {
			return false
		}
		p.i++
		p.ws()
		if !p.value(depth) {
			return false
		}
		if end, ok := p.next('}'); !ok || end {
			return ok
		}
	}
}

func (p *scanner) array(depth int) bool {
	if depth > maxDepth {
		return false
	}
	if p.open(']') {
		return true
	}
	for {
		if !p.value(depth) {
			return false
		}
		if end, ok := p.next(']'); !ok || end {
			return ok
		}
	}
}

// str scans a string starting at the quote at p.i and leaves p.i after the
// closing quote. escaped reports whether it holds escape sequences.
func (p *scanner) str() (escaped, ok bool) {
	b := p.b
	i := p.i + 1
	for i < len(b) {
		for i < len(b) && plain[b[i]] {
			i++
		}
		if i >= len(b) {
			break
		}
		c := b[i]
		switch {
		case c == '"':
			p.i = i + 1
			return escaped, true
		case c == '\\':
			escaped = true
			if i+1 >= len(b) {
				return false, false
			}
			switch b[i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				i += 2
			case 'u':
				if i+6 > len(b) || !isHex(b[i+2]) || !isHex(b[i+3]) || !isHex(b[i+4]) || !isHex(b[i+5]) {
					return false, false
				}
				i += 6
			default:
				return false, false
			}
		case c < 0x20:
			return false, false
		default:
			// Non-ASCII: the rare path, off the plain loop. A run of
			// non-ASCII bytes is checked at once.
			j := i + 1
			for j < len(b) && b[j] >= utf8.RuneSelf {
				j++
			}
			if !utf8.Valid(b[i:j]) {
				p.notUTF8 = true
			}
			i = j
		}
	}
	return false, false
}

// plain marks the bytes a string holds as they are: printable ASCII but a
// quote or a backslash. Non-ASCII bytes leave the fast loop to have their
// UTF-8 checked.
var plain = func() (t [256]bool) {
	for c := 0x20; c < utf8.RuneSelf; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

func isHex(c byte) bool {
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F')
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

// number scans -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
func (p *scanner) number() bool {
	b := p.b
	i := p.i
	if b[i] == '-' {
		i++
	}
	if i >= len(b) || !isDigit(b[i]) {
		return false
	}
	if b[i] == '0' {
		i++
	} else {
		for i < len(b) && isDigit(b[i]) {
			i++
		}
	}
	if i < len(b) && b[i] == '.' {
		i++
		if i >= len(b) || !isDigit(b[i]) {
			return false
		}
		for i < len(b) && isDigit(b[i]) {
			i++
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		if i >= len(b) || !isDigit(b[i]) {
			return false
		}
		for i < len(b) && isDigit(b[i]) {
			i++
		}
	}
	p.i = i
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
