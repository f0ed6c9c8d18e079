package events

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kreabus/kreabus/pkg/krea"
)

// Consumer defaults.
const (
	// DefaultBackoffMin is the redelivery delay after a handler's first
	// failure; it doubles with every delivery up to DefaultBackoffMax.
	DefaultBackoffMin = time.Second
	// DefaultBackoffMax caps the redelivery delay.
	DefaultBackoffMax = time.Minute
	// DefaultAckWait is the ack wait of JobsConsumerConfig, and JetStream's
	// own default: how long a handler has before JetStream redelivers its
	// message; the handler's context ends then.
	DefaultAckWait = 30 * time.Second
)

// ErrMalformedEvent is matched (errors.Is) by the error reported for a job
// event whose body cannot be decoded. Such a message is terminated: the
// handler never sees it and it is not redelivered.
var ErrMalformedEvent = errors.New("events: malformed job event")

// JobsConsumerOpt configures JobsConsumerConfig. An option given a value
// it cannot use makes JobsConsumerConfig fail with an error matching
// ErrInvalidOption.
type JobsConsumerOpt func(*jetstream.ConsumerConfig) error

// WithStatuses consumes only the events of these statuses (for example
// StatusCompleted, StatusFailed, StatusRejected), by filtering the
// consumer on their krea.jobs.<status> subjects. The default is every
// event.
func WithStatuses(statuses ...krea.Status) JobsConsumerOpt {
	return func(c *jetstream.ConsumerConfig) error {
		if len(statuses) == 0 {
			return invalidOption("WithStatuses needs at least one status")
		}
		var subjects []string
		for _, s := range statuses {
			if !s.Valid() {
				return invalidOption("status %q is not well formed", s)
			}
			if subj := JobSubject(s); !slices.Contains(subjects, subj) {
				subjects = append(subjects, subj)
			}
		}
		c.FilterSubject, c.FilterSubjects = "", nil
		if len(subjects) == 1 {
			c.FilterSubject = subjects[0]
		} else {
			c.FilterSubjects = subjects
		}
		return nil
	}
}

// WithDeliverPolicy sets where a new consumer starts:
// jetstream.DeliverAllPolicy (the default: every event the stream still
// holds), jetstream.DeliverNewPolicy (only events stored from now on) or
// jetstream.DeliverLastPerSubjectPolicy. JetStream cannot change the
// policy of an existing consumer: use a new durable name instead.
func WithDeliverPolicy(p jetstream.DeliverPolicy) JobsConsumerOpt {
	return func(c *jetstream.ConsumerConfig) error {
		switch p {
		case jetstream.DeliverAllPolicy, jetstream.DeliverNewPolicy, jetstream.DeliverLastPerSubjectPolicy:
			c.DeliverPolicy = p
			return nil
		}
		return invalidOption("deliver policy %v is not supported", p)
	}
}

// WithMaxDeliver bounds how often an event is delivered; ConsumeJobs
// terminates and reports an event whose last allowed delivery failed. The
// default, -1, retries forever (with backoff), so no event is dropped
// silently.
func WithMaxDeliver(n int) JobsConsumerOpt {
	return func(c *jetstream.ConsumerConfig) error {
		if n < 1 && n != -1 {
			return invalidOption("max deliver must be at least 1, or -1 for no limit; got %d", n)
		}
		c.MaxDeliver = n
		return nil
	}
}

// WithAckWait sets the consumer's ack wait: how long a handler may take
// before JetStream delivers its event again. The handler's context ends at
// that point, unless the handler calls InProgress, which starts the wait
// over. The default is DefaultAckWait.
func WithAckWait(d time.Duration) JobsConsumerOpt {
	return func(c *jetstream.ConsumerConfig) error {
		if d <= 0 {
			return invalidOption("ack wait must be positive, got %v", d)
		}
		c.AckWait = d
		return nil
	}
}

// JobsConsumerConfig returns the configuration of a pull consumer of job
// events on KREA_JOBS, named durable (empty: an ephemeral consumer, which
// the server removes once unused), for ConsumeJobs. Create it with
// js.CreateConsumer or js.CreateOrUpdateConsumer(ctx, StreamJobs, cfg), or
// leave that to an operator and bind to it with js.Consumer: ConsumeJobs
// takes any pull consumer with explicit acks.
//
// Two deployments sharing one durable name share one consumer and so one
// filter: give each set of statuses its own durable name.
func JobsConsumerConfig(durable string, opts ...JobsConsumerOpt) (jetstream.ConsumerConfig, error) {
	cfg := jetstream.ConsumerConfig{
		Durable:       durable,
		Description:   "kreabus job events",
		DeliverPolicy: jetstream.DeliverAllPolicy,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       DefaultAckWait,
		MaxDeliver:    -1,
	}
	for _, opt := range opts {
		if opt == nil {
			continue
		}
		if err := opt(&cfg); err != nil {
			return jetstream.ConsumerConfig{}, err
		}
	}
	return cfg, nil
}

// JobHandler handles one job event. Returning nil acknowledges the event;
// returning an error has it redelivered after a backoff, unless the error
// is wrapped with Terminate. ctx ends when the ack wait runs out or the
// consumption is stopped (Stop); MsgMetadata(ctx) tells the delivery count
// and stream sequence.
//
// The same event can be delivered more than once (after a crash, a
// timeout, or a lost ack): handlers should be idempotent, for example keyed
// on ev.JobID and ev.Status.
type JobHandler func(ctx context.Context, ev *Event) error

// Terminate wraps err so that a JobHandler returning it has its event
// terminated instead of redelivered: for events that can never succeed.
// errors.Is and errors.As see through it to err.
func Terminate(err error) error {
	if err == nil {
		return nil
	}
	return &terminateError{err}
}

