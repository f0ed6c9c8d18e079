package submitter

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kreabus/kreabus/internal/clip"
	"github.com/kreabus/kreabus/internal/ledger"
	"github.com/kreabus/kreabus/pkg/events"
	"github.com/kreabus/kreabus/pkg/krea"
)

// delivery is one request message being handled.
type delivery struct {
	msg         jetstream.Msg
	n           uint64 // deliveries so far, this one included
	id          string // the request ID used for events and the ledger
	path        string // the request's path as given (possibly invalid)
	req         *events.Request
	metadata    json.RawMessage // compact metadata, when usable
	traceParent string
	log         *slog.Logger
	lastBeat    time.Time // last ack or InProgress sent
}

// handle processes one request delivery and settles the message (ack or a
// delayed redelivery). The gate slot it holds bounds API calls: it is given
// back as soon as the API answered, before the ledger write, the event and
// the ack, so those do not eat into KREABUS_SUBMIT_CONCURRENCY.
func (s *Submitter) handle(ctx context.Context, msg jetstream.Msg, probe bool) {
	s.m.consumed.Inc()
	s.m.inFlight.Inc()
	defer s.m.inFlight.Dec()
	released := false
	release := func(o outcome, started time.Time, retryAfter time.Duration) {
		if released {
			return
		}
		released = true
		s.gate.done(probe, o, started, retryAfter)
		s.m.limit.Set(float64(s.gate.Limit()))
	}
	defer release(outcomeNoCall, time.Time{}, 0)
	s.process(ctx, msg, probe, release)
}

type releaseFunc func(o outcome, started time.Time, retryAfter time.Duration)

func (s *Submitter) process(ctx context.Context, msg jetstream.Msg, probe bool, release releaseFunc) {
	md, err := msg.Metadata()
	if err != nil {
		// Not a JetStream delivery: cannot happen with a pull consumer.
		s.log.Error("request message without JetStream metadata; terminating it", "err", err)
		_ = msg.Term()
		return
	}
	d, reason := s.decode(msg, md)
	if !s.claim(d.id) {
		// Another copy of this request is being handled here right now:
		// let it finish; this one will then find the ledger record.
		s.nak(d, s.cfg.RetryBackoffMin)
		return
	}
	defer s.unclaim(d.id)

	if s.Paused() && !probe && d.req != nil {
		s.pauseNak(d)
		return
	}

	lctx, cancel := context.WithTimeout(ctx, defaultOpTimeout)
	rec, rev, err := s.ledger.RequestAt(lctx, d.id)
	cancel()
	if d.req == nil && errors.Is(err, ledger.ErrNotFound) {
		release(outcomeNoCall, time.Time{}, 0)
		s.reject(ctx, d, RejectInvalid, reason, nil)
		return
	}
	if err != nil && !errors.Is(err, ledger.ErrNotFound) {
		// Without the ledger we cannot tell whether the API already has
		// this request: calling it could pay twice. Try again later.
		release(outcomeNoCall, time.Time{}, 0)
		s.m.ledgerErrs.Inc()
		s.retry(ctx, d, 0, fmt.Errorf("ledger unavailable: %w", err), 0)
		return
	}
	if rec != nil && !rec.Unresolved() {
		// One request ID, one outcome: whatever this copy says, the
		// request was submitted or rejected already.
		release(outcomeNoCall, time.Time{}, 0)
		if rec.Status == events.StatusRejected {
			s.republishRejection(ctx, d, rec)
		} else {
			s.republish(ctx, d, rec)
		}
		return
	}
	if d.req == nil {
		// An invalid copy of a request whose valid first copy is being
		// sent: the first decides the request's one outcome.
		release(outcomeNoCall, time.Time{}, 0)
		d.log.Warn("invalid copy of a request already in progress; dropped as a duplicate", "reason", reason)
		s.ack(ctx, d)
		return
	}
	if rec != nil {
		switch rec.Status {
		case ledger.StatusSending:
			if wait := s.cfg.APITimeout + s.callMargin() - time.Since(rec.IntentAt); wait > 0 {
				// Another delivery (here or on another replica) may be
				// calling right now: let it finish.
				release(outcomeNoCall, time.Time{}, 0)
				s.nak(d, wait)
				return
			}
			// The call's process died mid-call: its outcome is unknown.
			if rev, err = s.markUncertain(ctx, d, rec, rev, "the submitter handling it stopped during the call"); err != nil {
				release(outcomeNoCall, time.Time{}, 0)
				s.nak(d, s.cfg.RetryBackoffMin)
				return
			}
			rec.Status = ledger.StatusUncertain
			fallthrough
		case ledger.StatusUncertain:
			if !s.resolveUncertain(ctx, d, rec) {
				release(outcomeNoCall, time.Time{}, 0)
				return
			}
			// Proven: no job was made, or the wait is over and the
			// setting says send again. The record moves on from here.
			if rec.Attempt >= s.cfg.MaxDeliveries {
				release(outcomeNoCall, time.Time{}, 0)
				s.reject(ctx, d, RejectOutOfRetries, fmt.Sprintf("out of retries after %d attempts (the last one's outcome was unknown, and it made no job)", rec.Attempt), nil)
				return
			}
			s.m.retries.Inc()
		}
	}
	s.send(ctx, d, rec, rev, release)
}

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
	res, err := s.api.Submit(ctx, d.req.Path, d.req.Input, s.tok.URL(s.cfg.PublicURL, d.id))
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

