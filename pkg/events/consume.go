package events

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
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
	// DefaultAckWait is how long a handler has before JetStream redelivers
	// its message; the handler's context ends then.
	DefaultAckWait = 30 * time.Second
)

// ErrMalformedEvent is matched (errors.Is) by the error reported for a job
// event whose body cannot be decoded. Such a message is terminated: the
// handler never sees it and it is not redelivered.
var ErrMalformedEvent = errors.New("events: malformed job event")

// JobHandler handles one job event. Returning nil acknowledges the event;
// returning an error has it redelivered after a backoff, unless the error
// is wrapped with Terminate. ctx ends when the ack wait runs out or the
// consumer is shut down without waiting further; MsgMetadata(ctx) tells the
// delivery count and stream sequence.
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
	// last delivery WithMaxDeliver allows.
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

// ConsumeOpt configures ConsumeJobs. An option given a value it cannot use
// makes ConsumeJobs fail with an error matching ErrInvalidOption.
type ConsumeOpt func(*consumeOpts) error

type consumeOpts struct {
	statuses    []krea.Status
	deliver     jetstream.DeliverPolicy
	backoffMin  time.Duration
	backoffMax  time.Duration
	maxDeliver  int
	concurrency int
	ackWait     time.Duration
	onError     func(error)
}

// WithStatuses consumes only the events of these statuses (for example
// krea.StatusCompleted, krea.StatusFailed, StatusRejected), by filtering
// the consumer on their krea.jobs.<status> subjects. The default is every
// event.
func WithStatuses(statuses ...krea.Status) ConsumeOpt {
	return func(o *consumeOpts) error {
		if len(statuses) == 0 {
			return invalidOption("WithStatuses needs at least one status")
		}
		o.statuses = o.statuses[:0]
		for _, s := range statuses {
			if !s.Valid() {
				return invalidOption("status %q is not well formed", s)
			}
			if !slices.Contains(o.statuses, s) {
				o.statuses = append(o.statuses, s)
			}
		}
		return nil
	}
}

// WithDeliverPolicy sets where a newly created consumer starts:
// jetstream.DeliverAllPolicy (the default: every event the stream still
// holds), jetstream.DeliverNewPolicy (only events stored from now on) or
// jetstream.DeliverLastPerSubjectPolicy. JetStream cannot change the policy
// of an existing durable consumer: use a new durable name instead.
func WithDeliverPolicy(p jetstream.DeliverPolicy) ConsumeOpt {
	return func(o *consumeOpts) error {
		switch p {
		case jetstream.DeliverAllPolicy, jetstream.DeliverNewPolicy, jetstream.DeliverLastPerSubjectPolicy:
			o.deliver = p
			return nil
		}
		return invalidOption("deliver policy %v is not supported", p)
	}
}

// WithBackoff sets the redelivery delay after a handler error: min after
// the first delivery, doubling with each further delivery, at most max.
// The default is DefaultBackoffMin to DefaultBackoffMax.
func WithBackoff(min, max time.Duration) ConsumeOpt {
	return func(o *consumeOpts) error {
		if min <= 0 || max < min {
			return invalidOption("backoff needs 0 < min <= max, got %v, %v", min, max)
		}
		o.backoffMin, o.backoffMax = min, max
		return nil
	}
}

// WithMaxDeliver bounds how often an event is delivered; after the last
// failed delivery it is terminated and reported. The default, -1, retries
// forever (with backoff), so no event is dropped silently.
func WithMaxDeliver(n int) ConsumeOpt {
	return func(o *consumeOpts) error {
		if n < 1 && n != -1 {
			return invalidOption("max deliver must be at least 1, or -1 for no limit; got %d", n)
		}
		o.maxDeliver = n
		return nil
	}
}

// WithConcurrency sets how many handlers may run at once. The default, 1,
// handles events one after the other in the order they are delivered
// (a redelivered event comes back after its backoff, behind later ones).
func WithConcurrency(n int) ConsumeOpt {
	return func(o *consumeOpts) error {
		if n < 1 {
			return invalidOption("concurrency must be at least 1, got %d", n)
		}
		o.concurrency = n
		return nil
	}
}

