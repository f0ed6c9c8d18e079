package krea

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/google/uuid"

	"github.com/kreabus/kreabus/internal/clip"
)

// ErrInvalidJob is matched by every error ParseJob returns.
var ErrInvalidJob = errors.New("krea: invalid job object")

// ValidJobID reports whether id is a job ID as Krea issues them: a UUID in
// its canonical 36-character form. Other spellings uuid.Parse accepts
// (braces, urn:uuid:) are refused so that one job has one ID string.
func ValidJobID(id string) bool {
	if len(id) != 36 {
		return false
	}
	_, err := uuid.Parse(id)
	return err == nil
}

// ParseJob decodes a job object (an API answer or a webhook body) and checks
// what every consumer relies on: it is a JSON object, job_id is a UUID and
// status is well formed (Status.Valid). Unknown fields are ignored; the
// job's Raw is data itself, for where the exact bytes matter.
func ParseJob(data []byte) (*Job, error) {
	trimmed := bytes.TrimSpace(data)
	if len(trimmed) == 0 || trimmed[0] != '{' {
		return nil, fmt.Errorf("%w: not a JSON object", ErrInvalidJob)
	}
	var j Job
	if err := json.Unmarshal(trimmed, &j); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidJob, err)
	}
	if err := j.Validate(); err != nil {
		return nil, err
	}
	j.Raw = json.RawMessage(data)
	return &j, nil
}

// Validate checks the fields ParseJob checks.
func (j *Job) Validate() error {
	if !ValidJobID(j.JobID) {
		return fmt.Errorf("%w: job_id %q is not a UUID", ErrInvalidJob, clip.String(j.JobID, 64))
	}
	if !j.Status.Valid() {
		return fmt.Errorf("%w: status %q is not well formed", ErrInvalidJob, clip.String(string(j.Status), 64))
	}
	return nil
}

// MalformedResponseError is a 2xx answer whose body could not be used. It
// matches ErrMalformedResponse and wraps the decoding error.
type MalformedResponseError struct {
	Method     string
	Path       string
	StatusCode int
	// Body is the answer body, at most MaxResponseBytes of it.
	Body []byte
	Err  error
}

func (e *MalformedResponseError) Error() string {
	return fmt.Sprintf("krea: %s %s: %d answer: %v", e.Method, e.Path, e.StatusCode, e.Err)
}

func (e *MalformedResponseError) Unwrap() error { return e.Err }

// Is makes the error match ErrMalformedResponse.
func (e *MalformedResponseError) Is(target error) bool { return target == ErrMalformedResponse }

// JobList is one page of ListJobs.
type JobList struct {
	// Items are the jobs; each one's Raw holds its bytes as the API sent
	// them.
	Items []Job
	// NextCursor is the cursor for the next page; empty on the last page.
	NextCursor string
}

// parseJobList decodes a list answer. Krea's spec says next_cursor; one docs
// page says nextCursor. Both are read, next_cursor wins.
func parseJobList(data []byte) (*JobList, error) {
	var body struct {
		Items       []json.RawMessage `json:"items"`
		NextCursor  *string           `json:"next_cursor"`
		NextCursor2 *string           `json:"nextCursor"`
	}
	data = bytes.TrimSpace(data)
	if len(data) == 0 || data[0] != '{' {
		return nil, errors.New("not a JSON object")
	}
	if err := json.Unmarshal(data, &body); err != nil {
		return nil, err
	}
	l := &JobList{Items: make([]Job, 0, len(body.Items))}
	for i, raw := range body.Items {
		j, err := ParseJob(raw)
		if err != nil {
			return nil, fmt.Errorf("item %d: %w", i, err)
		}
		l.Items = append(l.Items, *j)
	}
	switch {
	case body.NextCursor != nil:
		l.NextCursor = *body.NextCursor
	case body.NextCursor2 != nil:
		l.NextCursor = *body.NextCursor2
	}
	return l, nil
}