// decode parses and validates the request. For an invalid request the
// returned delivery has no req, and reason says what is wrong.
func (s *Submitter) decode(msg jetstream.Msg, md *jetstream.MsgMetadata) (d *delivery, reason string) {
	d = &delivery{
		msg:         msg,
		n:           md.NumDelivered,
		traceParent: msg.Headers().Get(events.HeaderTraceParent),
		lastBeat:    time.Now(),
	}
	data := msg.Data()
	req, err := events.DecodeRequest(data)
	d.id = ledger.QueuedRequestID(data, md.Stream, md.Sequence.Stream, md.Timestamp)
	if req != nil && req.RequestID != d.id && events.ValidRequestID(req.RequestID) {
		// DecodeRequest's random ID for a request without one: the derived
		// one is the same on every redelivery.
		req.RequestID = d.id
	}
	var peek struct {
		RequestID json.RawMessage `json:"request_id"`
		Path      json.RawMessage `json:"path"`
		Metadata  json.RawMessage `json:"metadata"`
	}
	_ = json.Unmarshal(data, &peek)
	var given string
	givenOK := json.Unmarshal(peek.RequestID, &given) == nil
	var path string
	if json.Unmarshal(peek.Path, &path) == nil {
		d.path = clip.String(path, 256)
	}
	d.metadata = usableMetadata(peek.Metadata)
	d.log = s.log.With("request_id", d.id, "delivery", d.n, "stream_seq", md.Sequence.Stream)
	if err != nil {
		reason := err.Error()
		var re *events.RequestError
		if errors.As(err, &re) && re.Field == "request_id" && givenOK {
			reason = fmt.Sprintf("request_id %q: %s (rejected as %s)", clip.String(given, 80), re.Reason, d.id)
		}
		return d, "invalid request: " + reason
	}
	d.req = req
	d.path = req.Path
	d.metadata = req.Metadata
	return d, ""
}

