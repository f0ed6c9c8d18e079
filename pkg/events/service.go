package events

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/kreabus/kreabus/pkg/krea"
)

// The kreabus NATS service (github.com/nats-io/nats.go/micro): run by every
// submitter replica in one queue group, so each request is answered once.
// `nats micro ls`, `nats micro info kreabus` and `nats micro stats kreabus`
// show it.
const (
	ServiceName = "kreabus"
	// SubjectRequestStatus answers a StatusRequest with a RequestStatus.
	SubjectRequestStatus = "krea.svc.requests.status"
	// SubjectJobGet answers a JobRef with a JobInfo.
	SubjectJobGet = "krea.svc.jobs.get"
	// SubjectJobCancel answers a CancelRequest with a CancelResult.
	SubjectJobCancel = "krea.svc.jobs.cancel"
	// ServiceSubjects covers every endpoint, for permissions.
	ServiceSubjects = "krea.svc.>"
)

// Error codes of the service, in the Nats-Service-Error-Code header (HTTP
// status codes by meaning).
const (
	CodeBadRequest  = "400" // the request is not what the endpoint takes
	CodeNotFound    = "404" // kreabus does not know the request or job
	CodeConflict    = "409" // not possible in the current state (finished, being sent)
	CodeKreaError   = "502" // the Krea API failed or refused
	CodeUnavailable = "503" // the ledger, JetStream or Krea cannot be reached now: retry
)

// Request states of RequestStatus.State.
const (
	// StateQueued: waiting in KREA_REQUESTS (not taken yet, or handed back
	// to be sent again: no job was made).
	StateQueued = "queued"
	// StateSending: an API call for it is in flight right now.
	StateSending = "sending"
	// StateUncertain: a call's outcome is unknown; evidence decides.
	StateUncertain = "uncertain"
	// StateSubmitted: Krea made its job, not finished yet.
	StateSubmitted = "submitted"
	// StateTerminal: its job finished (completed, failed or cancelled).
	StateTerminal = "terminal"
	// StateRejected: it never became a job (reason in Reason).
	StateRejected = "rejected"
)

// ReasonCancelled is the rejection reason (and kind) of a request cancelled
// through the service before it was ever sent.
const ReasonCancelled = "cancelled"

// StatusRequest asks for a request's status.
type StatusRequest struct {
	RequestID string `json:"request_id"`
}

// JobRef names a job.
type JobRef struct {
	JobID string `json:"job_id"`
}

// CancelRequest names a job, or a request (its job, or the request itself
// when it is still queued).
type CancelRequest struct {
	JobID     string `json:"job_id,omitempty"`
	RequestID string `json:"request_id,omitempty"`
}

// StoredEvent is an event stored on KREA_JOBS: get it with
// jetstream.Stream.GetMsg(ctx, Seq).
type StoredEvent struct {
	Subject string    `json:"subject"`
	Seq     uint64    `json:"seq"`
	Time    time.Time `json:"time,omitzero"`
	Source  Source    `json:"source,omitempty"`
	JobID   string    `json:"job_id,omitempty"`
}

// JobState is what kreabus' ledger knows about a job.
type JobState struct {
	JobID    string      `json:"job_id"`
	Status   krea.Status `json:"status"`
	Terminal bool        `json:"terminal"`
	// Extra is set on a second (paid) job of its request.
	Extra       bool      `json:"extra,omitempty"`
	Source      Source    `json:"source,omitempty"`
	SubmittedAt time.Time `json:"submitted_at,omitzero"`
	UpdatedAt   time.Time `json:"updated_at,omitzero"`
}

// RequestStatus is what kreabus knows about a request.
type RequestStatus struct {
	RequestID string `json:"request_id"`
	// State is one of the State constants.
	State string `json:"state"`
	// JobID is the request's job, once Krea made it.
	JobID string    `json:"job_id,omitempty"`
	Job   *JobState `json:"job,omitempty"`
	// Path and Metadata are the request's.
	Path     string          `json:"path,omitempty"`
	Metadata json.RawMessage `json:"metadata,omitempty"`
	// Reason says why a request was rejected.
	Reason string `json:"reason,omitempty"`
	// Attempts counts the API calls that count towards its retries.
	Attempts    int       `json:"attempts,omitempty"`
	IntentAt    time.Time `json:"intent_at,omitzero"`
	SubmittedAt time.Time `json:"submitted_at,omitzero"`
	UpdatedAt   time.Time `json:"updated_at,omitzero"`
	// QueueSeq is its message's sequence in KREA_REQUESTS while queued
	// and not yet taken.
	QueueSeq uint64 `json:"queue_seq,omitempty"`
	// Paused is set while Krea account errors pause submission.
	Paused bool `json:"paused,omitempty"`
	// Events are its events stored on KREA_JOBS, oldest first.
	Events []StoredEvent `json:"events"`
}

