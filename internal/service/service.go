// Package service is the kreabus NATS service (nats.go micro, name
// "kreabus"): request status, job get and cancel over NATS request/reply,
// so services that speak only NATS, and operators with the `nats` CLI or
// `kreabus status|job|cancel`, never call Krea over HTTP themselves.
//
// The submitter program runs it: it holds the ledger, the Krea client and
// the submitter's rate limit. Replicas share one queue group, so each
// request is answered once; `nats micro ls|info|stats kreabus` show it.
package service

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"

	"github.com/kreabus/kreabus/internal/ledger"
	"github.com/kreabus/kreabus/pkg/events"
	"github.com/kreabus/kreabus/pkg/krea"
)

// Defaults.
const (
	// DefaultTimeout bounds the work of one service request (ledger and
	// stream reads, a Krea call): a caller's `nats req` waits 5 s by
	// default, a Krea call under load may take longer.
	DefaultTimeout = 10 * time.Second
	// DefaultQueueScan bounds how many queued messages of KREA_REQUESTS a
	// status or cancel of a request the ledger does not know reads to find
	// it: a request waits there, without a ledger record, until the
	// submitter takes it (or all through an account pause). JetStream has
	// no lookup by message ID, so this is a read per message, from the
	// oldest; a request deeper in the queue is answered 404.
	DefaultQueueScan = 10_000
	// Version is the service version micro reports.
	Version = krea.Version
)

// Ledger is what the service reads and writes in the job ledger;
// *ledger.Ledger implements it.
type Ledger interface {
	RequestAt(ctx context.Context, requestID string) (*ledger.Record, uint64, error)
	PutRequestAt(ctx context.Context, rec ledger.Record, rev uint64) (uint64, error)
	Job(ctx context.Context, jobID string) (*ledger.Record, error)
}

// Krea is the part of the Krea client the service calls; *krea.Client
// implements it.
type Krea interface {
	GetJob(ctx context.Context, id string) (*krea.Job, error)
	CancelJob(ctx context.Context, id string) error
}

// Deps are what the service works with.
type Deps struct {
	// Conn carries the service (required).
	Conn *nats.Conn
	// JS reads KREA_REQUESTS and KREA_JOBS and publishes rejected events
	// (required).
	JS     jetstream.JetStream
	Ledger Ledger // required
	Krea   Krea   // required
	// Wait, when set, paces Krea calls: the submitter's rate limit.
	Wait func(ctx context.Context) error
	// Paused, when set, reports whether account errors pause submission.
	Paused func() bool
	Log    *slog.Logger
}

// Config tunes the service; zero fields take the defaults.
type Config struct {
	Timeout   time.Duration
	QueueScan int
	// QueueGroup overrides micro's default queue group.
	QueueGroup string
}

func (c *Config) setDefaults() {
	if c.Timeout == 0 {
		c.Timeout = DefaultTimeout
	}
	if c.QueueScan == 0 {
		c.QueueScan = DefaultQueueScan
	}
}

// Validate checks the configuration.
func (c Config) Validate() error {
	c.setDefaults()
	var errs []error
	if c.Timeout < 0 {
		errs = append(errs, fmt.Errorf("service: timeout %v is negative", c.Timeout))
	}
	if c.QueueScan < 0 {
		errs = append(errs, fmt.Errorf("service: queue scan %d is negative", c.QueueScan))
	}
	return errors.Join(errs...)
}

// Service is the running kreabus NATS service.
type Service struct {
	cfg Config
	d   Deps
	log *slog.Logger
	svc micro.Service
}

// Start registers the service and its three endpoints on d.Conn.
func Start(cfg Config, d Deps) (*Service, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.setDefaults()
	if d.Conn == nil || d.JS == nil || d.Ledger == nil || d.Krea == nil {
		return nil, errors.New("service: Conn, JS, Ledger and Krea are required")
	}
	if d.Log == nil {
		d.Log = slog.New(slog.DiscardHandler)
	}
	s := &Service{cfg: cfg, d: d, log: d.Log.With("component", "service")}
	svc, err := micro.AddService(d.Conn, micro.Config{
		Name:        events.ServiceName,
		Version:     Version,
		Description: "kreabus: status, get and cancel of Krea generation requests and jobs",
		QueueGroup:  cfg.QueueGroup,
	})
	if err != nil {
		return nil, fmt.Errorf("service: %w", err)
	}
	eps := []struct {
		name, subject string
		h             func(context.Context, micro.Request)
	}{
		{"requests-status", events.SubjectRequestStatus, s.status},
		{"jobs-get", events.SubjectJobGet, s.getJob},
		{"jobs-cancel", events.SubjectJobCancel, s.cancel},
	}
	for _, ep := range eps {
		h := ep.h
		err := svc.AddEndpoint(ep.name, micro.HandlerFunc(func(r micro.Request) {
			ctx, cancel := context.WithTimeout(context.Background(), s.cfg.Timeout)
			defer cancel()
			h(ctx, r)
		}), micro.WithEndpointSubject(ep.subject))
		if err != nil {
			_ = svc.Stop()
			return nil, fmt.Errorf("service: endpoint %s: %w", ep.subject, err)
		}
	}
	s.svc = svc
	// Return once the server has the subscriptions (when connected), so a
	// request sent right after Start finds a responder.
	_ = d.Conn.FlushTimeout(time.Second)
	s.log.Info("kreabus NATS service started", "id", svc.Info().ID, "version", Version)
	return s, nil
}

