package service

import (
	"context"
	"errors"

	"github.com/nats-io/nats.go/micro"

	"github.com/kreabus/kreabus/internal/clip"
	"github.com/kreabus/kreabus/internal/ledger"
	"github.com/kreabus/kreabus/pkg/events"
)

// status answers krea.svc.requests.status.
func (s *Service) status(ctx context.Context, r micro.Request) {
	var in events.StatusRequest
	if err := decode(r, &in); err != nil {
		s.answer(r, nil, err)
		return
	}
	st, err := s.requestStatus(ctx, in.RequestID)
	s.answer(r, st, err)
}

func (s *Service) requestStatus(ctx context.Context, requestID string) (*events.RequestStatus, error) {
	if !events.ValidRequestID(requestID) {
		return nil, errorf(events.CodeBadRequest, "request_id %q is not 1 to %d characters of [A-Za-z0-9_-]", clip.String(requestID, quotedIDLen), events.MaxRequestIDLen)
	}
	out := &events.RequestStatus{RequestID: requestID, Events: []events.StoredEvent{}}
	if s.d.Paused != nil {
		out.Paused = s.d.Paused()
	}
	rec, _, err := s.d.Ledger.RequestAt(ctx, requestID)
	if errors.Is(err, ledger.ErrNotFound) {
		q, err := s.findQueued(ctx, requestID)
		if err != nil {
			return nil, err
		}
		if q == nil {
			return nil, ledgerErr("request "+requestID, ledger.ErrNotFound)
		}
		out.State, out.QueueSeq, out.Path, out.Metadata = events.StateQueued, q.seq, q.path, q.metadata
		return out, nil
	}
	if err != nil {
		return nil, ledgerErr("request "+requestID, err)
	}
	out.Path, out.Metadata, out.Reason = rec.Path, rec.Metadata, rec.Reason
	out.Attempts, out.IntentAt, out.SubmittedAt, out.UpdatedAt = rec.Attempt, rec.IntentAt, rec.SubmittedAt, rec.UpdatedAt
	switch rec.Status {
	case ledger.StatusSending:
		out.State = events.StateSending
	case ledger.StatusUncertain:
		out.State = events.StateUncertain
	case ledger.StatusRetrying:
		out.State = events.StateQueued
	case events.StatusRejected:
		out.State = events.StateRejected
		out.Events = append(out.Events, storedEvents("", rec.Events)...)
	default:
		out.State = events.StateSubmitted
	}
	if rec.JobID == "" {
		return out, nil
	}
	out.JobID = rec.JobID
	out.State = events.StateSubmitted
	jr, err := s.d.Ledger.Job(ctx, rec.JobID)
	switch {
	case errors.Is(err, ledger.ErrNotFound):
		// Expired before its request record, or not written yet.
	case err != nil:
		return nil, ledgerErr("job "+rec.JobID, err)
	default:
		out.Job = jobState(jr)
		if jr.Terminal {
			out.State = events.StateTerminal
		}
		out.Events = append(out.Events, storedEvents(rec.JobID, jr.Events)...)
	}
	return out, nil
}

// quotedIDLen bounds, in bytes, a malformed ID quoted in an error.
const quotedIDLen = 80