// usableMetadata returns raw compacted when it is a JSON object within the
// size limit, else nil.
func usableMetadata(raw json.RawMessage) json.RawMessage {
	raw = bytes.TrimSpace(raw)
	if len(raw) < 2 || raw[0] != '{' {
		return nil
	}
	var buf bytes.Buffer
	if json.Compact(&buf, raw) != nil || buf.Len() > events.MaxMetadataSize {
		return nil
	}
	return buf.Bytes()
}

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
	}, res.Raw)
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
	var err error
	backoff := publishRetryMin
	for attempt := 1; ; attempt++ {
		lctx, cancel := context.WithTimeout(ctx, defaultOpTimeout)
		err = s.ledger.RecordSubmission(lctx, rec)
		cancel()
		if err == nil {
			return true, false
		}
		var xe *ledger.ConflictError
		if errors.As(err, &xe) {
			s.m.extraJobs.Inc()
			log.Error("Krea made a second job for this request (both are paid); its events are marked Kreabus-Extra-Job",
				"first_job_id", xe.Existing.JobID, "first_status", xe.Existing.Status)
			return true, true
		}
		if errors.Is(err, ledger.ErrInvalidRecord) || attempt >= ledgerAttempts || ctx.Err() != nil {
			break
		}
		if !sleep(ctx, backoff) {
			break
		}
		backoff = min(2*backoff, publishRetryMax)
		s.heartbeat(d)
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

// retry hands the request back for a delayed redelivery, or rejects it once
// attempts calls certainly failed (KREABUS_MAX_DELIVERIES).
func (s *Submitter) retry(ctx context.Context, d *delivery, attempts int, cause error, retryAfter time.Duration) {
	if attempts >= s.cfg.MaxDeliveries {
		s.reject(ctx, d, RejectOutOfRetries, fmt.Sprintf("out of retries after %d attempts: %s", attempts, trimKrea(cause.Error())), nil)
		return
	}
	delay := s.backoff(uint64(max(attempts, 1)))
	if retryAfter > delay {
		delay = min(retryAfter, maxRetryAfterHonoured)
	}
	s.m.retries.Inc()
	d.log.Warn("retryable failure; request handed back", "err", cause, "retry_in", delay.Round(time.Millisecond))
	s.nak(d, delay)
}

// backoff is the delay before delivery n+1: exponential from
// RetryBackoffMin, capped at RetryBackoffMax, with full jitter.
func (s *Submitter) backoff(n uint64) time.Duration {
	ceil := s.cfg.RetryBackoffMin
	for i := uint64(1); i < n && ceil < s.cfg.RetryBackoffMax; i++ {
		ceil *= 2
	}
	ceil = min(ceil, s.cfg.RetryBackoffMax)
	return time.Duration(rand.Int64N(int64(ceil) + 1))
}

// rejection is the body of a krea.jobs.rejected event.
type rejection struct {
	RequestID string `json:"request_id"`
	Path      string `json:"path,omitempty"`
	Reason    string `json:"reason"`
	// Kind is the reason's category (invalid_request, api_refused,
	// model_unavailable, out_of_retries, uncertain).
	Kind string `json:"kind"`
	// Status is the HTTP status of the API's refusal, when it refused.
	HTTPStatus int `json:"http_status,omitempty"`
	// Error is the API's error body, when it refused.
	Error json.RawMessage `json:"error,omitempty"`
	// Replacement is the model to use instead of a retired one (410).
	Replacement string `json:"replacement,omitempty"`
}

// reject publishes the request's krea.jobs.rejected event and acks it.
func (s *Submitter) reject(ctx context.Context, d *delivery, kind, reason string, apiErr *krea.APIError) {
	reason = clip.String(reason, maxReasonLen)
	body := rejection{RequestID: d.id, Path: d.path, Reason: reason, Kind: kind}
	if apiErr != nil {
		body.HTTPStatus = apiErr.StatusCode
		body.Error = errorBody(apiErr.Body)
		body.Replacement = apiErr.Replacement
	}
	data, err := json.Marshal(body)
	if err != nil { // cannot happen: Error is valid JSON
		data, _ = json.Marshal(rejection{RequestID: d.id, Reason: reason, Kind: kind})
	}
	{
		// Record the rejection first, so a redelivery after a lost ack,
		// or the same request ID published again, re-publishes it instead
		// of calling the API (and maybe paying): one request ID, one
		// outcome.
		lctx, cancel := context.WithTimeout(ctx, defaultOpTimeout)
		err := s.ledger.PutRejection(lctx, ledger.Record{RequestID: d.id, Path: d.path, Metadata: d.metadata, Reason: reason, Rejection: data})
		cancel()
		var conflict *ledger.ConflictError
		switch {
		case errors.As(err, &conflict):
			s.republish(ctx, d, &conflict.Existing) // submitted after all
			return
		case err != nil:
			s.m.ledgerErrs.Inc()
			d.log.Error("could not record the rejection; request handed back", "err", err, "reason", reason)
			s.nak(d, s.backoff(d.n))
			return
		}
	}
	s.publishRejection(ctx, d, kind, reason, data)
}

// republishRejection publishes again the rejection the ledger holds for a
// redelivered request, and acks it: the API is not called.
func (s *Submitter) republishRejection(ctx context.Context, d *delivery, rec *ledger.Record) {
	s.m.republished.Inc()
	d.log.Info("request already rejected (ledger); event published again, API not called")
	s.publishRejection(ctx, d, "", rec.Reason, rec.Rejection)
}

// publishRejection publishes a krea.jobs.rejected event and acks the
// request; kind, when not empty, counts it as a new rejection.
func (s *Submitter) publishRejection(ctx context.Context, d *delivery, kind, reason string, data []byte) {
	msg := events.NewJobMsg(events.EventHeaders{
		Status:      events.StatusRejected,
		RequestID:   d.id,
		Source:      events.SourceSubmitter,
		Metadata:    d.metadata,
		Reason:      reason,
		TraceParent: d.traceParent,
	}, data)
	if err := s.publish(ctx, d, msg, defaultPublishPatience); err != nil {
		d.log.Error("could not publish the rejected event; request handed back", "err", err, "reason", reason)
		s.nak(d, s.backoff(d.n))
		return
	}
	if kind != "" {
		s.m.rejections.WithLabelValues(kind).Inc()
		d.log.Warn("request rejected", "kind", kind, "reason", reason, "path", d.path)
	}
	s.ack(ctx, d)
}

// errorBody returns an API error body as JSON: itself when it is JSON, else
// as a string; nil when empty or too large.
func errorBody(b []byte) json.RawMessage {
	b = bytes.TrimSpace(b)
	if len(b) == 0 || len(b) > maxRejectionErrorBytes {
		return nil
	}
	if json.Valid(b) {
		var buf bytes.Buffer
		if json.Compact(&buf, b) == nil {
			return buf.Bytes()
		}
	}
	s, _ := json.Marshal(string(b))
	return s
}

func modelUnavailableReason(e *krea.APIError) string {
	var b strings.Builder
	b.WriteString("model unavailable (410)")
	msg := e.Message
	if msg == "" || msg == e.Code {
		msg = e.Reason
	}
	if msg != "" {
		b.WriteString(": ")
		b.WriteString(msg)
	}
	if e.Replacement != "" {
		b.WriteString("; replacement: ")
		b.WriteString(e.Replacement)
	}
	if e.SunsetDate != "" {
		b.WriteString("; sunset: ")
		b.WriteString(e.SunsetDate)
	}
	if e.MigrationURL != "" {
		b.WriteString("; migration: ")
		b.WriteString(e.MigrationURL)
	}
	return b.String()
}

// publish stores an event on KREA_JOBS and waits for the PubAck, retrying
// with backoff for patience (0: until ctx ends) and keeping the request's
// ack timer fresh meanwhile.
func (s *Submitter) publish(ctx context.Context, d *delivery, msg *nats.Msg, patience time.Duration) error {
	start := time.Now()
	backoff := publishRetryMin
	for {
		pctx, cancel := context.WithTimeout(ctx, defaultOpTimeout)
		_, err := s.js.PublishMsg(pctx, msg, jetstream.WithExpectStream(events.StreamJobs))
		cancel()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil || (patience > 0 && time.Since(start) > patience) {
			return err
		}
		d.log.Warn("publishing event failed; retrying", "subject", msg.Subject, "err", err, "retry_in", backoff)
		if !sleep(ctx, backoff) {
			return err
		}
		backoff = min(2*backoff, publishRetryMax)
		s.heartbeat(d)
	}
}

// beatDuring tells JetStream every third of the ack wait that the request
// is still being worked on, until the returned func is called: an API call
// may outlast a short KREABUS_ACK_WAIT.
func (s *Submitter) beatDuring(d *delivery) (stop func()) {
	every := s.cfg.ackWait() / 3
	if every >= s.cfg.APITimeout {
		return func() {} // the call ends (or times out) first
	}
	done := make(chan struct{})
	go func() {
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				_ = d.msg.InProgress()
			}
		}
	}()
	return func() { close(done) }
}

