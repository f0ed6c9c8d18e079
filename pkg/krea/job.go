// Package krea is a client for the Krea AI generation API and the types it
// speaks: jobs, statuses, webhooks and typed API errors.
package krea

import (
	"bytes"
	"encoding/json"
	"time"
)

// Status is a Krea job status such as "queued" or "completed".
type Status string

// Job statuses documented by Krea, in the order a job goes through them
// (Statuses lists them). Only completed, failed and cancelled are terminal;
// Krea may add others, so code must not assume this list is closed: a
// status is usable when it is Valid.
//
// These are the API's statuses. The statuses of kreabus's job events are
// these plus three kreabus adds (submitted, rejected, mirrored); package
// events declares those and lists all of them (events.Statuses).
const (
	StatusBacklogged           Status = "backlogged"
	StatusQueued               Status = "queued"
	StatusScheduled            Status = "scheduled"
	StatusProcessing           Status = "processing"
	StatusSampling             Status = "sampling"
	StatusIntermediateComplete Status = "intermediate-complete"
	StatusCompleted            Status = "completed"
	StatusFailed               Status = "failed"
	StatusCancelled            Status = "cancelled"
)

// Statuses returns the job statuses Krea documents, in lifecycle order,
// the terminal ones last.
func Statuses() []Status {
	return []Status{StatusBacklogged, StatusQueued, StatusScheduled, StatusProcessing, StatusSampling,
		StatusIntermediateComplete, StatusCompleted, StatusFailed, StatusCancelled}
}

// MaxStatusLen bounds a status so it can be used as one subject token.
const MaxStatusLen = 32

// IsTerminal reports whether a job in this status will never change again.
func (s Status) IsTerminal() bool {
	return s == StatusCompleted || s == StatusFailed || s == StatusCancelled
}

// Valid reports whether s is well formed: 1 to MaxStatusLen characters of
// [a-z0-9-], starting with a letter. That is what makes it safe as a NATS
// subject token: no '.', '*', '>' or white space can get through.
func (s Status) Valid() bool {
	if len(s) == 0 || len(s) > MaxStatusLen || s[0] < 'a' || s[0] > 'z' {
		return false
	}
	for i := 1; i < len(s); i++ {
		c := s[i]
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '-' {
			return false
		}
	}
	return true
}

// Job is a Krea job as returned by the API and posted to webhooks. Unknown
// fields are dropped when decoding into Job; Raw keeps the bytes where they
// must survive (the bridge stores webhook bodies byte for byte).
type Job struct {
	// Raw is the job object exactly as it was received, when it was
	// decoded from bytes (ParseJob, the Client's answers, DecodeEvent);
	// it is never marshalled.
	Raw json.RawMessage `json:"-"`

	JobID       string     `json:"job_id"`
	Status      Status     `json:"status"`
	CreatedAt   *time.Time `json:"created_at,omitempty"`
	CompletedAt *time.Time `json:"completed_at"`
	Result      *Result    `json:"result"`
	// Error is the failure detail as newer Krea examples show it
	// (top-level {code, message}); older docs put it in Result.Error.
	Error *JobError `json:"error,omitempty"`
}

// Result is what a job produced.
type Result struct {
	URLs    []string `json:"urls,omitempty"`
	StyleID string   `json:"style_id,omitempty"`
	// Error may be a string or an object depending on the docs page; it is
	// kept raw so decoding never fails on either.
	Error json.RawMessage `json:"error,omitempty"`
}

// JobError is a structured failure detail.
type JobError struct {
	Code    string `json:"code,omitempty"`
	Message string `json:"message,omitempty"`
}

// FailureReason returns the best human-readable failure detail of a job, from
// either place Krea documents it, or "" when there is none.
func (j *Job) FailureReason() string {
	if j.Error != nil {
		if j.Error.Message != "" {
			return j.Error.Message
		}
		return j.Error.Code
	}
	if j.Result != nil && len(j.Result.Error) > 0 {
		var s string
		if json.Unmarshal(j.Result.Error, &s) == nil {
			return s
		}
		var e JobError
		if json.Unmarshal(j.Result.Error, &e) == nil {
			if e.Message != "" {
				return e.Message
			}
			return e.Code
		}
		return string(j.Result.Error)
	}
	return ""
}

// UnmarshalJSON accepts the object {code, message} and, because error
// bodies elsewhere in the API are plain strings, also a bare string (taken
// as the message). Any other shape is kept as text in Message. A failed job
// must never become undecodable because Krea changed the shape of its
// failure detail.
func (e *JobError) UnmarshalJSON(data []byte) error {
	data = bytes.TrimSpace(data)
	if bytes.Equal(data, []byte("null")) {
		return nil
	}
	if len(data) > 0 && data[0] == '"' {
		var s string
		if err := json.Unmarshal(data, &s); err == nil {
			*e = JobError{Message: s}
			return nil
		}
	}
	type plain JobError // no methods: no recursion
	var p plain
	if len(data) > 0 && data[0] == '{' && json.Unmarshal(data, &p) == nil {
		*e = JobError(p)
		return nil
	}
	*e = JobError{Message: string(data)}
	return nil
}
