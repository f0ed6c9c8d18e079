package submitter

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/kreabus/kreabus/internal/ledger"
	"github.com/kreabus/kreabus/pkg/krea"
)

// callMargin is added to the API timeout for how long after its intent a
// call may still be running (clocks of two replicas, a paused process):
// past it, a request still "sending" lost the process that called.
func (s *Submitter) callMargin() time.Duration { return min(maxCallMargin, s.cfg.UncertainSettle) }

// settleAt is when Krea's job listing can be trusted to show the job an
// uncertain call made, if it made one: KREABUS_UNCERTAIN_SETTLE after the
// call ended (its answer, or its timeout; for a call whose process died,
// the latest it could have ended).
func (s *Submitter) settleAt(rec *ledger.Record) time.Time {
	return s.callEnd(rec).Add(s.cfg.UncertainSettle)
}

// callEnd is when an uncertain call ended, or the latest it could have.
func (s *Submitter) callEnd(rec *ledger.Record) time.Time {
	if !rec.EndedAt.IsZero() {
		return rec.EndedAt
	}
	return rec.IntentAt.Add(s.cfg.APITimeout + s.callMargin())
}

// send records the intent of the next attempt, calls the API and settles
// the request by what came back. prev is the request's record at revision
// rev (nil, 0 when the ledger holds none).
func (s *Submitter) send(ctx context.Context, d *delivery, prev *ledger.Record, rev uint64, release releaseFunc) {
	attempt := 1
	if prev != nil {
		attempt = prev.Attempt + 1
	}
	intent := ledger.Record{
		RequestID: d.id,
		Path:      d.req.Path,
		Metadata:  d.req.Metadata,
		Status:    ledger.StatusSending,
		Attempt:   attempt,
		IntentAt:  time.Now().UTC(),
	}
	lctx, cancel := context.WithTimeout(ctx, defaultOpTimeout)
	rev, err := s.ledger.PutRequestAt(lctx, intent, rev)
	cancel()
	if err != nil {
		release(outcomeNoCall, time.Time{}, 0)
		if errors.Is(err, ledger.ErrChanged) {
			// Another delivery moved the request on meanwhile: decide again
			// on the next delivery, from what it wrote.
			s.nak(d, s.cfg.RetryBackoffMin)
			return
		}
		s.m.ledgerErrs.Inc()
		s.retry(ctx, d, attempt-1, fmt.Errorf("ledger unavailable: %w", err), 0)
		return
	}

	started := time.Now()
	stopBeats := s.beatDuring(d)
	res, err := s.api.Submit(ctx, d.req.Path, d.req.Input, krea.WithWebhook(s.tok.URL(s.cfg.PublicURL, d.id)))
	stopBeats()
	s.m.apiDuration.Observe(time.Since(started).Seconds())
	s.m.apiCalls.WithLabelValues(apiCode(err)).Inc()
	var apiErr *krea.APIError
	errors.As(err, &apiErr)
	switch {
	case err == nil:
		release(outcomeOK, started, 0)
		s.submitted(ctx, d, res, attempt)

	case errors.Is(err, krea.ErrAccount):
		s.gate.pause(ctx, err.Error())
		release(outcomeAccount, started, 0)
		// Refused before any work: no job, and the call does not count
		// towards KREABUS_MAX_DELIVERIES.
		s.markRetrying(ctx, d, intent, rev, attempt-1)
		s.pauseNak(d)

	case errors.Is(err, krea.ErrInvalidRequest):
		release(outcomeRefused, started, 0)
		kind, reason := RejectRefused, "Krea API refused the request: "+trimKrea(err.Error())
		if apiErr != nil {
			reason = fmt.Sprintf("Krea API refused the request: %d %s", apiErr.StatusCode, apiErr.Message)
			if errors.Is(err, krea.ErrModelUnavailable) {
				kind, reason = RejectModelUnavailable, modelUnavailableReason(apiErr)
			}
		}
		s.reject(ctx, d, kind, reason, apiErr)

	case mayHaveMadeJob(err):
		// The request reached Krea (or may have) and no usable answer came
		// back: a job may exist and be paid for. Never send it blindly
		// again: evidence decides (see resolveUncertain).
		if nerr := (*krea.NetworkError)(nil); errors.As(err, &nerr) && nerr.Timeout {
			release(outcomeSlow, started, 0)
		} else {
			release(outcomeFailed, started, 0)
		}
		intent.Status, intent.EndedAt = ledger.StatusUncertain, time.Now().UTC()
		s.m.uncertain.WithLabelValues(UncertainNew).Inc()
		d.log.Warn("call outcome unknown: a job may exist; the request waits for evidence before it is sent again",
			"err", err, "attempt", attempt, "recheck_in", s.cfg.UncertainSettle)
		lctx, cancel := context.WithTimeout(ctx, defaultOpTimeout)
		_, lerr := s.ledger.PutRequestAt(lctx, intent, rev)
		cancel()
		if lerr != nil && !errors.Is(lerr, ledger.ErrChanged) {
			// Still "sending" in the ledger: the next delivery finds it
			// past the call bound and takes it as uncertain all the same.
			s.m.ledgerErrs.Inc()
		}
		s.nak(d, time.Until(s.settleAt(&intent)))

	default:
		// Certainly no job: 429, 408, or a connection that failed before
		// the request was sent.
		ra, _ := krea.RetryAfter(err)
		if apiErr != nil && apiErr.StatusCode == http.StatusTooManyRequests {
			release(outcomeThrottled, started, ra)
		} else {
			release(outcomeFailed, started, 0)
		}
		s.markRetrying(ctx, d, intent, rev, attempt)
		s.retry(ctx, d, attempt, err, ra)
	}
}

