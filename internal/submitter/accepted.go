package submitter

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"time"

	"github.com/kreabus/kreabus/internal/ledger"
	"github.com/kreabus/kreabus/internal/retry"
	"github.com/kreabus/kreabus/pkg/events"
	"github.com/kreabus/kreabus/pkg/krea"
)

// submitted finishes a request the API accepted: ledger, event, ack.
func (s *Submitter) submitted(ctx context.Context, d *delivery, res *krea.SubmitResult, attempt int) {
	job := res.Job
	at := time.Now().UTC()
	if job.CreatedAt != nil && !job.CreatedAt.IsZero() {
		at = job.CreatedAt.UTC()
	}
	log := d.log.With("job_id", job.JobID)
	if res.Deprecation != nil {
		log.Warn("Krea flags this endpoint as deprecated", "path", d.req.Path,
			"sunset", res.Deprecation.Sunset, "link", res.Deprecation.Link)
	}
	rec := ledger.Record{
		RequestID:   d.id,
		JobID:       job.JobID,
		Path:        d.req.Path,
		Metadata:    d.req.Metadata,
		SubmittedAt: at,
		Source:      events.SourceSubmitter,
		Attempt:     attempt,
	}
	recorded, extra := s.record(ctx, d, log, rec)

	msg := events.NewJobMsg(events.EventHeaders{
		JobID:       job.JobID,
		Status:      events.StatusSubmitted,
		RequestID:   d.id,
		Source:      events.SourceSubmitter,
		Metadata:    d.req.Metadata,
		TraceParent: d.traceParent,
		Time:        at,
		ExtraJob:    extra,
	}, res.Job.Raw)
	patience := defaultPublishPatience
	if !recorded {
		// Handing the request back now would find it "sending" and wait
		// for evidence (the webhook) before sending it again; the event
		// is quicker: hold the request until it is stored or we stop.
		patience = 0
	}
	if err := s.publish(ctx, d, msg, patience); err != nil {
		log.Error("could not publish the submitted event; the redelivery will publish it from the ledger or the job's webhook settles it", "err", err)
		s.nak(d, s.backoff(d.n))
		return
	}
	if !recorded {
		// One more try: the ack below might get lost.
		s.record(ctx, d, log, rec)
	}
	s.m.submitted.Inc()
	log.Info("request submitted", "status", job.Status, "path", d.req.Path, "attempt", attempt)
	s.ack(ctx, d)
}

// record writes the submission to the ledger, retrying a few times. It
// reports whether the ledger holds it now, and whether the job is extra:
// the request already had its outcome (both jobs are paid).
func (s *Submitter) record(ctx context.Context, d *delivery, log *slog.Logger, rec ledger.Record) (recorded, extra bool) {
	attempts := 0
	err := retry.Do(ctx, publishRetry, func(ctx context.Context) error {
		attempts++
		lctx, cancel := context.WithTimeout(ctx, defaultOpTimeout)
		err := s.ledger.RecordSubmission(lctx, rec)
		cancel()
		var xe *ledger.ConflictError
		if errors.As(err, &xe) {
			s.m.extraJobs.Inc()
			log.Error("Krea made a second job for this request (both are paid); its events are marked Kreabus-Extra-Job",
				"first_job_id", xe.Existing.JobID, "first_status", xe.Existing.Status)
			extra = true
			return nil
		}
		if errors.Is(err, ledger.ErrInvalidRecord) || attempts >= ledgerAttempts {
			return retry.Permanent(err)
		}
		return err
	}, func(error, int, time.Duration) { s.heartbeat(d) })
	if err == nil {
		return true, extra
	}
	s.m.ledgerErrs.Inc()
	log.Error("ledger write failed after the API accepted the request; its event or webhook will settle it", "err", err)
	return false, false
}

// republish publishes the submitted event of a request the ledger already
// holds, without calling the API, and acks the request. JetStream drops it
// as a duplicate when the first publication made it.
func (s *Submitter) republish(ctx context.Context, d *delivery, rec *ledger.Record) {
	log := d.log.With("job_id", rec.JobID)
	// The ledger keeps the facts, not the API's answer bytes: rebuild a job
	// object of the answer's shape.
	status := krea.StatusQueued
	if rec.Status.Valid() && !rec.Status.IsTerminal() && rec.Status != events.StatusSubmitted && rec.Status != events.StatusRejected {
		status = rec.Status
	}
	var created *time.Time
	if !rec.SubmittedAt.IsZero() {
		t := rec.SubmittedAt.UTC()
		created = &t
	}
	body, _ := json.Marshal(krea.Job{JobID: rec.JobID, Status: status, CreatedAt: created})
	md := rec.Metadata
	if len(md) == 0 {
		md = d.metadata
	}
	msg := events.NewJobMsg(events.EventHeaders{
		JobID:       rec.JobID,
		Status:      events.StatusSubmitted,
		RequestID:   d.id,
		Source:      events.SourceSubmitter,
		Metadata:    md,
		TraceParent: d.traceParent,
		Time:        rec.SubmittedAt,
	}, body)
	if err := s.publish(ctx, d, msg, defaultPublishPatience); err != nil {
		log.Error("could not publish the submitted event from the ledger; request handed back", "err", err)
		s.nak(d, s.backoff(d.n))
		return
	}
	s.m.republished.Inc()
	log.Info("request already submitted (ledger); event published again, API not called")
	s.ack(ctx, d)
}
