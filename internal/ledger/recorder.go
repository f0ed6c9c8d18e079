package ledger

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/kreabus/kreabus/internal/promreg"
	"github.com/kreabus/kreabus/internal/retry"
	"github.com/kreabus/kreabus/pkg/events"
)

// Recorder applies every job event on KREA_JOBS to the ledger through the
// durable consumer ConsumerName: a submitted event creates the job record
// (request ID, metadata, submission time), a terminal event settles it, any
// other status updates it. Each event is acknowledged after its KV write.
//
// Several Recorders (one per submitter replica) share the durable, so each
// event is applied by one of them; writes are revision-checked
// read-modify-write, idempotent, and never turn a terminal record back, so
// redeliveries and out-of-order events are harmless.
type Recorder struct {
	l      *Ledger
	events *prometheus.CounterVec
	synced atomic.Bool
	live   atomic.Bool
}

// Recorder outcomes, the values of kreabus_ledger_events_total{outcome}.
const (
	outcomeApplied   = "applied"
	outcomeUnchanged = "unchanged"
	outcomeIgnored   = "ignored"
	outcomeError     = "error"
)

// NewRecorder returns a Recorder for l. reg, when not nil, gets the
// kreabus_ledger_events_total{outcome} counter.
func NewRecorder(l *Ledger, reg prometheus.Registerer) (*Recorder, error) {
	cv := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "kreabus_ledger_events_total",
		Help: "Job events the ledger recorder handled, by outcome (applied, unchanged, ignored, error).",
	}, []string{"outcome"})
	cv, err := promreg.Register(reg, cv)
	if err != nil {
		return nil, err
	}
	for _, o := range []string{outcomeApplied, outcomeUnchanged, outcomeIgnored, outcomeError} {
		cv.WithLabelValues(o)
	}
	return &Recorder{l: l, events: cv}, nil
}

// Synced reports whether the durable consumer has been seen caught up with
// the stream at least once since Run started: only then does the ledger
// reflect every event already stored. The reconciler waits for it, so it
// does not poll jobs whose terminal events are merely not applied yet.
func (r *Recorder) Synced() bool { return r.synced.Load() }

// Run consumes until ctx ends, recreating the consumption when the
// consumer disappears or NATS fails. It returns nil when ctx ends, or an
// error when the consumer is missing and may not be created.
func (r *Recorder) Run(ctx context.Context) error {
	return retry.Forever(ctx, retry.Reconnect, func(ctx context.Context) error {
		cons, err := r.consumer(ctx)
		if err == nil {
			err = r.consume(ctx, cons)
		}
		r.live.Store(false)
		if errors.Is(err, jetstream.ErrConsumerNotFound) && !r.l.cfg.Create {
			return retry.Permanent(fmt.Errorf("ledger recorder: consumer %s on %s: %w", ConsumerName, events.StreamJobs, err))
		}
		return err
	}, func(err error, _ int, wait time.Duration) {
		r.l.log.Warn("ledger recorder restarting", "err", err, "in", wait)
	})
}

// ConsumerConfig is the Recorder's durable consumer configuration.
func (r *Recorder) ConsumerConfig() jetstream.ConsumerConfig {
	return jetstream.ConsumerConfig{
		Durable:       ConsumerName,
		Description:   "kreabus job ledger recorder",
		DeliverPolicy: jetstream.DeliverAllPolicy,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       r.l.cfg.AckWait,
		MaxDeliver:    -1,
		FilterSubject: events.JobsSubjects,
		MaxAckPending: 64 * r.l.cfg.Workers,
	}
}

func (r *Recorder) consumer(ctx context.Context) (jetstream.Consumer, error) {
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if !r.l.cfg.Create {
		return r.l.js.Consumer(cctx, events.StreamJobs, ConsumerName)
	}
	c, err := r.l.js.CreateConsumer(cctx, events.StreamJobs, r.ConsumerConfig())
	if errors.Is(err, jetstream.ErrConsumerExists) {
		// Present with another configuration (an operator's, or an older
		// release's): use it as it is.
		c, err = r.l.js.Consumer(cctx, events.StreamJobs, ConsumerName)
	}
	return c, err
}