// WithAckWait sets the consumer's ack wait: how long a handler may take
// before JetStream delivers its event again. The handler's context ends at
// that point, unless the handler calls InProgress, which starts the wait
// over. The default is DefaultAckWait.
func WithAckWait(d time.Duration) ConsumeOpt {
	return func(o *consumeOpts) error {
		if d <= 0 {
			return invalidOption("ack wait must be positive, got %v", d)
		}
		o.ackWait = d
		return nil
	}
}

// WithErrorHandler receives what goes wrong while consuming: a
// *MessageError for every event not acknowledged (malformed, handler
// failure), failed acknowledgements, and the JetStream client's consume
// errors (missed heartbeats, connection closed). It may be called from
// several goroutines at once. The default logs with slog.Default at level
// Warn; nil discards.
func WithErrorHandler(f func(error)) ConsumeOpt {
	return func(o *consumeOpts) error {
		if f == nil {
			f = func(error) {}
		}
		o.onError = f
		return nil
	}
}

func defaultErrorHandler(err error) {
	slog.Default().Warn("kreabus job events consumer", "error", err)
}

// JobConsumer consumes job events; see ConsumeJobs.
type JobConsumer struct {
	cons    jetstream.Consumer
	nc      *nats.Conn
	handler JobHandler
	o       consumeOpts

	baseCtx    context.Context
	cancelBase context.CancelFunc

	// fetchCtx ends every pull: on Stop, and when the connection closes.
	fetchCtx    context.Context
	cancelFetch context.CancelFunc
	// pullMu guards cancelPull, which ends the current pull alone, so that
	// after a reconnect the (possibly restarted) server is asked at once
	// instead of when the lost pull's heartbeats are found missing.
	pullMu     sync.Mutex
	cancelPull context.CancelFunc

	reconnected chan struct{} // signalled by watch on every reconnect

	slots    chan struct{} // one per handler that may run
	wg       sync.WaitGroup
	stopping atomic.Bool
	stopCh   chan struct{}
	stopOnce sync.Once
	done     chan struct{}
}

// ConsumeJobs consumes job events from KREA_JOBS through the durable
// consumer named durable, created or updated to match the options, and
// calls handler for each event, decoded with DecodeEvent:
//
//   - handler returns nil: the event is acknowledged;
//   - handler returns an error (or panics): the event is redelivered after
//     an exponential backoff on its delivery count (WithBackoff), until
//     WithMaxDeliver deliveries; an error wrapped with Terminate ends it at
//     once;
//   - the body is malformed: handler is not called, the event is
//     terminated and reported (ErrMalformedEvent).
//
// A krea.jobs.rejected event's body is the submitter's rejection rather
// than a job object; it reaches the handler whenever it is JSON, in ev.Raw,
// with ev.Job left empty when it does not decode as a job.
//
// Every event not acknowledged is reported to the error handler
// (WithErrorHandler). Several processes may consume through the same
// durable: JetStream shares the events among them. An empty durable creates
// an ephemeral consumer that the server removes once unused.
//
// While NATS is unreachable the consumer waits for the connection to come
// back (nats.go reconnects); it stops by itself when the connection is
// closed or the
// JetStream consumer is deleted (Closed tells when; the last error
// reported then matches jetstream.ErrConsumerDeleted).
//
// ctx bounds the creation of the consumer; handlers get a context carrying
// its values but not its cancellation. Stop the consumer with Stop or
// Shutdown.
func ConsumeJobs(ctx context.Context, js jetstream.JetStream, durable string, handler JobHandler, opts ...ConsumeOpt) (*JobConsumer, error) {
	if handler == nil {
		return nil, invalidOption("handler is nil")
	}
	o := consumeOpts{
		deliver:     jetstream.DeliverAllPolicy,
		backoffMin:  DefaultBackoffMin,
		backoffMax:  DefaultBackoffMax,
		maxDeliver:  -1,
		concurrency: 1,
		ackWait:     DefaultAckWait,
		onError:     defaultErrorHandler,
	}
	for _, opt := range opts {
		if opt == nil {
			continue
		}
		if err := opt(&o); err != nil {
			return nil, err
		}
	}

	cfg := jetstream.ConsumerConfig{
		Durable:       durable,
		Description:   "kreabus job events",
		DeliverPolicy: o.deliver,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       o.ackWait,
		MaxDeliver:    o.maxDeliver,
	}
	switch len(o.statuses) {
	case 0:
	case 1:
		cfg.FilterSubject = JobSubject(o.statuses[0])
	default:
		for _, s := range o.statuses {
			cfg.FilterSubjects = append(cfg.FilterSubjects, JobSubject(s))
		}
	}
	cons, err := js.CreateOrUpdateConsumer(ctx, StreamJobs, cfg)
	if err != nil {
		return nil, fmt.Errorf("events: consumer %q on %s: %w", durable, StreamJobs, err)
	}

	c := &JobConsumer{
		cons:    cons,
		nc:      js.Conn(),
		handler: handler,
		o:       o,
		slots:   make(chan struct{}, o.concurrency),

		reconnected: make(chan struct{}, 1),
		stopCh:      make(chan struct{}),
		done:        make(chan struct{}),
	}
	c.baseCtx, c.cancelBase = context.WithCancel(context.WithoutCancel(ctx))
	c.fetchCtx, c.cancelFetch = context.WithCancel(context.Background())
	go c.run()
	return c, nil
}

