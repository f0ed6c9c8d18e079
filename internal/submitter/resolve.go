package submitter

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/kreabus/kreabus/internal/ledger"
	"github.com/kreabus/kreabus/pkg/events"
	"github.com/kreabus/kreabus/pkg/krea"
)

// Uncertain-call outcomes, the values of
// kreabus_submitter_uncertain_total{outcome}.
const (
	UncertainNew      = "uncertain" // a call's outcome became unknown
	UncertainNoJob    = "no_job"    // the job listing proved no job was made: sent again
	UncertainLinked   = "linked"    // the listing found the job, recorded as the request's
	UncertainWaiting  = "waiting"   // jobs nobody owns were made around the call: waiting for a webhook
	UncertainResent   = "resent"    // KREABUS_UNCERTAIN_WAIT passed: sent again (KREABUS_UNCERTAIN_ACTION=resend)
	UncertainRejected = "rejected"  // KREABUS_UNCERTAIN_WAIT passed: rejected (KREABUS_UNCERTAIN_ACTION=reject)
)

// What to do once KREABUS_UNCERTAIN_WAIT has passed without evidence.
const (
	UncertainActionReject = "reject"
	UncertainActionResend = "resend"
)

// Job listing bounds for an uncertain call.
const (
	// listSkew widens the window in which a job made by a call was created
	// on Krea's clock: room for the difference between Krea's clock and
	// ours.
	listSkew = 5 * time.Second
	// listPageSize and maxListPages bound one check: a window holding more
	// jobs than this is inconclusive and the request keeps waiting.
	listPageSize = 100
	maxListPages = 10
)

// resolveUncertain decides about a request whose last call's outcome is
// unknown (ledger status "uncertain": a job may exist and be paid for). Its
// ledger record names no job, so no webhook has proved one yet; the
// Recorder links the request as soon as one does, and the next delivery
// then republishes instead of getting here.
//
// Before the call's window has settled (KREABUS_UNCERTAIN_SETTLE after the
// call ended, or after its timeout when its process died) it waits. Then it lists the jobs Krea created
// in that window: a job the ledger gives to this request settles it; none
// that no request owns proves the call made no job, and the request is sent
// again at once. Jobs nobody owns may be this call's: the request waits for
// their webhooks, checking again every KREABUS_UNCERTAIN_SETTLE, until
// KREABUS_UNCERTAIN_WAIT after the call; then KREABUS_UNCERTAIN_ACTION
// rejects it (default) or sends it again.
//
// It returns true when the request is to be sent again now; otherwise the
// delivery has been settled (handed back, republished or rejected).
func (s *Submitter) resolveUncertain(ctx context.Context, d *delivery, rec *ledger.Record) bool {
	if wait := time.Until(s.settleAt(rec)); wait > 0 {
		s.nak(d, wait)
		return false
	}
	since := time.Since(rec.IntentAt)
	mine, unowned, err := s.jobsAround(ctx, d, rec.IntentAt, s.callEnd(rec))
	log := d.log.With("attempt", rec.Attempt, "intent_at", rec.IntentAt)
	switch {
	case err == nil && mine != "":
		s.m.uncertain.WithLabelValues(UncertainLinked).Inc()
		log.Info("uncertain call: the ledger gives a listed job to this request", "job_id", mine)
		s.adopt(ctx, d, rec, mine)
		return false
	case err == nil && len(unowned) == 0:
		s.m.uncertain.WithLabelValues(UncertainNoJob).Inc()
		log.Info("uncertain call made no job (Krea's job listing around the call holds none without an owner); sending again")
		return true
	case err != nil:
		log.Warn("cannot check Krea's job listing for an uncertain call; waiting", "err", err)
	}
	if since < s.cfg.UncertainWait {
		s.m.uncertain.WithLabelValues(UncertainWaiting).Inc()
		log.Info("uncertain call: jobs without an owner were made around it; waiting for their webhooks",
			"candidates", len(unowned), "recheck_in", s.cfg.UncertainSettle)
		s.nak(d, s.cfg.UncertainSettle)
		return false
	}
	if s.cfg.UncertainAction == UncertainActionResend {
		s.m.uncertain.WithLabelValues(UncertainResent).Inc()
		log.Warn("uncertain call not settled within KREABUS_UNCERTAIN_WAIT; sending again (KREABUS_UNCERTAIN_ACTION=resend): Krea may be paid twice",
			"candidates", strings.Join(unowned, ","), "wait", s.cfg.UncertainWait)
		return true
	}
	if !s.unchanged(ctx, d, rec) {
		return false
	}
	s.m.uncertain.WithLabelValues(UncertainRejected).Inc()
	reason := fmt.Sprintf("the outcome of the call to Krea is unknown and no webhook settled it within KREABUS_UNCERTAIN_WAIT (%v); not sent again so as not to pay twice", s.cfg.UncertainWait)
	if len(unowned) > 0 {
		reason += "; jobs made around the call that no request owns: " + strings.Join(unowned, ",")
	}
	s.reject(context.WithoutCancel(ctx), d, RejectUncertain, reason, nil)
	return false
}