// JobInfo is a job as Krea reports it now, or as stored when it is over.
type JobInfo struct {
	JobID     string `json:"job_id"`
	RequestID string `json:"request_id,omitempty"`
	// From is "krea" (GET /jobs/{id} just now) or "ledger" (the job is
	// terminal: its stored terminal event's body, or the ledger's facts).
	From   string      `json:"from"`
	Status krea.Status `json:"status"`
	// Job is Krea's job object as Krea sent it.
	Job    json.RawMessage `json:"job,omitempty"`
	Ledger *JobState       `json:"ledger,omitempty"`
}

// CancelResult says what a cancel did.
type CancelResult struct {
	RequestID string `json:"request_id,omitempty"`
	JobID     string `json:"job_id,omitempty"`
	// Outcome is "request_cancelled" (never sent: one rejected event with
	// reason cancelled) or "job_cancelled" (Krea accepted DELETE
	// /jobs/{id}; the terminal cancelled event follows as usual).
	Outcome string `json:"outcome"`
}

// Outcomes of CancelResult.
const (
	OutcomeRequestCancelled = "request_cancelled"
	OutcomeJobCancelled     = "job_cancelled"
)

// ServiceError is an error answer of the service: the micro error headers.
type ServiceError struct {
	Code        string // one of the Code constants
	Description string
}

func (e *ServiceError) Error() string {
	return fmt.Sprintf("kreabus service: %s %s", e.Code, e.Description)
}

// ErrServiceNotFound matches a ServiceError of code 404 (errors.Is).
var ErrServiceNotFound = &ServiceError{Code: CodeNotFound}

// Is matches another *ServiceError by code.
func (e *ServiceError) Is(target error) bool {
	t, ok := target.(*ServiceError)
	return ok && t.Code == e.Code
}

// Service calls the kreabus NATS service. The zero value is not usable:
// make it with NewService.
type Service struct {
	nc *nats.Conn
}

// NewService returns a client of the kreabus service on nc.
func NewService(nc *nats.Conn) (*Service, error) {
	if nc == nil {
		return nil, errors.New("events: NewService: nil connection")
	}
	return &Service{nc: nc}, nil
}

// RequestStatus asks what kreabus knows about a request.
func (s *Service) RequestStatus(ctx context.Context, requestID string) (*RequestStatus, error) {
	var out RequestStatus
	return &out, s.call(ctx, SubjectRequestStatus, StatusRequest{RequestID: requestID}, &out)
}

// Job asks for a job as Krea reports it now (or as stored, once over).
func (s *Service) Job(ctx context.Context, jobID string) (*JobInfo, error) {
	var out JobInfo
	return &out, s.call(ctx, SubjectJobGet, JobRef{JobID: jobID}, &out)
}

// Cancel cancels a job, or a request (its job, or the request itself while
// it is still queued).
func (s *Service) Cancel(ctx context.Context, req CancelRequest) (*CancelResult, error) {
	var out CancelResult
	return &out, s.call(ctx, SubjectJobCancel, req, &out)
}

// call sends in as JSON and decodes the answer into out, or returns the
// service's *ServiceError.
func (s *Service) call(ctx context.Context, subject string, in, out any) error {
	data, err := json.Marshal(in)
	if err != nil {
		return err
	}
	msg, err := s.nc.RequestWithContext(ctx, subject, data)
	if err != nil {
		if errors.Is(err, nats.ErrNoResponders) {
			return fmt.Errorf("events: no kreabus service answers %s (is a submitter running?): %w", subject, err)
		}
		return fmt.Errorf("events: %s: %w", subject, err)
	}
	if code := msg.Header.Get(micro.ErrorCodeHeader); code != "" {
		return &ServiceError{Code: code, Description: msg.Header.Get(micro.ErrorHeader)}
	}
	if err := json.Unmarshal(msg.Data, out); err != nil {
		return fmt.Errorf("events: %s: answer is not JSON: %w", subject, err)
	}
	return nil
}
