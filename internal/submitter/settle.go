package submitter

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kreabus/kreabus/internal/retry"
	"github.com/kreabus/kreabus/pkg/events"
)

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

// backoff is the delay before delivery n+1: the redelivery policy
// (events.Backoff) of KREABUS_RETRY_BACKOFF_MIN and KREABUS_RETRY_BACKOFF_MAX.
func (s *Submitter) backoff(n uint64) time.Duration {
	return events.Backoff{Min: s.cfg.RetryBackoffMin, Max: s.cfg.RetryBackoffMax}.Delay(n)
}

// publishRetry paces the retries of an event's publication and of the
// ledger write after a success (JetStream unavailable).
var publishRetry = events.Backoff{Min: publishRetryMin, Max: publishRetryMax}

// publish stores an event on KREA_JOBS and waits for the PubAck, retrying
// with backoff for patience (0: until ctx ends) and keeping the request's
// ack timer fresh meanwhile.
func (s *Submitter) publish(ctx context.Context, d *delivery, msg *nats.Msg, patience time.Duration) error {
	start := time.Now()
	return retry.Do(ctx, publishRetry, func(ctx context.Context) error {
		pctx, cancel := context.WithTimeout(ctx, defaultOpTimeout)
		_, err := s.js.PublishMsg(pctx, msg, jetstream.WithExpectStream(events.StreamJobs))
		cancel()
		if err != nil && patience > 0 && time.Since(start) > patience {
			return retry.Permanent(err)
		}
		return err
	}, func(err error, _ int, wait time.Duration) {
		d.log.Warn("publishing event failed; retrying", "subject", msg.Subject, "err", err, "retry_in", wait)
		s.heartbeat(d)
	})
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