// Stop drains the endpoints: requests in progress are answered.
func (s *Service) Stop() error { return s.svc.Stop() }

// Info is micro's description of the service.
func (s *Service) Info() micro.Info { return s.svc.Info() }

// Stats are micro's request counts of the service.
func (s *Service) Stats() micro.Stats { return s.svc.Stats() }

// Error is an answer that is a service error.
type Error = events.ServiceError

func errorf(code, format string, args ...any) *Error {
	return &Error{Code: code, Description: fmt.Sprintf(format, args...)}
}

// answer responds with v as JSON, or with err as micro error headers (and
// {"error": description} as body, for callers reading only the body).
func (s *Service) answer(r micro.Request, v any, err error) {
	if err != nil {
		var se *Error
		if !errors.As(err, &se) {
			se = errorf(events.CodeUnavailable, "%v", err)
		}
		body, _ := json.Marshal(map[string]string{"error": se.Description})
		if rerr := r.Error(se.Code, se.Description, body); rerr != nil {
			s.log.Debug("cannot answer a service request", "subject", r.Subject(), "err", rerr)
		}
		return
	}
	if rerr := r.RespondJSON(v); rerr != nil {
		s.log.Debug("cannot answer a service request", "subject", r.Subject(), "err", rerr)
	}
}

// decode reads a JSON object of at most maxBody bytes into v.
func decode(r micro.Request, v any) error {
	const maxBody = 4 << 10
	data := r.Data()
	if len(data) > maxBody {
		return errorf(events.CodeBadRequest, "request body over %d bytes", maxBody)
	}
	if err := json.Unmarshal(data, v); err != nil {
		return errorf(events.CodeBadRequest, "request body is not the JSON object this endpoint takes: %v", err)
	}
	return nil
}

// ledgerErr maps a ledger read error.
func ledgerErr(what string, err error) error {
	if errors.Is(err, ledger.ErrNotFound) {
		return errorf(events.CodeNotFound, "kreabus does not know %s (never seen, or older than the ledger TTL)", what)
	}
	return errorf(events.CodeUnavailable, "ledger unavailable: %v", err)
}

// kreaErr maps a Krea API error.
func kreaErr(jobID string, err error) error {
	var apiErr *krea.APIError
	switch {
	case errors.Is(err, krea.ErrNotFound):
		return errorf(events.CodeNotFound, "Krea does not know job %s", jobID)
	case errors.As(err, &apiErr) && apiErr.StatusCode == 409:
		return errorf(events.CodeConflict, "Krea refused: job %s has already finished (%s)", jobID, apiErr.Message)
	case errors.As(err, &apiErr) && apiErr.StatusCode < 500 && apiErr.StatusCode != 408 && apiErr.StatusCode != 429:
		return errorf(events.CodeKreaError, "Krea refused: %d %s", apiErr.StatusCode, apiErr.Message)
	}
	return errorf(events.CodeUnavailable, "Krea API unavailable: %v", err)
}

func (s *Service) wait(ctx context.Context) error {
	if s.d.Wait == nil {
		return nil
	}
	if err := s.d.Wait(ctx); err != nil {
		return errorf(events.CodeUnavailable, "the submitter's Krea rate limit left no room in time; retry")
	}
	return nil
}

func jobState(r *ledger.Record) *events.JobState {
	return &events.JobState{
		JobID: r.JobID, Status: r.Status, Terminal: r.Terminal, Extra: r.Extra, Source: r.Source,
		SubmittedAt: r.SubmittedAt, UpdatedAt: r.UpdatedAt,
	}
}

func storedEvents(jobID string, refs []ledger.EventRef) []events.StoredEvent {
	out := make([]events.StoredEvent, 0, len(refs))
	for _, e := range refs {
		out = append(out, events.StoredEvent{Subject: e.Subject, Seq: e.Seq, Time: e.Time, Source: e.Source, JobID: jobID})
	}
	return out
}