// consume runs one consumption of cons until ctx ends or it fails: the
// events of one job are applied in order, by one of Workers handlers
// (events.Consume with WithOrderKey on the job ID).
func (r *Recorder) consume(ctx context.Context, cons jetstream.Consumer) error {
	failed := make(chan error, 1)
	cc, err := events.Consume(r.l.js.Conn(), cons, func(_ context.Context, m jetstream.Msg) { r.handle(ctx, m) },
		events.WithConcurrency(r.l.cfg.Workers),
		events.WithOrderKey(func(m jetstream.Msg) string { return m.Headers().Get(events.HeaderJobID) }),
		events.WithErrorHandler(func(err error) {
			if errors.Is(err, jetstream.ErrConsumerDeleted) || errors.Is(err, jetstream.ErrConsumerNotFound) {
				select {
				case failed <- err:
				default:
				}
				return
			}
			r.l.log.Debug("ledger recorder consume", "err", err)
		}))
	if err != nil {
		return err
	}
	r.live.Store(true)
	defer func() {
		cc.Drain() // the events in hand are applied (or, ctx ended, redelivered)
		<-cc.Closed()
	}()

	// Until synced, look often: the reconciler waits for it to start.
	tick := time.NewTicker(syncCheckInterval)
	defer tick.Stop()
	r.checkSynced(ctx, cons)
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-failed:
			return err
		case <-cc.Closed():
			select {
			case err := <-failed:
				return err
			default:
			}
			return errors.New("consumption closed")
		case <-tick.C:
			if !r.synced.Load() {
				r.checkSynced(ctx, cons)
			} else {
				tick.Stop()
			}
		}
	}
}

// syncCheckInterval is how often the Recorder asks whether it has caught
// up, until it has.
const syncCheckInterval = 100 * time.Millisecond

func (r *Recorder) checkSynced(ctx context.Context, cons jetstream.Consumer) {
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	info, err := cons.Info(cctx)
	if err == nil && info.NumPending == 0 && info.NumAckPending == 0 {
		r.synced.Store(true)
	}
}

// handle applies one event and acknowledges it, or asks for redelivery.
func (r *Recorder) handle(ctx context.Context, m jetstream.Msg) {
	ev, derr := events.DecodeEvent(m.Subject(), m.Headers(), m.Data())
	if ev.JobID == "" {
		ev.JobID = ev.Job.JobID
	}
	var ref *EventRef
	if md, err := m.Metadata(); err == nil {
		ref = &EventRef{Subject: m.Subject(), Seq: md.Sequence.Stream, Time: ev.Time, Source: ev.Source}
		if ref.Time.IsZero() {
			ref.Time = md.Timestamp.UTC()
		}
	}
	var noted error
	switch {
	case ev.Status == events.StatusRejected && ValidID(ev.RequestID):
		noted = r.noteRef(ctx, RequestKey(ev.RequestID), ref)
	case ev.Status == events.StatusMirrored && ValidID(ev.JobID):
		noted = r.noteRef(ctx, JobKey(ev.JobID), ref)
	}
	if noted != nil {
		// Acked, the reference would be lost for good: try again later.
		r.retry(ctx, m, ev, noted)
		return
	}
	if ev.Status == events.StatusRejected || ev.Status == events.StatusMirrored || !ev.Status.Valid() || !ValidID(ev.JobID) {
		// Not a job event the ledger can hold: a rejected request, the
		// mirror's note that a completed job's results are stored (no
		// change of the job's state), or a malformed event (which
		// producers validate against, so this is someone else's message
		// on our subjects).
		if ev.Status != events.StatusRejected && ev.Status != events.StatusMirrored {
			r.l.log.Warn("ledger recorder ignores a malformed job event", "subject", m.Subject(), "job_id", ev.JobID, "decode_err", derr)
		}
		_ = m.Ack()
		r.events.WithLabelValues(outcomeIgnored).Inc()
		return
	}
	changed, err := r.apply(ctx, ev, ref)
	if err != nil {
		r.retry(ctx, m, ev, err)
		return
	}
	if err := m.Ack(); err != nil {
		// Redelivered later and applied again: harmless.
		r.l.log.Debug("ledger recorder ack", "err", err)
	}
	if changed {
		r.events.WithLabelValues(outcomeApplied).Inc()
	} else {
		r.events.WithLabelValues(outcomeUnchanged).Inc()
	}
}

// retry hands an event back to the server after err, to come again after
// the redelivery delay of events.DefaultBackoff for its delivery count.
func (r *Recorder) retry(ctx context.Context, m jetstream.Msg, ev *events.Event, err error) {
	if ctx.Err() != nil {
		return // shutting down: the server redelivers after AckWait
	}
	n := uint64(1)
	if md, merr := m.Metadata(); merr == nil {
		n = md.NumDelivered
	}
	delay := events.DefaultBackoff.Delay(n)
	r.l.log.Warn("ledger recorder could not apply an event; will retry", "job_id", ev.JobID, "request_id", ev.RequestID,
		"status", ev.Status, "err", err, "retry_in", delay)
	_ = m.NakWithDelay(delay)
	r.events.WithLabelValues(outcomeError).Inc()
}

