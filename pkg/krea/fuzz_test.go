package krea

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"
)

// FuzzParseJob feeds arbitrary bodies to ParseJob, as a webhook receiver
// or a confused API could. It must never panic, and what it accepts must
// be usable: a valid ID and status, and stable under a JSON round trip.
func FuzzParseJob(f *testing.F) {
	f.Add([]byte(`{"job_id":"4d0e5f97-9721-4422-b88c-73a9032d7de1","status":"completed","created_at":"2026-02-13T02:20:58.265Z","completed_at":"2026-02-13T02:21:05.001Z","result":{"urls":["https://gen.krea.ai/images/x.png"]}}`))
	f.Add([]byte(`{"job_id":"4d0e5f97-9721-4422-b88c-73a9032d7de1","status":"failed","error":{"code":"x","message":"y"},"result":{"error":"z"}}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, data []byte) {
		j, err := ParseJob(data)
		if err != nil {
			if !errors.Is(err, ErrInvalidJob) {
				t.Fatalf("error %v does not match ErrInvalidJob", err)
			}
			return
		}
		if !ValidJobID(j.JobID) || !j.Status.Valid() {
			t.Fatalf("accepted job with id %q status %q", j.JobID, j.Status)
		}
		_ = j.FailureReason()
		_ = j.Status.IsTerminal()
		out, err := json.Marshal(j)
		if err != nil {
			return // e.g. a time Go parses but cannot print; not ours to fix
		}
		j2, err := ParseJob(out)
		if err != nil {
			t.Fatalf("re-parse of %s: %v", out, err)
		}
		if j2.JobID != j.JobID || j2.Status != j.Status || j2.FailureReason() != j.FailureReason() {
			t.Fatalf("round trip changed the job: %+v -> %+v", j, j2)
		}
	})
}

// FuzzAPIError feeds arbitrary error answers to the error decoder. It must
// never panic, never let the token into a message, and always produce
// exactly one error kind for a 4xx or 5xx.
func FuzzAPIError(f *testing.F) {
	f.Add(429, []byte(`{"error":"Maximum number of concurrent jobs reached"}`), "5")
	f.Add(410, []byte(`{"error":"model_unavailable","reason":"retired","message":"m","sunset_date":"2026-01-01"}`), "")
	f.Add(500, []byte(`<html>Bearer fuzz-SECRET-token</html>`), "Wed, 21 Oct 2015 07:28:00 GMT")
	const token = "fuzz-SECRET-token"
	now := time.Date(2026, 2, 13, 0, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, status int, body []byte, retryAfter string) {
		if status < 100 || status > 599 {
			return
		}
		e := newAPIError("POST", "/generate/image/bfl/flux-1-dev", status, map[string][]string{"Retry-After": {retryAfter}}, body, token, now)
		msg := e.Error()
		if strings.Contains(msg, token) {
			t.Fatalf("token in error message %q", msg)
		}
		if len(e.Message) > maxMessageLen+len("…") {
			t.Fatalf("message of %d bytes", len(e.Message))
		}
		if e.RetryAfter < 0 {
			t.Fatalf("negative RetryAfter %v", e.RetryAfter)
		}
		if d, ok := RetryAfter(e); ok != e.hasRetryAfter || d != e.RetryAfter {
			t.Fatalf("RetryAfter(e) = %v, %v", d, ok)
		}
		if status >= 400 {
			n := 0
			for _, k := range []error{ErrRetryable, ErrInvalidRequest, ErrAccount} {
				if errors.Is(e, k) {
					n++
				}
			}
			if n != 1 {
				t.Fatalf("status %d matches %d kinds", status, n)
			}
		}
	})
}