type terminateError struct{ err error }

func (e *terminateError) Error() string { return e.err.Error() }
func (e *terminateError) Unwrap() error { return e.err }

// MessageError is reported to the error handler (see WithErrorHandler) for
// a job event that was not acknowledged: its body was malformed
// (Err matches ErrMalformedEvent), or the handler failed or panicked.
type MessageError struct {
	Subject      string
	Sequence     uint64 // stream sequence
	NumDelivered uint64 // 1 on the first delivery
	JobID        string
	RequestID    string
	// Terminated says the event will not be delivered again: it was
	// malformed, the handler returned a Terminate error, or this was the
	// last delivery the consumer's MaxDeliver allows.
	Terminated bool
	// Retry is the delay before the event is delivered again, when not
	// Terminated.
	Retry time.Duration
	// Err is what went wrong: the decoding error or the handler's error.
	Err error
}

func (e *MessageError) Error() string {
	what := fmt.Sprintf("redelivery in %v", e.Retry)
	if e.Terminated {
		what = "terminated"
	}
	return fmt.Sprintf("events: %s seq %d (job %q, delivery %d): %v; %s",
		e.Subject, e.Sequence, e.JobID, e.NumDelivered, e.Err, what)
}

// Unwrap returns Err.
func (e *MessageError) Unwrap() error { return e.Err }

// ConsumeJobs consumes job events through cons, a pull consumer on
// KREA_JOBS with explicit acks (see JobsConsumerConfig), over the
// connection nc (see Consume), and calls handler for each event, decoded
// with DecodeEvent:
//
//   - handler returns nil: the event is acknowledged;
//   - handler returns an error (or panics): the event is redelivered after
//     the backoff on its delivery count (WithBackoff), until the consumer's
//     MaxDeliver; an error wrapped with Terminate ends it at once;
//   - the body is malformed: handler is not called, the event is
//     terminated and reported (ErrMalformedEvent).
//
// A krea.jobs.rejected event's body is a Rejection rather than a job
// object (see Event.Rejection); a krea.jobs.mirrored event's a Mirrored.
//
// Every event not acknowledged is reported to the error handler
// (WithErrorHandler). Several processes may consume through the same
// durable: JetStream shares the events among them.
//
// While NATS is unreachable the consumption waits for the connection to
// come back (nats.go reconnects); it ends by itself when the connection is
// closed or the JetStream consumer is deleted (Closed tells when).
// Otherwise it runs until Drain or Stop.
func ConsumeJobs(nc *nats.Conn, cons jetstream.Consumer, handler JobHandler, opts ...ConsumeOpt) (*ConsumeContext, error) {
	if handler == nil {
		return nil, invalidOption("handler is nil")
	}
	c, err := newConsumeContext(nc, cons, opts)
	if err != nil {
		return nil, err
	}
	if c.o.gate != nil {
		// A malformed event is settled without reaching the JobHandler,
		// which a gate counting on its handlers would never hear of.
		return nil, invalidOption("WithPullGate is for Consume, not ConsumeJobs")
	}
	info := cons.CachedInfo()
	if info == nil || info.Config.AckPolicy != jetstream.AckExplicitPolicy {
		// Acks are how the handler's result settles an event.
		return nil, invalidOption("ConsumeJobs needs a consumer with explicit acks")
	}
	j := &jobsHandler{c: c, handler: handler, maxDeliver: info.Config.MaxDeliver}
	c.handler = j.handle
	go c.run()
	return c, nil
}

// jobsHandler is ConsumeJobs' MsgHandler.
type jobsHandler struct {
	c          *ConsumeContext
	handler    JobHandler
	maxDeliver int
}

func (j *jobsHandler) handle(ctx context.Context, msg jetstream.Msg) {
	md, _ := MsgMetadata(ctx)
	o := &j.c.o
	merr := &MessageError{
		Subject:      msg.Subject(),
		Sequence:     md.Sequence.Stream,
		NumDelivered: md.NumDelivered,
	}
	ev, err := DecodeEvent(msg.Subject(), msg.Headers(), msg.Data())
	if err != nil {
		merr.JobID = msg.Headers().Get(HeaderJobID)
		merr.RequestID = msg.Headers().Get(HeaderRequestID)
		merr.Terminated = true
		merr.Err = fmt.Errorf("%w: %w", ErrMalformedEvent, err)
		j.settle(msg.TermWithReason("malformed job event"), merr)
		return
	}
	merr.JobID, merr.RequestID = ev.JobID, ev.RequestID

	herr := j.call(ctx, ev)
	if herr == nil {
		if err := msg.Ack(); err != nil {
			o.onError(fmt.Errorf("events: ack %s seq %d: %w", msg.Subject(), md.Sequence.Stream, err))
		}
		return
	}
	merr.Err = herr
	var term *terminateError
	if errors.As(herr, &term) || (j.maxDeliver > 0 && md.NumDelivered >= uint64(j.maxDeliver)) {
		merr.Terminated = true
		j.settle(msg.TermWithReason("handler failed"), merr)
		return
	}
	merr.Retry = o.backoff.Delay(md.NumDelivered)
	j.settle(msg.NakWithDelay(merr.Retry), merr)
}

// settle reports merr, and the error of the term or nak that settled it.
func (j *jobsHandler) settle(ackErr error, merr *MessageError) {
	j.c.o.onError(merr)
	if ackErr != nil {
		j.c.o.onError(fmt.Errorf("events: settle %s seq %d: %w", merr.Subject, merr.Sequence, ackErr))
	}
}

// call runs the handler, turning a panic into an error.
func (j *jobsHandler) call(ctx context.Context, ev *Event) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("events: job handler panicked: %v", r)
		}
	}()
	return j.handler(ctx, ev)
}
