package krea

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/kreabus/kreabus/internal/clip"
)

// Error kinds. Every error returned by a Client method matches at most one of
// ErrRetryable, ErrInvalidRequest and ErrAccount with errors.Is, so callers
// can decide what to do without looking at status codes:
//
//   - ErrRetryable: try again later (429, 408, 5xx, network errors, per-call
//     timeouts). Honour RetryAfter when it reports a delay.
//   - ErrInvalidRequest: this request will never succeed as it is (400, 404,
//     409, 410, 422 and any other 4xx not listed elsewhere).
//   - ErrAccount: the account cannot do this now (401, 402, 403); retrying
//     the same request is pointless until an operator acts.
//
// ErrModelUnavailable (410, the model is retired) and ErrNotFound (404) are
// finer kinds of ErrInvalidRequest.
//
// A cancelled or expired caller context is none of these: the error then
// matches context.Canceled or context.DeadlineExceeded instead.
var (
	ErrRetryable        = errors.New("krea: retryable error")
	ErrInvalidRequest   = errors.New("krea: invalid request")
	ErrAccount          = errors.New("krea: account error")
	ErrModelUnavailable = errors.New("krea: model unavailable")
	ErrNotFound         = errors.New("krea: not found")
	// ErrMalformedResponse is matched by a 2xx answer whose body is not what
	// the API documents. It is not retryable: for Submit the API may well
	// have created a (paid) job, so sending the request again could pay twice.
	ErrMalformedResponse = errors.New("krea: malformed response")
)

// APIError is a non-2xx answer from the Krea API. Krea's error body is
// {"error": "<text>"}; a retired model answers 410 with
// {"error": "model_unavailable", "reason", "message", "sunset_date",
// "replacement", "migration_url"}.
type APIError struct {
	// Method and Path name the call, without host or query.
	Method string
	Path   string
	// StatusCode is the HTTP status of the answer.
	StatusCode int
	// Code is the machine-readable error code when the body carries one
	// next to a human message (e.g. "model_unavailable"); empty otherwise.
	Code string
	// Message is the best human-readable explanation found in the body, or
	// the HTTP status text when the body has none.
	Message string
	// Reason, SunsetDate, Replacement and MigrationURL are set from a
	// retired model's 410 body.
	Reason       string
	SunsetDate   string
	Replacement  string
	MigrationURL string
	// RetryAfter is the delay the API asked for with a Retry-After header
	// (seconds or HTTP date); see the RetryAfter function for presence.
	RetryAfter time.Duration
	// Body is the answer body, at most MaxResponseBytes of it.
	Body []byte

	hasRetryAfter bool
}

func (e *APIError) Error() string {
	var b strings.Builder
	b.WriteString("krea: ")
	if e.Method != "" {
		b.WriteString(e.Method)
		b.WriteByte(' ')
		b.WriteString(e.Path)
		b.WriteString(": ")
	}
	b.WriteString(strconv.Itoa(e.StatusCode))
	if t := http.StatusText(e.StatusCode); t != "" {
		b.WriteByte(' ')
		b.WriteString(t)
	}
	if e.Code != "" {
		b.WriteString(": ")
		b.WriteString(e.Code)
	}
	if e.Message != "" && e.Message != http.StatusText(e.StatusCode) {
		b.WriteString(": ")
		b.WriteString(e.Message)
	}
	if e.Replacement != "" {
		b.WriteString(" (replacement: ")
		b.WriteString(e.Replacement)
		b.WriteByte(')')
	}
	return b.String()
}

// Is maps the status code onto the error kinds documented with ErrRetryable.
func (e *APIError) Is(target error) bool {
	switch target {
	case ErrRetryable:
		return retryableStatus(e.StatusCode)
	case ErrAccount:
		return accountStatus(e.StatusCode)
	case ErrInvalidRequest:
		return e.StatusCode >= 400 && e.StatusCode < 500 &&
			!retryableStatus(e.StatusCode) && !accountStatus(e.StatusCode)
	case ErrModelUnavailable:
		return e.StatusCode == http.StatusGone
	case ErrNotFound:
		return e.StatusCode == http.StatusNotFound
	}
	return false
}

func retryableStatus(code int) bool {
	// 408 is a server-side timeout: the request was not acted on.
	return code == http.StatusTooManyRequests || code == http.StatusRequestTimeout || code >= 500
}

func accountStatus(code int) bool {
	return code == http.StatusUnauthorized || code == http.StatusPaymentRequired || code == http.StatusForbidden
}

// NetworkError is a failure to get an answer at all: connection refused or
// reset, DNS, TLS, a per-call timeout, a body cut short. It matches
// ErrRetryable.
type NetworkError struct {
	// Method and Path name the call, without host or query.
	Method string
	Path   string
	// Timeout is true when the client's per-call timeout expired.
	Timeout bool
	// RequestSent is true when the request is known to have been written
	// completely before the failure, so the API may have acted on it (for
	// Submit: a job may exist). False means "not known to be sent", which is
	// also what a custom transport without tracing support yields.
	RequestSent bool
	Err         error
}