// Apply writes one job event into the ledger, as the Recorder does for
// every event it consumes, and reports whether the job record changed. It
// is idempotent. ev.JobID must be set.
//
// Beyond the job record it keeps the rest of the ledger true to the event:
//   - an event for a job the ledger lacks, carrying a request's token,
//     proves which job the request made: a request still without a job
//     (its call's answer was lost) becomes submitted with it, and a
//     request that has its outcome already makes this job extra;
//   - a submitted event for a job the ledger lacks (the submitter's write
//     failed, or a program calls Krea itself) records the submission;
//   - a terminal event takes the job off the open list.
func (r *Recorder) Apply(ctx context.Context, ev *events.Event) (bool, error) {
	return r.apply(ctx, ev, nil)
}

// noteRef adds where an event that changes no state is stored to the record
// it belongs to, when the ledger has that record: a rejected event to its
// (rejected) request, a mirrored event to its job. One write per such
// event; rejections are rare, mirrored events one per completed job.
func (r *Recorder) noteRef(ctx context.Context, key string, ref *EventRef) error {
	if ref == nil {
		return nil
	}
	_, err := r.l.update(ctx, key, func(cur *Record) (*Record, error) {
		if cur == nil || (strings.HasPrefix(key, RequestKeyPrefix) && cur.Status != events.StatusRejected) {
			return nil, nil
		}
		next := *cur
		if !next.addEventRef(ref) {
			return nil, nil
		}
		return &next, nil
	})
	return err
}

// apply is Apply noting where the event is stored (ref, when known).
func (r *Recorder) apply(ctx context.Context, ev *events.Event, ref *EventRef) (bool, error) {
	l := r.l
	if !ValidID(ev.JobID) {
		return false, fmt.Errorf("%w: job_id %q", ErrInvalidRecord, ev.JobID)
	}
	if ev.Status == events.StatusMirrored {
		return false, nil // says where a completed job's results are, not what the job is
	}
	extra := ev.ExtraJob
	changed, created := false, false
	stored, err := l.update(ctx, JobKey(ev.JobID), func(cur *Record) (*Record, error) {
		if cur == nil && ValidID(ev.RequestID) {
			// A job the ledger lacks: what the event proves about its
			// request comes first (one read of the job for both).
			x, err := r.evidence(ctx, ev)
			if err != nil {
				return nil, err
			}
			extra = extra || x
		}
		next, ch := applyEvent(cur, ev, time.Now())
		if extra && !next.Extra && next.RequestID == ev.RequestID {
			next.Extra, ch = true, true
		}
		if next.addEventRef(ref) {
			ch = true
		}
		changed, created = ch, cur == nil
		if !ch {
			return nil, nil
		}
		return &next, nil
	})
	if err != nil {
		return false, err
	}
	if created && stored != nil && !stored.Terminal {
		// A running job first heard of from its events (a webhook for a
		// call whose answer was lost): the reconciler must follow it too.
		if err := l.PutOpen(ctx, *stored); err != nil {
			return changed, err
		}
	}
	if ev.Status.IsTerminal() {
		if err := l.CloseOpen(ctx, ev.JobID); err != nil {
			return changed, err
		}
	}
	return changed, nil
}

// evidence records what an event for a job the ledger lacks proves: a
// submitted event records the submission (the submitter's own write failed,
// or a program calls Krea itself; the job record is then written too, and
// the caller's write of it finds it there and tries again); any other
// links a request still without a job to it. It reports whether the job is
// extra: its request has another outcome.
func (r *Recorder) evidence(ctx context.Context, ev *events.Event) (bool, error) {
	l := r.l
	if ev.Status != events.StatusSubmitted {
		return l.LinkEvidence(ctx, ev.RequestID, ev.JobID, eventSubmittedAt(ev, time.Now()), ev.Source)
	}
	err := l.RecordSubmission(ctx, Record{
		RequestID: ev.RequestID, JobID: ev.JobID, Metadata: ev.Metadata,
		SubmittedAt: eventSubmittedAt(ev, time.Now()), Source: ev.Source,
	})
	var xe *ConflictError
	if errors.As(err, &xe) {
		l.log.Warn("submitted event names a second job of its request",
			"request_id", ev.RequestID, "job_id", ev.JobID, "ledger_job_id", xe.Existing.JobID)
		return true, nil
	}
	return false, err
}