// mayHaveMadeJob reports whether a failed submission may have created a
// job: a 5xx (the server may have failed after creating it; Krea does not
// say), a 2xx without a usable body, a call that timed out or broke after
// the request was sent, our own stop cutting a call, or anything unknown.
// Certainly no job: 429 and 408 (refused before any work), account errors
// and refusals (handled before this is asked), and a connection that
// failed before the request was written.
func mayHaveMadeJob(err error) bool {
	var apiErr *krea.APIError
	if errors.As(err, &apiErr) {
		return apiErr.StatusCode >= 500
	}
	var nerr *krea.NetworkError
	if errors.As(err, &nerr) {
		return nerr.RequestSent || nerr.Timeout
	}
	return true
}

// markRetrying records that attempt made no job, counting it as attempts
// towards KREABUS_MAX_DELIVERIES; the request is free to be sent again.
func (s *Submitter) markRetrying(ctx context.Context, d *delivery, intent ledger.Record, rev uint64, attempts int) {
	intent.Status, intent.Attempt = ledger.StatusRetrying, attempts
	lctx, cancel := context.WithTimeout(ctx, defaultOpTimeout)
	defer cancel()
	if _, err := s.ledger.PutRequestAt(lctx, intent, rev); err != nil && !errors.Is(err, ledger.ErrChanged) {
		// Still "sending": the next delivery will wait out the call bound
		// and check the job listing before sending. Slower, never unsafe.
		s.m.ledgerErrs.Inc()
		d.log.Warn("could not record a failed attempt; the next delivery checks for a job first", "err", err)
	}
}

// markUncertain moves a request stuck in "sending" to "uncertain".
func (s *Submitter) markUncertain(ctx context.Context, d *delivery, rec *ledger.Record, rev uint64, why string) (uint64, error) {
	r := *rec
	r.Status = ledger.StatusUncertain
	lctx, cancel := context.WithTimeout(ctx, defaultOpTimeout)
	defer cancel()
	rev, err := s.ledger.PutRequestAt(lctx, r, rev)
	if err != nil {
		if !errors.Is(err, ledger.ErrChanged) {
			s.m.ledgerErrs.Inc()
		}
		return 0, err
	}
	s.m.uncertain.WithLabelValues(UncertainNew).Inc()
	d.log.Warn("call outcome unknown: a job may exist", "why", why, "attempt", r.Attempt, "intent_at", r.IntentAt)
	return rev, nil
}

// apiCode is the code label of kreabus_submitter_api_calls_total.
func apiCode(err error) string {
	if err == nil {
		return "2xx"
	}
	var apiErr *krea.APIError
	if errors.As(err, &apiErr) {
		return strconv.Itoa(apiErr.StatusCode)
	}
	var netErr *krea.NetworkError
	switch {
	case errors.As(err, &netErr) && netErr.Timeout:
		return "timeout"
	case errors.As(err, &netErr):
		return "network"
	case errors.Is(err, krea.ErrMalformedResponse):
		return "malformed"
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return "canceled"
	}
	return "error"
}

// trimKrea drops the "krea: " prefix of the client's errors.
func trimKrea(s string) string { return strings.TrimPrefix(s, "krea: ") }
