package events

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/google/uuid"

	"github.com/kreabus/kreabus/pkg/krea"
)

// Limits on generation requests.
const (
	// MaxRequestIDLen is the longest request ID.
	MaxRequestIDLen = 64
	// MaxMetadataSize is the largest metadata object, in bytes of JSON.
	MaxMetadataSize = 4 << 10
)

// Request is a generation request, published to a subject under
// krea.requests.
type Request struct {
	// RequestID identifies the request end to end: [A-Za-z0-9_-]{1,64}.
	// NewRequest fills it in; the submitter derives one when absent.
	RequestID string `json:"request_id,omitempty"`
	// Path is the Krea API path, e.g. "/generate/image/bfl/flux-1-dev".
	Path string `json:"path"`
	// Input is the JSON object sent to Krea unchanged.
	Input json.RawMessage `json:"input"`
	// Metadata is optional caller data (at most MaxMetadataSize bytes)
	// carried on every event of the job.
	Metadata json.RawMessage `json:"metadata,omitempty"`
}

// NewRequest returns a request for path with input marshalled to JSON and a
// fresh request ID.
func NewRequest(path string, input any) (*Request, error) {
	b, err := json.Marshal(input)
	if err != nil {
		return nil, fmt.Errorf("events: marshal input: %w", err)
	}
	return &Request{RequestID: NewRequestID(), Path: path, Input: b}, nil
}

// NewRequestID returns a fresh random request ID.
func NewRequestID() string { return uuid.NewString() }

// ErrInvalidRequest is matched (errors.Is) by every request validation error.
var ErrInvalidRequest = errors.New("invalid request")

// RequestError says what is wrong with a generation request.
type RequestError struct {
	Field  string
	Reason string
}

func (e *RequestError) Error() string { return e.Field + ": " + e.Reason }

// Is makes errors.Is(err, ErrInvalidRequest) true.
func (e *RequestError) Is(target error) bool { return target == ErrInvalidRequest }

func invalid(field, reason string) error { return &RequestError{Field: field, Reason: reason} }

// ValidRequestID reports whether id matches [A-Za-z0-9_-]{1,64}.
func ValidRequestID(id string) bool {
	if len(id) == 0 || len(id) > MaxRequestIDLen {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if (c < 'a' || c > 'z') && (c < 'A' || c > 'Z') && (c < '0' || c > '9') && c != '_' && c != '-' {
			return false
		}
	}
	return true
}

// DecodeRequest parses and validates a request; metadata is compacted.
// The error, when not nil, matches ErrInvalidRequest and says which field
// is wrong; the request is returned with it whenever the body is a JSON
// object, so its fields can name what was refused.
//
// A request without a request ID (absent, null or "") keeps an empty
// RequestID and is valid otherwise: the receiver names it (the submitter
// derives an ID from the message's place in the stream, the same on every
// redelivery). DecodeRequest never invents one.
func DecodeRequest(data []byte) (*Request, error) {
	var r Request
	if err := json.Unmarshal(data, &r); err != nil {
		return nil, invalid("body", "not a JSON request object: "+err.Error())
	}
	if err := r.validate(r.RequestID == ""); err != nil {
		return &r, err
	}
	if len(r.Metadata) > 0 {
		var buf bytes.Buffer
		if err := json.Compact(&buf, r.Metadata); err == nil {
			r.Metadata = buf.Bytes()
		}
	}
	return &r, nil
}

// Validate checks the request against the contract, as published: with a
// request ID.
func (r *Request) Validate() error { return r.validate(false) }

func (r *Request) validate(noID bool) error {
	if !noID && !ValidRequestID(r.RequestID) {
		return invalid("request_id", "must match [A-Za-z0-9_-]{1,64}")
	}
	if !krea.ValidPath(r.Path) {
		return invalid("path", fmt.Sprintf("%q is not an allowed Krea generation path", r.Path))
	}
	if !isJSONObject(r.Input) {
		return invalid("input", "must be a JSON object")
	}
	if len(r.Metadata) > 0 && !bytes.Equal(bytes.TrimSpace(r.Metadata), []byte("null")) {
		if !isJSONObject(r.Metadata) {
			return invalid("metadata", "must be a JSON object")
		}
		if len(r.Metadata) > MaxMetadataSize {
			return invalid("metadata", fmt.Sprintf("larger than %d bytes", MaxMetadataSize))
		}
	}
	return nil
}

func isJSONObject(b json.RawMessage) bool {
	b = bytes.TrimSpace(b)
	return len(b) >= 2 && b[0] == '{' && json.Valid(b)
}
