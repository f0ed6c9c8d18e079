package reconciler

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/kreabus/kreabus/internal/ledger"
	"github.com/kreabus/kreabus/pkg/events"
	"github.com/kreabus/kreabus/pkg/krea"
)

// One poll: the job read from Krea, and its terminal event published.

// poll polls one job and publishes what it finds.
func (r *Reconciler) poll(ctx context.Context, rec ledger.Record) {
	if r.settled(ctx, rec) {
		return
	}
	if wait := r.pause(); wait > 0 {
		r.reschedule(rec.JobID, wait, false)
		return
	}
	if !r.claim(ctx, rec.JobID) {
		r.outcome(OutcomeClaimed)
		r.reschedule(rec.JobID, 0, false)
		return
	}
	if err := r.limiter.Wait(ctx); err != nil {
		r.reschedule(rec.JobID, 0, false)
		return
	}
	called := time.Now()
	job, err := r.d.Krea.GetJob(ctx, rec.JobID)
	if ctx.Err() != nil {
		r.reschedule(rec.JobID, 0, false)
		return
	}
	if err == nil || errors.Is(err, krea.ErrNotFound) {
		// The account works: a pause the submitter or another replica
		// took ends, and the next one starts from the minimum.
		r.d.Pause.Clear(ctx, called)
	}
	log := r.log.With("job_id", rec.JobID, "request_id", rec.RequestID)
	now := time.Now()
	age := now.Sub(rec.SubmittedAt)
	switch {
	case err == nil && job.Status.IsTerminal():
		r.outcome(OutcomeTerminal)
		log.Info("poll found a terminal job whose webhook did not come", "status", job.Status, "age", age.Round(time.Second))
		r.publish(ctx, rec, job.Status, job.Raw, "")
	case err == nil:
		if age > r.cfg.JobMaxAge {
			r.outcome(OutcomeExpired)
			msg := fmt.Sprintf("job still %s %v after submission, past KREABUS_JOB_MAX_AGE (%v); kreabus declared it failed",
				job.Status, age.Round(time.Second), r.cfg.JobMaxAge)
			log.Warn("job exceeded the maximum age", "status", job.Status, "age", age.Round(time.Second))
			r.publish(ctx, rec, krea.StatusFailed, failedBody(rec, job, CodeMaxAge, msg, now), msg)
			return
		}
		r.outcome(OutcomeNonTerminal)
		r.reschedule(rec.JobID, 0, true)
	case errors.Is(err, krea.ErrNotFound):
		r.outcome(OutcomeNotFound)
		msg := fmt.Sprintf("Krea no longer knows job %s (GET /jobs/%s answered 404); kreabus declared it failed", rec.JobID, rec.JobID)
		log.Warn("job unknown to Krea", "age", age.Round(time.Second))
		r.publish(ctx, rec, krea.StatusFailed, failedBody(rec, nil, CodeNotFound, msg, now), msg)
	case errors.Is(err, krea.ErrAccount):
		r.outcome(OutcomeAccountError)
		until := r.d.Pause.Trip(ctx, err.Error())
		log.Error("Krea refuses the account; polling and submission paused", "err", err, "until", until)
		r.reschedule(rec.JobID, time.Until(until), false)
	case errors.Is(err, krea.ErrRetryable):
		r.outcome(OutcomeRetryableError)
		if d, ok := krea.RetryAfter(err); ok && d > 0 {
			r.hold(now.Add(d))
		}
		log.Warn("poll failed; backing off", "err", err)
		r.reschedule(rec.JobID, 0, true)
	default:
		r.outcome(OutcomeError)
		log.Warn("poll failed; backing off", "err", err)
		r.reschedule(rec.JobID, 0, true)
	}
}

// publish stores the job's terminal event, unless the ledger already holds
// the job as terminal.
func (r *Reconciler) publish(ctx context.Context, rec ledger.Record, status krea.Status, body []byte, reason string) {
	log := r.log.With("job_id", rec.JobID, "request_id", rec.RequestID, "status", status)
	jr, settled := r.record(ctx, rec)
	if settled {
		log.Debug("job settled meanwhile; not publishing")
		return
	}
	md, extra := rec.Metadata, rec.Extra
	if jr != nil {
		// The job record is newer than the open list's copy: it may have
		// been found extra since.
		extra = extra || jr.Extra
		if len(md) == 0 {
			md = jr.Metadata
		}
	}
	msg := events.NewJobMsg(events.EventHeaders{
		JobID:     rec.JobID,
		Status:    status,
		RequestID: rec.RequestID,
		Source:    events.SourcePoll,
		Metadata:  md,
		Reason:    reason,
		ExtraJob:  extra,
	}, body)
	pctx, cancel := context.WithTimeout(ctx, r.cfg.PublishTimeout)
	defer cancel()
	ack, err := r.d.JetStream.PublishMsg(pctx, msg, jetstream.WithExpectStream(events.StreamJobs))
	if err != nil {
		log.Warn("cannot publish the polled event; retrying later", "err", err)
		r.reschedule(rec.JobID, 0, true)
		return
	}
	r.close(ctx, rec.JobID)
	log.Info("published polled event", "duplicate", ack.Duplicate, "seq", ack.Sequence)
}

// settled reports whether the ledger holds the job as terminal already,
// and then takes it off the open list: its webhook, or another replica,
// was first. A ledger that cannot be read says no: the poll goes on, and
// JetStream's duplicate window still guards the event.
func (r *Reconciler) settled(ctx context.Context, rec ledger.Record) bool {
	_, settled := r.record(ctx, rec)
	return settled
}

// record reads the job's record (nil when it cannot) and reports whether it
// is terminal, taking the job off the open list then.
func (r *Reconciler) record(ctx context.Context, rec ledger.Record) (*ledger.Record, bool) {
	jr, err := r.d.Store.Job(ctx, rec.JobID)
	if err != nil {
		return nil, false
	}
	if !jr.Terminal {
		return jr, false
	}
	r.close(ctx, rec.JobID)
	return jr, true
}

// close takes a settled job off the open list and out of the schedule.
func (r *Reconciler) close(ctx context.Context, jobID string) {
	if err := r.d.Store.CloseOpen(ctx, jobID); err != nil {
		r.log.Warn("cannot take a settled job off the open list; the Recorder will", "job_id", jobID, "err", err)
	}
	r.d.Open.Forget(jobID)
	r.forget(jobID)
}

// failedBody is the job object of a failure kreabus decided.
func failedBody(rec ledger.Record, last *krea.Job, code, msg string, now time.Time) []byte {
	const layout = "2006-01-02T15:04:05.000Z"
	b := struct {
		JobID       string        `json:"job_id"`
		Status      krea.Status   `json:"status"`
		CreatedAt   string        `json:"created_at,omitempty"`
		CompletedAt string        `json:"completed_at"`
		Result      *struct{}     `json:"result"`
		Error       krea.JobError `json:"error"`
	}{
		JobID:       rec.JobID,
		Status:      krea.StatusFailed,
		CompletedAt: now.UTC().Format(layout),
		Error:       krea.JobError{Code: code, Message: msg},
	}
	switch {
	case last != nil && last.CreatedAt != nil:
		b.CreatedAt = last.CreatedAt.UTC().Format(layout)
	case !rec.SubmittedAt.IsZero():
		b.CreatedAt = rec.SubmittedAt.UTC().Format(layout)
	}
	out, _ := json.Marshal(b)
	return out
}

func (r *Reconciler) outcome(o string) { r.polls.WithLabelValues(o).Inc() }