// Consumer returns the underlying JetStream consumer, for its Info.
func (c *JobConsumer) Consumer() jetstream.Consumer { return c.cons }

// Stop stops fetching events, hands the ones already fetched but not
// started back to JetStream for redelivery, and waits for the handlers in
// flight to return (each at most its ack wait). An event the server sends
// in the instant Stop ends the pending pull comes back only after its ack
// wait. Stop is safe to call more than once and from several goroutines,
// but not from a handler, which it would wait for.
func (c *JobConsumer) Stop() { _ = c.Shutdown(context.Background()) }

// Shutdown is Stop with a bound: when ctx ends before the handlers in
// flight have returned, their contexts are cancelled and Shutdown returns
// ctx.Err() without waiting further (their events are redelivered unless
// they still return nil).
func (c *JobConsumer) Shutdown(ctx context.Context) error {
	c.stop()
	select {
	case <-c.done:
		return nil
	case <-ctx.Done():
		c.cancelBase()
		return ctx.Err()
	}
}

// stop ends fetching; the handlers in flight go on.
func (c *JobConsumer) stop() {
	c.stopOnce.Do(func() {
		c.stopping.Store(true)
		close(c.stopCh)
		c.cancelFetch()
	})
}

// Closed returns a channel closed once the consumer has stopped, through
// Stop, Shutdown, the connection closing or the consumer being deleted,
// and no handler runs any more.
func (c *JobConsumer) Closed() <-chan struct{} { return c.done }

// Pull timing. A pull waits at the server up to fetchWait and is then
// sent again, which bounds the wait after a pull was lost (a consumer
// leader change) without heartbeats: nats.go keeps a fetch's heartbeat
// timer, and so the fetch, alive for two heartbeats after it ended, which
// adds up at thousands of events a second. A pull lost with its server is
// replaced at once on reconnect (watch).
const (
	fetchWait          = 5 * time.Second
	fetchErrorPauseMin = 100 * time.Millisecond
	fetchErrorPauseMax = 5 * time.Second
)