// unchanged reports whether the request's record is still the uncertain
// one read at the start of this delivery; when another delivery moved it
// on meanwhile (the listing can take a while), this one is handed back to
// decide again from what it wrote.
func (s *Submitter) unchanged(ctx context.Context, d *delivery, rec *ledger.Record) bool {
	lctx, cancel := context.WithTimeout(ctx, defaultOpTimeout)
	now, _, err := s.ledger.RequestAt(lctx, d.id)
	cancel()
	if err == nil && now.Status == rec.Status && now.Attempt == rec.Attempt && now.IntentAt.Equal(rec.IntentAt) {
		return true
	}
	s.nak(d, s.cfg.RetryBackoffMin)
	return false
}

// adopt records job jobID, which the ledger gives to this request, as its
// job and republishes the submitted event.
func (s *Submitter) adopt(ctx context.Context, d *delivery, rec *ledger.Record, jobID string) {
	r := ledger.Record{RequestID: d.id, JobID: jobID, Path: d.req.Path, Metadata: d.req.Metadata, Attempt: rec.Attempt}
	lctx, cancel := context.WithTimeout(ctx, defaultOpTimeout)
	err := s.ledger.RecordSubmission(lctx, r)
	cancel()
	var xe *ledger.ConflictError
	switch {
	case errors.As(err, &xe) && xe.Existing.Status == events.StatusRejected:
		s.republishRejection(ctx, d, &xe.Existing)
	case errors.As(err, &xe):
		s.republish(ctx, d, &xe.Existing)
	case err != nil:
		s.m.ledgerErrs.Inc()
		s.nak(d, s.backoff(d.n))
	default:
		s.republish(ctx, d, &r)
	}
}

// jobsAround lists the jobs Krea created in the window a call from intent
// to end could have made one in, newest first, and sorts them by owner:
// mine is one the ledger gives to requestID; unowned are those the ledger
// holds no record of. An error says the listing could not be read whole.
func (s *Submitter) jobsAround(ctx context.Context, d *delivery, intent, end time.Time) (mine string, unowned []string, err error) {
	requestID := d.id
	from := intent.Add(-listSkew)
	to := end.Add(listSkew)
	cursor := to.Add(time.Millisecond).UTC().Format("2006-01-02T15:04:05.000Z")
	for range maxListPages {
		s.heartbeat(d)
		lctx, cancel := context.WithTimeout(ctx, s.cfg.APITimeout)
		page, err := s.api.ListJobs(lctx, krea.ListOptions{Cursor: cursor, Limit: listPageSize})
		cancel()
		if err != nil {
			return "", nil, fmt.Errorf("list jobs: %w", err)
		}
		for _, j := range page.Items {
			if j.CreatedAt != nil && j.CreatedAt.Before(from) {
				return "", unowned, nil // newest first: the window is done
			}
			if j.CreatedAt != nil && j.CreatedAt.After(to) {
				continue
			}
			owner, err := s.jobOwner(ctx, j.JobID)
			switch {
			case err != nil:
				return "", nil, err
			case owner == requestID:
				return j.JobID, nil, nil
			case owner == "":
				unowned = append(unowned, j.JobID)
			}
		}
		if page.NextCursor == "" {
			return "", unowned, nil
		}
		cursor = page.NextCursor
	}
	return "", unowned, fmt.Errorf("more than %d jobs around the call", listPageSize*maxListPages)
}

// jobOwner is the request the ledger gives job jobID to; "" when the ledger
// holds no record of the job.
func (s *Submitter) jobOwner(ctx context.Context, jobID string) (string, error) {
	lctx, cancel := context.WithTimeout(ctx, defaultOpTimeout)
	defer cancel()
	rec, err := s.ledger.Job(lctx, jobID)
	switch {
	case errors.Is(err, ledger.ErrNotFound):
		return "", nil
	case err != nil:
		return "", err
	case rec.RequestID == "":
		return "-", nil // recorded, but not by kreabus: not this call's
	}
	return rec.RequestID, nil
}
