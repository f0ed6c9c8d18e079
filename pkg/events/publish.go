package events

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// ErrInvalidOption is matched (errors.Is) by the error of every publish or
// consume option given a value it cannot use.
var ErrInvalidOption = errors.New("events: invalid option")

func invalidOption(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrInvalidOption}, args...)...)
}

// PublishOpt configures PublishRequest. An option given a value it cannot
// use makes PublishRequest fail with an error matching ErrInvalidOption,
// before anything is published.
type PublishOpt func(*publishOpts) error

type publishOpts struct {
	subject     string
	traceParent string
}

// WithSubject publishes the request to subject instead of
// krea.requests.<kind>. The subject must be a literal subject under
// krea.requests. (no wildcards, no empty tokens), so that the
// KREA_REQUESTS stream captures it.
func WithSubject(subject string) PublishOpt {
	return func(o *publishOpts) error {
		if !validRequestSubject(subject) {
			return invalidOption("subject %q is not a literal subject under %s", subject, RequestsPrefix)
		}
		o.subject = subject
		return nil
	}
}

// WithTraceParent carries a W3C trace context traceparent (for example
// "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01") on the request
// message, so the submitter and every job event continue the trace. An
// empty value is ignored; a malformed one is an error.
func WithTraceParent(traceParent string) PublishOpt {
	return func(o *publishOpts) error {
		if traceParent == "" {
			return nil
		}
		if !ValidTraceParent(traceParent) {
			return invalidOption("traceparent %q is not a W3C traceparent", traceParent)
		}
		o.traceParent = traceParent
		return nil
	}
}

// PublishRequest publishes a generation request to KREA_REQUESTS and waits
// for JetStream to acknowledge it.
//
// The request is validated first; an empty RequestID is filled in (on req
// itself, so the caller learns it), and an invalid request is returned as
// its *RequestError (matching ErrInvalidRequest) with nothing published.
// Input and metadata are sent compact.
//
// The subject is krea.requests.<kind>, the kind taken from the path
// ("image", "video", "enhance" or "styles"); see WithSubject. The
// request ID is the message's Nats-Msg-Id, so publishing the same request
// again within the stream's duplicate window stores it once: the second
// PubAck then has Duplicate set. The Kreabus-Request-Id header carries it
// too.
//
// ctx bounds the wait for the acknowledgement; without a deadline the
// JetStream context's default timeout applies.
func PublishRequest(ctx context.Context, js jetstream.JetStream, req *Request, opts ...PublishOpt) (*jetstream.PubAck, error) {
	var o publishOpts
	for _, opt := range opts {
		if opt == nil {
			continue
		}
		if err := opt(&o); err != nil {
			return nil, err
		}
	}
	if req == nil {
		return nil, invalid("request", "is nil")
	}
	if req.RequestID == "" {
		req.RequestID = NewRequestID()
	}
	msg, err := newRequestMsg(req, &o)
	if err != nil {
		return nil, err
	}
	ack, err := js.PublishMsg(ctx, msg, jetstream.WithMsgID(req.RequestID))
	if err != nil {
		return nil, fmt.Errorf("events: publish request %s to %s: %w", req.RequestID, msg.Subject, err)
	}
	return ack, nil
}

// newRequestMsg validates req and builds its message.
func newRequestMsg(req *Request, o *publishOpts) (*nats.Msg, error) {
	// Validate what is sent: the compact form, as the submitter will see it
	// (the metadata limit applies to compact JSON).
	r := *req
	r.Input = compactJSON(r.Input)
	r.Metadata = compactJSON(r.Metadata)
	if err := r.Validate(); err != nil {
		return nil, err
	}
	if bytes.Equal(r.Metadata, []byte("null")) {
		r.Metadata = nil
	}
	data, err := json.Marshal(&r)
	if err != nil { // cannot happen: Input and Metadata are valid JSON
		return nil, fmt.Errorf("events: marshal request %s: %w", r.RequestID, err)
	}
	subject := o.subject
	if subject == "" {
		subject = requestSubject(r.Path)
	}
	msg := &nats.Msg{Subject: subject, Data: data, Header: make(nats.Header, 3)}
	msg.Header[HeaderRequestID] = []string{r.RequestID}
	if o.traceParent != "" {
		msg.Header[HeaderTraceParent] = []string{o.traceParent}
	}
	return msg, nil
}