// run pulls events one Fetch at a time, for as many events as there are
// free handler slots, so no event waits in a client buffer while its ack
// wait runs. It does not use jetstream's Consume: in nats.go v1.55 Consume
// skips its next pull when a message is handled before the goroutine that
// sent the previous pull has marked it sent, and then stalls until its
// heartbeat check fires, up to 30 s later (seen under CI load with one
// event in flight).
func (c *JobConsumer) run() {
	defer func() {
		c.stop()    // when it ended by itself
		c.wg.Wait() // handlers still running when concurrency > 1
		c.cancelBase()
		close(c.done)
	}()
	status := c.nc.StatusChanged(nats.CONNECTED, nats.CLOSED)
	defer c.nc.RemoveStatusListener(status)
	go c.watch(status)
	if c.nc.IsClosed() {
		c.stop()
	}

	pause := fetchErrorPauseMin
	for {
		select {
		case <-c.stopCh: // before a free slot, which may be ready too
			return
		default:
		}
		if !c.nc.IsConnected() {
			// A pull sent now would wait in the reconnect buffer and reach
			// the server after its inbox is gone: wait for the connection.
			select {
			case <-c.reconnected:
			case <-c.stopCh:
				return
			}
			continue
		}
		select {
		case c.slots <- struct{}{}:
		case <-c.stopCh:
			return
		}
		n := 1 + takeSlots(c.slots, c.o.concurrency-1)
		start := time.Now()
		got, err := c.fetch(n)
		releaseSlots(c.slots, n-got)
		switch {
		case err == nil && got == 0 && time.Since(start) < fetchWait/2:
			// Answered empty long before its expiry (the server ended the
			// pull): do not ask again at once.
			select {
			case <-c.stopCh:
				return
			case <-time.After(pause):
			}
			pause = min(2*pause, fetchErrorPauseMax)
			continue
		case err == nil:
			pause = fetchErrorPauseMin
			continue
		case c.stopping.Load():
			return
		case errors.Is(err, context.Canceled), // the connection came back
			errors.Is(err, context.DeadlineExceeded): // the server's expiry answer was lost
			continue
		}
		c.o.onError(fmt.Errorf("events: fetch from %s: %w", StreamJobs, err))
		if errors.Is(err, jetstream.ErrConsumerDeleted) || errors.Is(err, nats.ErrConnectionClosed) || c.gone(err) {
			return
		}
		select {
		case <-c.stopCh:
			return
		case <-time.After(pause):
		}
		pause = min(2*pause, fetchErrorPauseMax)
	}
}

// gone reports, and reports to the error handler, that the JetStream
// consumer no longer exists: a pull to a deleted consumer is not answered
// (its heartbeats stop) or finds no responders.
func (c *JobConsumer) gone(err error) bool {
	if !c.nc.IsConnected() || !(errors.Is(err, jetstream.ErrNoHeartbeat) ||
		errors.Is(err, nats.ErrNoResponders) || errors.Is(err, jetstream.ErrConsumerNotFound)) {
		return false
	}
	ctx, cancel := context.WithTimeout(c.fetchCtx, 5*time.Second)
	defer cancel()
	if _, err := c.cons.Info(ctx); !errors.Is(err, jetstream.ErrConsumerNotFound) {
		return false
	}
	c.o.onError(fmt.Errorf("events: consumer %q on %s: %w", c.cons.CachedInfo().Name, StreamJobs, jetstream.ErrConsumerDeleted))
	return true
}

// fetch pulls up to n events and handles each as it arrives, inline when
// concurrency is 1, else in a goroutine holding one slot until its handler
// returns. It returns how many arrived.
func (c *JobConsumer) fetch(n int) (int, error) {
	// The deadline sets the pull's expiry (FetchContext takes it from
	// there; it cannot be combined with FetchMaxWait).
	ctx, cancel := context.WithTimeout(c.fetchCtx, fetchWait)
	defer cancel()
	c.pullMu.Lock()
	c.cancelPull = cancel
	c.pullMu.Unlock()

	batch, err := c.cons.Fetch(n, jetstream.FetchContext(ctx))
	if err != nil {
		return 0, err
	}
	got := 0
	for msg := range batch.Messages() {
		got++
		if c.stopping.Load() {
			_ = msg.Nak() // fetched, not started: let another consumer have it now
			<-c.slots
			continue
		}
		c.wg.Add(1)
		if c.o.concurrency == 1 {
			c.handle(msg)
			<-c.slots
			c.wg.Done()
			continue
		}
		go func() {
			defer func() {
				<-c.slots
				c.wg.Done()
			}()
			c.handle(msg)
		}()
	}
	return got, batch.Error()
}

