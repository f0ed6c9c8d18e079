package submitter

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/kreabus/kreabus/internal/ledger"
	"github.com/kreabus/kreabus/pkg/events"
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