func (e *NetworkError) Error() string {
	what := "network error"
	if e.Timeout {
		what = "timeout"
	}
	return fmt.Sprintf("krea: %s %s: %s: %v", e.Method, e.Path, what, e.Err)
}

func (e *NetworkError) Unwrap() error { return e.Err }

// Is makes every network error match ErrRetryable.
func (e *NetworkError) Is(target error) bool { return target == ErrRetryable }

// RetryAfter returns the delay the API asked for with a Retry-After header on
// the answer that caused err. ok is false when err carries no such header.
// A date in the past yields (0, true).
func RetryAfter(err error) (d time.Duration, ok bool) {
	var apiErr *APIError
	if errors.As(err, &apiErr) && apiErr.hasRetryAfter {
		return apiErr.RetryAfter, true
	}
	return 0, false
}

// parseRetryAfter reads a Retry-After value: delta-seconds or an HTTP date
// (RFC 9110 §10.2.3). now is passed in so tests need no clock.
func parseRetryAfter(v string, now time.Time) (time.Duration, bool) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, false
	}
	if secs, err := strconv.ParseInt(v, 10, 64); err == nil {
		if secs < 0 {
			return 0, false
		}
		// Clamp absurd values instead of overflowing time.Duration.
		const maxSecs = int64(365 * 24 * time.Hour / time.Second)
		return time.Duration(min(secs, maxSecs)) * time.Second, true
	}
	if t, err := http.ParseTime(v); err == nil {
		if d := t.Sub(now); d > 0 {
			return d, true
		}
		return 0, true
	}
	return 0, false
}

// errorBody is every shape of error body Krea documents, decoded leniently.
type errorBody struct {
	Error        json.RawMessage `json:"error"`
	Message      json.RawMessage `json:"message"`
	Reason       json.RawMessage `json:"reason"`
	SunsetDate   json.RawMessage `json:"sunset_date"`
	Replacement  json.RawMessage `json:"replacement"`
	MigrationURL json.RawMessage `json:"migration_url"`
}

// jsonString returns raw as a string when it is a JSON string, else "".
func jsonString(raw json.RawMessage) string {
	var s string
	if len(raw) > 0 && raw[0] == '"' && json.Unmarshal(raw, &s) == nil {
		return s
	}
	return ""
}

// maxMessageLen bounds Message so a huge error body cannot flood logs.
const maxMessageLen = 512

// newAPIError builds the error for a non-2xx answer. token, when not empty,
// is scrubbed from every text field: an error message must never carry the
// API token, even if a proxy echoes the request back.
func newAPIError(method, path string, status int, header http.Header, body []byte, token string, now time.Time) *APIError {
	e := &APIError{Method: method, Path: path, StatusCode: status, Body: body}
	if header != nil {
		e.RetryAfter, e.hasRetryAfter = parseRetryAfter(header.Get("Retry-After"), now)
	}
	var eb errorBody
	if json.Unmarshal(body, &eb) == nil {
		msg := jsonString(eb.Message)
		errText := jsonString(eb.Error)
		if errText == "" && len(eb.Error) > 0 && eb.Error[0] == '{' {
			// Some pages show error as an object {code, message}.
			var je JobError
			if json.Unmarshal(eb.Error, &je) == nil {
				errText = je.Code
				if msg == "" {
					msg = je.Message
				}
			}
		}
		if msg != "" {
			e.Code, e.Message = errText, msg
		} else {
			e.Message = errText
		}
		e.Reason = jsonString(eb.Reason)
		e.SunsetDate = jsonString(eb.SunsetDate)
		e.Replacement = jsonString(eb.Replacement)
		e.MigrationURL = jsonString(eb.MigrationURL)
	} else if len(body) > 0 && !looksBinary(body) {
		// A proxy or load balancer answered with text or HTML.
		e.Message = strings.TrimSpace(string(body))
	}
	if e.Message == "" {
		e.Message = http.StatusText(status)
	}
	for _, p := range []*string{&e.Code, &e.Message, &e.Reason, &e.SunsetDate, &e.Replacement, &e.MigrationURL} {
		*p = sanitize(*p, token)
	}
	return e
}

// sanitize removes the token, control characters and excess length from
// text taken from an answer body before it goes into an error message.
func sanitize(s, token string) string {
	if token != "" {
		s = strings.ReplaceAll(s, token, "[REDACTED]")
	}
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, s)
	return clip.String(s, maxMessageLen)
}

func looksBinary(b []byte) bool {
	n := min(len(b), 512)
	for _, c := range b[:n] {
		if c == 0 {
			return true
		}
	}
	return false
}