// compactJSON returns b without insignificant white space, or b itself when
// it is not valid JSON (validation then says what is wrong).
func compactJSON(b json.RawMessage) json.RawMessage {
	if len(b) == 0 {
		return b
	}
	var buf bytes.Buffer
	if err := json.Compact(&buf, b); err != nil {
		return b
	}
	return buf.Bytes()
}

// requestSubject is the default subject of a request for a valid path:
// krea.requests.image for /generate/image/..., krea.requests.styles for
// /styles/train.
func requestSubject(path string) string {
	if rest, ok := strings.CutPrefix(path, "/generate/"); ok {
		kind, _, _ := strings.Cut(rest, "/")
		return RequestsPrefix + kind
	}
	return RequestsPrefix + "styles"
}

// validRequestSubject reports whether s is a literal subject under
// krea.requests.: tokens non-empty, without wildcards or white space.
func validRequestSubject(s string) bool {
	rest, ok := strings.CutPrefix(s, RequestsPrefix)
	if !ok || rest == "" || len(s) > 255 {
		return false
	}
	for _, tok := range strings.Split(rest, ".") {
		if tok == "" || tok == "*" || tok == ">" {
			return false
		}
		for i := 0; i < len(tok); i++ {
			c := tok[i]
			if c <= ' ' || c == 0x7f || c == '*' || c == '>' {
				return false
			}
		}
	}
	return true
}

// MaxTraceParentLen bounds the traceparent ValidTraceParent accepts: a
// version 00 one is 55 bytes; a later version may append fields.
const MaxTraceParentLen = 256

// ValidTraceParent reports whether s is a traceparent header value as W3C
// Trace Context (https://www.w3.org/TR/trace-context/#traceparent-header)
// defines it: version "-" trace-id "-" parent-id "-" trace-flags, in
// lower-case hex (2, 32, 16 and 2 digits), with version ff invalid and
// neither ID all zeros. Version 00 has exactly these four fields; a later
// version may append more after a "-", which are accepted when made of
// visible ASCII (no spaces or control characters) and the whole is at most
// MaxTraceParentLen bytes. The bridge and WithTraceParent carry only
// values it accepts.
func ValidTraceParent(s string) bool {
	const n = 2 + 1 + 32 + 1 + 16 + 1 + 2
	if len(s) < n || len(s) > MaxTraceParentLen || s[2] != '-' || s[35] != '-' || s[52] != '-' {
		return false
	}
	version, traceID, parentID, flags := s[0:2], s[3:35], s[36:52], s[53:55]
	if !isLowerHex(version) || !isLowerHex(traceID) || !isLowerHex(parentID) || !isLowerHex(flags) {
		return false
	}
	if version == "ff" || strings.Trim(traceID, "0") == "" || strings.Trim(parentID, "0") == "" {
		return false
	}
	if len(s) == n {
		return true
	}
	if version == "00" || s[n] != '-' {
		return false
	}
	for i := n + 1; i < len(s); i++ {
		if c := s[i]; c < 0x21 || c > 0x7e {
			return false
		}
	}
	return true
}

func isLowerHex(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// EnsureStreams ensures both kreabus streams, KREA_REQUESTS and KREA_JOBS,
// with EnsureStream: each is created when missing and checked when present.
// It tries both and returns their errors joined; an incompatible stream
// matches ErrIncompatibleStream.
func EnsureStreams(ctx context.Context, js jetstream.JetStream, o StreamOptions) error {
	_, reqErr := EnsureStream(ctx, js, RequestsStreamConfig(o))
	_, jobsErr := EnsureStream(ctx, js, JobsStreamConfig(o))
	return errors.Join(reqErr, jobsErr)
}