// heartbeat tells JetStream the request is still being worked on, when the
// last sign of life is a third of the ack wait old.
func (s *Submitter) heartbeat(d *delivery) {
	if time.Since(d.lastBeat) < s.cfg.ackWait()/3 {
		return
	}
	if err := d.msg.InProgress(); err == nil {
		d.lastBeat = time.Now()
	}
}

// pauseNak hands a request back because submission is paused.
func (s *Submitter) pauseNak(d *delivery) { s.nak(d, s.gate.pauseDelay()) }

// ack acknowledges the request and waits for JetStream to confirm it.
func (s *Submitter) ack(ctx context.Context, d *delivery) {
	actx, cancel := context.WithTimeout(ctx, defaultOpTimeout)
	defer cancel()
	if err := d.msg.DoubleAck(actx); err != nil {
		d.log.Warn("ack not confirmed; a redelivery will find the outcome in the ledger or be rejected again", "err", err)
	}
}

// nak hands the request back for redelivery after delay.
func (s *Submitter) nak(d *delivery, delay time.Duration) {
	var err error
	if delay > 0 {
		err = d.msg.NakWithDelay(delay)
	} else {
		err = d.msg.Nak()
	}
	if err != nil {
		d.log.Warn("nak failed; the request will be redelivered after the ack wait", "err", err)
	}
}

// claim marks a request ID as being handled in this process; false when it
// already is.
func (s *Submitter) claim(id string) bool {
	s.idsMu.Lock()
	defer s.idsMu.Unlock()
	if _, busy := s.ids[id]; busy {
		return false
	}
	s.ids[id] = struct{}{}
	return true
}

func (s *Submitter) unclaim(id string) {
	s.idsMu.Lock()
	delete(s.ids, id)
	s.idsMu.Unlock()
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

// sleep waits d or until ctx ends; false when ctx ended.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