// watch ends the current pull when the connection is re-established, and
// all pulling when it is closed for good.
func (c *JobConsumer) watch(status <-chan nats.Status) {
	for {
		select {
		case s, ok := <-status:
			if !ok {
				return
			}
			if s == nats.CLOSED {
				c.o.onError(fmt.Errorf("events: consume %s: %w", StreamJobs, nats.ErrConnectionClosed))
				c.stop()
				return
			}
			c.pullMu.Lock()
			if c.cancelPull != nil {
				c.cancelPull()
			}
			c.pullMu.Unlock()
			select {
			case c.reconnected <- struct{}{}:
			default:
			}
		case <-c.stopCh:
			return
		}
	}
}

// takeSlots takes up to n free slots without waiting and returns how many
// it took.
func takeSlots(slots chan struct{}, n int) int {
	for i := range n {
		select {
		case slots <- struct{}{}:
		default:
			return i
		}
	}
	return n
}

// releaseSlots frees n slots.
func releaseSlots(slots chan struct{}, n int) {
	for range n {
		<-slots
	}
}

type msgMetadataKey struct{}

// MsgMetadata returns the JetStream metadata of the event a JobHandler is
// handling (delivery count, stream sequence, timestamp), from the handler's
// context.
func MsgMetadata(ctx context.Context) (*jetstream.MsgMetadata, bool) {
	md, ok := ctx.Value(msgMetadataKey{}).(*jetstream.MsgMetadata)
	return md, ok && md != nil
}

func (c *JobConsumer) handle(msg jetstream.Msg) {
	md, err := msg.Metadata()
	if err != nil { // not a JetStream message: cannot ack it either
		c.o.onError(fmt.Errorf("events: message on %s without JetStream metadata: %w", msg.Subject(), err))
		return
	}
	merr := &MessageError{
		Subject:      msg.Subject(),
		Sequence:     md.Sequence.Stream,
		NumDelivered: md.NumDelivered,
	}
	// DecodeEvent fails a rejected event only when its body is not JSON:
	// the submitter's rejection is not decoded as a job object.
	ev, err := DecodeEvent(msg.Subject(), msg.Headers(), msg.Data())
	if err != nil {
		merr.JobID = msg.Headers().Get(HeaderJobID)
		merr.RequestID = msg.Headers().Get(HeaderRequestID)
		merr.Terminated = true
		merr.Err = fmt.Errorf("%w: %w", ErrMalformedEvent, err)
		c.settle(msg.TermWithReason("malformed job event"), merr)
		return
	}
	merr.JobID, merr.RequestID = ev.JobID, ev.RequestID

	ctx, cancel := newLease(context.WithValue(c.baseCtx, msgMetadataKey{}, md), msg, c.o.ackWait)
	herr := c.call(ctx, ev)
	cancel()
	if herr == nil {
		if err := msg.Ack(); err != nil {
			c.o.onError(fmt.Errorf("events: ack %s seq %d: %w", msg.Subject(), md.Sequence.Stream, err))
		}
		return
	}
	merr.Err = herr
	var term *terminateError
	if errors.As(herr, &term) || (c.o.maxDeliver > 0 && md.NumDelivered >= uint64(c.o.maxDeliver)) {
		merr.Terminated = true
		c.settle(msg.TermWithReason("handler failed"), merr)
		return
	}
	merr.Retry = backoff(c.o.backoffMin, c.o.backoffMax, md.NumDelivered)
	c.settle(msg.NakWithDelay(merr.Retry), merr)
}

// settle reports merr, and the error of the term or nak that settled it.
func (c *JobConsumer) settle(ackErr error, merr *MessageError) {
	c.o.onError(merr)
	if ackErr != nil {
		c.o.onError(fmt.Errorf("events: settle %s seq %d: %w", merr.Subject, merr.Sequence, ackErr))
	}
}

// call runs the handler, turning a panic into an error.
func (c *JobConsumer) call(ctx context.Context, ev *Event) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("events: job handler panicked: %v", r)
		}
	}()
	return c.handler(ctx, ev)
}

// backoff is the redelivery delay after delivery n (1-based) failed: min,
// doubled for every further delivery, at most max.
func backoff(min, max time.Duration, n uint64) time.Duration {
	d := min
	for i := uint64(1); i < n; i++ {
		if d >= max/2 {
			return max
		}
		d *= 2
	}
	return d
}
