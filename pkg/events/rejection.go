package events

import (
	"encoding/json"
	"fmt"
)

// Rejection kinds: the Kind of a Rejection, the category of its reason.
const (
	// RejectInvalid: the request failed validation (DecodeRequest).
	RejectInvalid = "invalid_request"
	// RejectRefused: the API refused the request for good (400, 404, 409,
	// 422).
	RejectRefused = "api_refused"
	// RejectModelUnavailable: the model is retired (410); see Replacement.
	RejectModelUnavailable = "model_unavailable"
	// RejectOutOfRetries: retryable failures until the submitter's
	// delivery limit.
	RejectOutOfRetries = "out_of_retries"
	// RejectUncertain: a call's outcome stayed unknown (a job may exist)
	// past the submitter's wait.
	RejectUncertain = "uncertain"
	// RejectCancelled (= ReasonCancelled): cancelled through the kreabus
	// service before it was ever sent.
	RejectCancelled = ReasonCancelled
)

// Rejection is the body of a krea.jobs.rejected event: a request that
// never became a job, and why. Its Reason is also the event's
// Kreabus-Reason header.
type Rejection struct {
	// RequestID is the request's ID (derived from its place in the stream
	// when it had no usable one).
	RequestID string `json:"request_id"`
	// Path is the request's path as given, when it had one.
	Path string `json:"path,omitempty"`
	// Reason says what went wrong, in one line.
	Reason string `json:"reason"`
	// Kind is the reason's category: one of the Reject* constants.
	Kind string `json:"kind"`
	// HTTPStatus is the HTTP status of the API's refusal, when it refused.
	HTTPStatus int `json:"http_status,omitempty"`
	// Error is the API's error body (JSON, or its text as a JSON string),
	// when it refused.
	Error json.RawMessage `json:"error,omitempty"`
	// Replacement is the model to use instead of a retired one (410).
	Replacement string `json:"replacement,omitempty"`
}

// Rejection decodes the body of a krea.jobs.rejected event. It fails for
// any other event, and for a body that is not a JSON object.
func (e *Event) Rejection() (*Rejection, error) {
	if e.Status != StatusRejected {
		return nil, fmt.Errorf("events: a %s event has no rejection", e.Status)
	}
	var r Rejection
	if err := json.Unmarshal(e.Raw, &r); err != nil {
		return nil, fmt.Errorf("events: decode %s event body: %w", e.Subject, err)
	}
	return &r, nil
}
