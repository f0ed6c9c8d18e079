package service

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"

	"github.com/kreabus/kreabus/internal/clip"
	"github.com/kreabus/kreabus/internal/ledger"
	"github.com/kreabus/kreabus/pkg/events"
)

// cancelAttempts bounds how often a cancel re-reads a request record that
// the submitter changed under it.
const cancelAttempts = 3

// cancel answers krea.svc.jobs.cancel.
func (s *Service) cancel(ctx context.Context, r micro.Request) {
	var in events.CancelRequest
	if err := decode(r, &in); err != nil {
		s.answer(r, nil, err)
		return
	}
	var (
		out *events.CancelResult
		err error
	)
	switch {
	case (in.JobID == "") == (in.RequestID == ""):
		err = errorf(events.CodeBadRequest, "give job_id or request_id, not both")
	case in.JobID != "":
		out, err = s.cancelJob(ctx, in.JobID, "")
	default:
		out, err = s.cancelRequest(ctx, in.RequestID)
	}
	s.answer(r, out, err)
}

// cancelJob asks Krea to cancel a job kreabus made and has not seen end.
// The job's terminal cancelled event then comes as any terminal event
// does (webhook, or the reconciler's poll), once.
func (s *Service) cancelJob(ctx context.Context, jobID, requestID string) (*events.CancelResult, error) {
	if !ledger.ValidID(jobID) {
		return nil, errorf(events.CodeBadRequest, "job_id %q is not a job ID", clip.String(jobID, quotedIDLen))
	}
	jr, err := s.d.Ledger.Job(ctx, jobID)
	if err != nil {
		return nil, ledgerErr("job "+jobID, err)
	}
	if jr.Terminal {
		return nil, errorf(events.CodeConflict, "job %s has already finished: %s", jobID, jr.Status)
	}
	if err := s.wait(ctx); err != nil {
		return nil, err
	}
	if err := s.d.Krea.CancelJob(ctx, jobID); err != nil {
		return nil, kreaErr(jobID, err)
	}
	if requestID == "" {
		requestID = jr.RequestID
	}
	s.log.Info("job cancelled through the service", "job_id", jobID, "request_id", requestID)
	return &events.CancelResult{RequestID: requestID, JobID: jobID, Outcome: events.OutcomeJobCancelled}, nil
}

// cancelRequest cancels a request: its job once it has one; before it was
// ever sent, the request itself (rejected with reason cancelled, one
// krea.jobs.rejected event, never sent to the API). The ledger write is
// revision-checked (create-only when the ledger has no record), so it
// races safely with a submitter taking the request: whichever writes first
// decides, the other sees the change.
func (s *Service) cancelRequest(ctx context.Context, requestID string) (*events.CancelResult, error) {
	if !events.ValidRequestID(requestID) {
		return nil, errorf(events.CodeBadRequest, "request_id %q is not 1 to %d characters of [A-Za-z0-9_-]", clip.String(requestID, quotedIDLen), events.MaxRequestIDLen)
	}
	for range cancelAttempts {
		rec, rev, err := s.d.Ledger.RequestAt(ctx, requestID)
		var q *queued
		switch {
		case errors.Is(err, ledger.ErrNotFound):
			// Not taken by a submitter yet (or held back by a pause):
			// it must be waiting in KREA_REQUESTS to be cancelled.
			if q, err = s.findQueued(ctx, requestID); err != nil {
				return nil, err
			}
			if q == nil {
				return nil, ledgerErr("request "+requestID, ledger.ErrNotFound)
			}
			rec, rev = &ledger.Record{RequestID: requestID, Path: q.path, Metadata: q.metadata}, 0
		case err != nil:
			return nil, ledgerErr("request "+requestID, err)
		case rec.JobID != "":
			return s.cancelJob(ctx, rec.JobID, requestID)
		case rec.Status == events.StatusRejected:
			if rec.Reason == events.ReasonCancelled {
				// Cancelled already: the same answer again.
				return &events.CancelResult{RequestID: requestID, Outcome: events.OutcomeRequestCancelled}, nil
			}
			return nil, errorf(events.CodeConflict, "request %s was rejected already: %s", requestID, rec.Reason)
		case rec.Status == ledger.StatusSending:
			return nil, errorf(events.CodeConflict,
				"request %s is being sent to Krea right now; retry in a few seconds to cancel its job", requestID)
		case rec.Status == ledger.StatusUncertain:
			return nil, errorf(events.CodeConflict,
				"the outcome of request %s's last API call is unknown (a job may exist); kreabus is settling it: retry later to cancel its job", requestID)
		}
		// Queued: never sent, or handed back with certainly no job.
		done, published, err := s.rejectQueued(ctx, rec, rev)
		if errors.Is(err, ledger.ErrChanged) {
			continue // a submitter took it meanwhile: decide again
		}
		if err != nil {
			return nil, err
		}
		if !published {
			// Leave the message: the submitter publishes the event.
		} else if q != nil {
			s.dequeue(ctx, q.seq)
		} else if q, err := s.findQueued(ctx, requestID); err == nil && q != nil {
			s.dequeue(ctx, q.seq)
		}
		return done, nil
	}
	return nil, errorf(events.CodeConflict, "request %s is changing under the cancel (a submitter is taking it); retry", requestID)
}

// rejectQueued records the request as rejected (cancelled) if its record
// is still at rev, then publishes its one rejected event.
func (s *Service) rejectQueued(ctx context.Context, prev *ledger.Record, rev uint64) (_ *events.CancelResult, published bool, _ error) {
	body, _ := json.Marshal(events.Rejection{RequestID: prev.RequestID, Path: prev.Path, Reason: events.ReasonCancelled, Kind: events.RejectCancelled})
	rec := ledger.Record{
		RequestID: prev.RequestID, Path: prev.Path, Metadata: prev.Metadata,
		Status: events.StatusRejected, Terminal: true, Source: events.SourceSubmitter,
		Reason: events.ReasonCancelled, Rejection: body,
		Attempt: prev.Attempt, IntentAt: prev.IntentAt,
	}
	if _, err := s.d.Ledger.PutRequestAt(ctx, rec, rev); err != nil {
		if errors.Is(err, ledger.ErrChanged) {
			return nil, false, err
		}
		return nil, false, ledgerErr("request "+prev.RequestID, err)
	}
	msg := events.NewJobMsg(events.EventHeaders{
		Status:    events.StatusRejected,
		RequestID: prev.RequestID,
		Source:    events.SourceSubmitter,
		Metadata:  prev.Metadata,
		Reason:    events.ReasonCancelled,
		Time:      time.Now(),
	}, body)
	_, err := s.d.JS.PublishMsg(ctx, msg, jetstream.WithExpectStream(events.StreamJobs))
	if err != nil {
		// Recorded: the submitter publishes the event from the ledger
		// when it takes the request.
		s.log.Warn("cancelled request recorded; its rejected event will be published when the submitter takes it",
			"request_id", prev.RequestID, "err", err)
	}
	s.log.Info("queued request cancelled through the service", "request_id", prev.RequestID)
	return &events.CancelResult{RequestID: prev.RequestID, Outcome: events.OutcomeRequestCancelled}, err == nil, nil
}
