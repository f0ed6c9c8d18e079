package kreatest

import (
	"encoding/json"
	"maps"
	"time"

	"github.com/kreabus/kreabus/pkg/krea"
)

// Submission is a submission that created a job.
type Submission struct {
	JobID      string
	Path       string
	WebhookURL string          // the X-Webhook-URL header, "" when absent
	Body       json.RawMessage // the request body as sent
	UserAgent  string
	Time       time.Time
}

// Cancellation is one DELETE /jobs/{id} call that passed authentication.
type Cancellation struct {
	JobID      string
	StatusCode int // the simulator's answer: 200, 404, 409
	Time       time.Time
}

// WebhookDelivery is one webhook POST attempt, or a webhook the faults
// dropped (Dropped, no attempt made).
type WebhookDelivery struct {
	JobID      string
	Status     krea.Status // the job status the body carries
	URL        string
	Attempt    int // 1 for the first try of a delivery
	StatusCode int // the receiver's answer; 0 on a transport error
	Err        string
	Duplicate  bool // a deliberate repeat (Faults.DuplicateWebhookRate)
	Late       bool // held back (Faults.LateWebhookRate)
	Dropped    bool // never sent (Faults.DropWebhookRate)
	Time       time.Time
}

// Succeeded reports whether the receiver answered 2xx.
func (d WebhookDelivery) Succeeded() bool {
	return d.Err == "" && d.StatusCode >= 200 && d.StatusCode <= 299
}

// SetFaults replaces the fault switches; requests already in flight keep
// the ones they started with. It panics on an invalid rate, as a test bug.
func (s *Server) SetFaults(f Faults) {
	if err := f.validate(); err != nil {
		panic(err)
	}
	s.mu.Lock()
	s.faults = f
	s.mu.Unlock()
}

// Faults returns the current fault switches.
func (s *Server) Faults() Faults {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.faults
}

// Requests returns how many HTTP requests the simulator has received, of
// any kind and outcome.
func (s *Server) Requests() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.requests
}

// Submissions returns how many jobs were created. A request refused with an
// error status created none, except under Faults.LostAnswerRate.
func (s *Server) Submissions() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.submissions)
}

// SubmissionsFor returns how many jobs were created with this X-Webhook-URL.
// Since kreabus puts a per-request token in the URL, 1 means "this request
// reached the API exactly once".
func (s *Server) SubmissionsFor(webhookURL string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.created[webhookURL]
}

// SubmissionsByWebhookURL returns the number of jobs created per
// X-Webhook-URL ("" for none).
func (s *Server) SubmissionsByWebhookURL() map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return maps.Clone(s.created)
}

// AttemptsByWebhookURL returns the number of authenticated submission calls
// per X-Webhook-URL, including those answered with an injected fault or an
// error. Attempts minus submissions is what a client's retries cost.
func (s *Server) AttemptsByWebhookURL() map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return maps.Clone(s.attempts)
}

// SubmissionLog returns every submission that created a job, oldest first.
func (s *Server) SubmissionLog() []Submission {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Submission, len(s.submissions))
	copy(out, s.submissions)
	return out
}

// Jobs returns every job, oldest first, in its current state.
func (s *Server) Jobs() []krea.Job {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]krea.Job, 0, len(s.order))
	for _, j := range s.order {
		out = append(out, s.kreaJobLocked(j))
	}
	return out
}

// Job returns one job in its current state.
func (s *Server) Job(id string) (krea.Job, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	j, ok := s.jobs[id]
	if !ok {
		return krea.Job{}, false
	}
	return s.kreaJobLocked(j), true
}

// JobJSON returns a job's object exactly as GET /jobs/{id} would answer.
func (s *Server) JobJSON(id string) (json.RawMessage, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	j, ok := s.jobs[id]
	if !ok {
		return nil, false
	}
	return s.jsonLocked(j), true
}

// Cancellations returns every DELETE /jobs/{id} the simulator answered
// (after authentication and injected faults), oldest first: what a test
// asserts a cancel did or did not reach the API with.
func (s *Server) Cancellations() []Cancellation {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Cancellation, len(s.cancels))
	copy(out, s.cancels)
	return out
}

// WebhookDeliveries returns every webhook attempt and drop, in order.
func (s *Server) WebhookDeliveries() []WebhookDelivery {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]WebhookDelivery, len(s.deliveries))
	copy(out, s.deliveries)
	return out
}

// TB is the part of testing.TB CheckFor needs; kreatest does not import
// testing so commands can link it.
type TB interface {
	Helper()
	Fatalf(format string, args ...any)
}

// CheckFor calls f every interval until it returns nil, failing tb with
// f's last error once total has passed. It is the deadline-bound polling
// tests should use instead of sleeping (after nats-server's checkFor).
func CheckFor(tb TB, total, interval time.Duration, f func() error) {
	tb.Helper()
	deadline := time.Now().Add(total)
	var err error
	for {
		if err = f(); err == nil {
			return
		}
		if time.Now().After(deadline) {
			break
		}
		time.Sleep(interval)
	}
	tb.Fatalf("kreatest: condition not met after %v: %v", total, err)
}
