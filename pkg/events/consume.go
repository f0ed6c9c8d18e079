package events

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// MsgHandler handles one message of Consume and settles it itself (Ack,
// Nak, NakWithDelay, Term, or nothing to have it redelivered after the ack
// wait), in the handler or later. ctx ends one ack wait after the message
// was delivered (InProgress starts the wait over) and when the consumption
// is stopped (Stop); MsgMetadata(ctx) tells its delivery count and stream
// sequence.
type MsgHandler func(ctx context.Context, msg jetstream.Msg)

// ConsumeOpt configures Consume and ConsumeJobs. An option given a value
// it cannot use makes them fail with an error matching ErrInvalidOption.
type ConsumeOpt func(*consumeOpts) error

type consumeOpts struct {
	backoff     Backoff
	concurrency int
	orderKey    func(jetstream.Msg) string
	gate        PullGate
	onError     func(error)
}

// WithBackoff sets the redelivery delay after a JobHandler's error:
// b.Delay(n) after delivery n failed. The default is DefaultBackoff.
// Consume leaves the redelivery of a message to its MsgHandler.
func WithBackoff(b Backoff) ConsumeOpt {
	return func(o *consumeOpts) error {
		if err := b.Validate(); err != nil {
			return invalidOption("%v", err)
		}
		o.backoff = b
		return nil
	}
}

// WithConcurrency sets how many handlers may run at once; the consumer
// pulls no more messages than it has handlers free for, so no message
// waits in a client buffer while its ack wait runs. The default, 1,
// handles messages one after the other in the order they are delivered
// (a redelivered one comes back after its backoff, behind later ones).
func WithConcurrency(n int) ConsumeOpt {
	return func(o *consumeOpts) error {
		if n < 1 {
			return invalidOption("concurrency must be at least 1, got %d", n)
		}
		o.concurrency = n
		return nil
	}
}

// WithOrderKey keeps the messages of one key in order under
// WithConcurrency: messages with the same key(msg) are handled one after
// the other, in the order they were delivered, by one of the concurrency
// handlers (chosen by a hash of the key). ConsumeJobs' handlers, keyed on
// the Krea-Job-Id header, see the events of one job in order, say. The
// default hands each message to whichever handler is free.
func WithOrderKey(key func(msg jetstream.Msg) string) ConsumeOpt {
	return func(o *consumeOpts) error {
		if key == nil {
			return invalidOption("order key is nil")
		}
		o.orderKey = key
		return nil
	}
}

// WithErrorHandler receives what goes wrong while consuming: for
// ConsumeJobs a *MessageError for every event not acknowledged (malformed,
// handler failure) and failed acknowledgements; for both, failed pulls
// (the last error reported when the consumer is deleted matches
// jetstream.ErrConsumerDeleted; when the connection closes,
// nats.ErrConnectionClosed). It may be called from several goroutines at
// once. The default logs with slog.Default at level Warn; nil discards.
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
	slog.Default().Warn("kreabus consumer", "error", err)
}

// ConsumeContext is a running consumption (Consume, ConsumeJobs). Like
// jetstream.ConsumeContext, which it implements, it ends with Stop or
// Drain, or by itself when the connection closes or the JetStream consumer
// is deleted; Closed tells when.
type ConsumeContext struct {
	cons    jetstream.Consumer
	nc      *nats.Conn
	handler MsgHandler
	o       consumeOpts
	ackWait time.Duration

	// baseCtx is the parent of every handler's context; Stop ends it.
	baseCtx    context.Context
	cancelBase context.CancelFunc

	// stopCtx ends on Stop or Drain: a PullGate's wait, a consumer
	// look-up. It does not end the pull in progress: nats.go drops the
	// messages a cancelled pull had already received, which JetStream then
	// redelivers only after their ack wait. The pull runs out instead (at
	// most fetchWait) and what it brings goes back at once (handleInSlot).
	stopCtx    context.Context
	cancelStop context.CancelFunc
	// fetchCtx ends every pull when the connection closes for good.
	fetchCtx    context.Context
	cancelFetch context.CancelFunc
	// pullMu guards cancelPull, which ends the current pull alone, so that
	// after a reconnect the (possibly restarted) server is asked at once
	// instead of when the lost pull's expiry comes.
	pullMu     sync.Mutex
	cancelPull context.CancelFunc
	pullGen    uint64 // the connection's reconnect count when it was sent

	reconnected chan struct{} // signalled by watch on every reconnect

	slots    chan struct{} // one per handler that may run
	shards   []chan pulled // WithOrderKey: one queue per handler
	wg       sync.WaitGroup
	stopping atomic.Bool
	stopCh   chan struct{}
	stopOnce sync.Once
	done     chan struct{}
}

// Consume pulls messages from cons and calls handler for each: the one
// pull loop of kreabus, which ConsumeJobs and kreabus's own consumers use.
// It pulls one batch at a time for as many messages as there are free
// handlers (WithConcurrency), so no message waits in a client buffer while
// its ack wait runs.
//
// nc is the connection cons works over (js.Conn()): Consume watches it to
// send no pull while it is disconnected (such a pull would reach the
// server after its inbox is gone), to pull again at once after a
// reconnect, and to stop when it closes. cons is a pull consumer (an
// ordered consumer too); its ack wait bounds each handler's context.
//
// Consume does not use jetstream's Consume: in nats.go v1.55 that skips
// its next pull when a message is handled before the goroutine that sent
// the previous pull has marked it sent, and then stalls until its
// heartbeat check fires, up to 30 s later (seen under CI load with one
// message in flight).
func Consume(nc *nats.Conn, cons jetstream.Consumer, handler MsgHandler, opts ...ConsumeOpt) (*ConsumeContext, error) {
	if handler == nil {
		return nil, invalidOption("handler is nil")
	}
	c, err := newConsumeContext(nc, cons, opts)
	if err != nil {
		return nil, err
	}
	c.handler = handler
	go c.run()
	return c, nil
}

// newConsumeContext checks the options and the consumer; run starts it.
func newConsumeContext(nc *nats.Conn, cons jetstream.Consumer, opts []ConsumeOpt) (*ConsumeContext, error) {
	if nc == nil || cons == nil {
		return nil, invalidOption("connection or consumer is nil")
	}
	o := consumeOpts{
		backoff:     DefaultBackoff,
		concurrency: 1,
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
	ackWait := DefaultAckWait // the server's default
	if info := cons.CachedInfo(); info != nil && info.Config.AckWait > 0 {
		ackWait = info.Config.AckWait
	}
	c := &ConsumeContext{
		cons:    cons,
		nc:      nc,
		o:       o,
		ackWait: ackWait,
		slots:   make(chan struct{}, o.concurrency),

		reconnected: make(chan struct{}, 1),
		stopCh:      make(chan struct{}),
		done:        make(chan struct{}),
	}
	c.baseCtx, c.cancelBase = context.WithCancel(context.Background())
	c.stopCtx, c.cancelStop = context.WithCancel(context.Background())
	c.fetchCtx, c.cancelFetch = context.WithCancel(context.Background())
	return c, nil
}

// Consumer returns the JetStream consumer, for its Info.
func (c *ConsumeContext) Consumer() jetstream.Consumer { return c.cons }

// Drain stops pulling and lets the handlers in flight finish (each within
// its ack wait); messages pulled but not started yet, and those the pull
// in progress still brings (it runs out within a second), go back to
// JetStream at once. Closed is closed once the last handler has returned. Drain does
// not wait; it is safe to call more than once, and from a handler.
func (c *ConsumeContext) Drain() { c.stop() }

// Stop is Drain that also ends the contexts of the handlers in flight, so
// they return early; a message whose handler did not settle it is
// delivered again after its ack wait (ConsumeJobs: a handler that returns
// an error has its event redelivered after its backoff). Stop does not
// wait; Closed tells when the last handler has returned.
func (c *ConsumeContext) Stop() {
	c.stop()
	c.cancelBase()
}

// stop ends pulling; the handlers in flight go on.
func (c *ConsumeContext) stop() {
	c.stopOnce.Do(func() {
		c.stopping.Store(true)
		close(c.stopCh)
		c.cancelStop()
	})
}

// Closed returns a channel closed once the consumption has ended, through
// Stop, Drain, the connection closing or the consumer being deleted, and
// no handler runs any more.
func (c *ConsumeContext) Closed() <-chan struct{} { return c.done }

var _ jetstream.ConsumeContext = (*ConsumeContext)(nil)

// Pull timing. A pull waits at the server up to fetchWait and is then
// sent again, which bounds the wait after a pull was lost (a consumer
// leader change) without heartbeats: nats.go keeps a fetch's heartbeat
// timer, and so the fetch, alive for two heartbeats after it ended, which
// adds up at thousands of messages a second. A pull lost with its server
// is replaced at once on reconnect (watch).
//
// It is short because a stop waits for the pull in progress to run out
// (see stopCtx); an idle consumer asks once a second.
const fetchWait = time.Second

// fetchErrorBackoff paces the pulls after one failed, or was ended empty
// by the server long before its expiry.
var fetchErrorBackoff = Backoff{Min: 100 * time.Millisecond, Max: 5 * time.Second}

// run pulls one Fetch at a time, for as many messages as there are free
// handler slots.
func (c *ConsumeContext) run() {
	defer func() { // last: after the workers and the watcher have ended
		c.wg.Wait() // handlers still running when concurrency > 1
		c.cancelBase()
		close(c.done)
	}()
	if c.o.orderKey != nil && c.o.concurrency > 1 {
		var workers sync.WaitGroup
		c.shards = make([]chan pulled, c.o.concurrency)
		for i := range c.shards {
			// Never full: no more messages are in hand than slots.
			q := make(chan pulled, c.o.concurrency)
			c.shards[i] = q
			workers.Go(func() {
				for msg := range q {
					c.handleInSlot(msg)
				}
			})
		}
		defer func() {
			for _, q := range c.shards {
				close(q)
			}
			workers.Wait()
		}()
	}
	var watching sync.WaitGroup
	// Runs first of the deferred calls, before the workers are stopped:
	// Closed is closed last of all, below.
	defer func() {
		c.cancelFetch()
		c.stop() // when it ended by itself
		watching.Wait()
	}()
	status := c.nc.StatusChanged(nats.CONNECTED, nats.CLOSED)
	defer c.nc.RemoveStatusListener(status)
	watching.Go(func() { c.watch(status) })
	if c.nc.IsClosed() {
		c.o.onError(fmt.Errorf("events: consume %s: %w", c.name(), nats.ErrConnectionClosed))
		c.stop()
	}

	failures := 0 // pulls in a row that failed or were ended early
	for {
		select {
		case <-c.stopCh: // before a free slot, which may be ready too
			return
		default:
		}
		if !c.nc.IsConnected() {
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
		var grant Grant
		if c.o.gate != nil {
			g, err := c.o.gate.Acquire(c.stopCtx, n)
			if err != nil || g == nil || g.N() < 1 || g.N() > n {
				releaseSlots(c.slots, n)
				if g != nil {
					g.Release(g.N()) // refused: nothing of it is used
				}
				if c.stopping.Load() {
					return
				}
				if err == nil {
					err = fmt.Errorf("grant for %d messages out of range 1..%d", grantSize(g), n)
				}
				c.o.onError(fmt.Errorf("events: pull gate of %s: %w", c.name(), err))
				if failures++; !c.pause(failures) {
					return
				}
				continue
			}
			grant = g
			releaseSlots(c.slots, n-g.N())
			n = g.N()
		}
		if c.stopping.Load() || !c.nc.IsConnected() {
			// Stopped, or the connection lost, while waiting for a slot or
			// the gate: a pull now would bring messages only to hand them
			// back, or wait in the reconnect buffer (see the top of the
			// loop).
			releaseSlots(c.slots, n)
			if grant != nil {
				grant.Release(n)
			}
			continue
		}
		start := time.Now()
		got, err := c.fetch(n, grant)
		releaseSlots(c.slots, n-got)
		if grant != nil && got < n {
			grant.Release(n - got)
		}
		switch {
		case err == nil && got == 0 && time.Since(start) < fetchWait/2:
			// Answered empty long before its expiry (the server ended the
			// pull): do not ask again at once.
			if failures++; !c.pause(failures) {
				return
			}
			continue
		case err == nil:
			failures = 0
			continue
		case c.stopping.Load():
			return
		case errors.Is(err, context.Canceled), // the connection came back
			errors.Is(err, context.DeadlineExceeded): // the server's expiry answer was lost
			continue
		}
		c.o.onError(fmt.Errorf("events: fetch from %s: %w", c.name(), err))
		if errors.Is(err, jetstream.ErrConsumerDeleted) || errors.Is(err, nats.ErrConnectionClosed) || c.gone(err) {
			return
		}
		if failures++; !c.pause(failures) {
			return
		}
	}
}

// pause waits out the delay after the n-th failed pull in a row,
// reporting false when the consumption stops first.
func (c *ConsumeContext) pause(n int) bool {
	t := time.NewTimer(fetchErrorBackoff.Delay(uint64(n)))
	defer t.Stop()
	select {
	case <-c.stopCh:
		return false
	case <-t.C:
		return true
	}
}

// name is the consumer's stream and name, for errors.
func (c *ConsumeContext) name() string {
	info := c.cons.CachedInfo()
	if info == nil { // an ordered consumer before its first pull
		return "consumer"
	}
	return fmt.Sprintf("%s consumer %q", info.Stream, info.Name)
}

// gone reports, and reports to the error handler, that the JetStream
// consumer no longer exists: a pull to a deleted consumer is not answered
// (its heartbeats stop) or finds no responders.
func (c *ConsumeContext) gone(err error) bool {
	if !c.nc.IsConnected() || !(errors.Is(err, jetstream.ErrNoHeartbeat) ||
		errors.Is(err, nats.ErrNoResponders) || errors.Is(err, jetstream.ErrConsumerNotFound)) {
		return false
	}
	ctx, cancel := context.WithTimeout(c.stopCtx, 5*time.Second)
	defer cancel()
	if _, err := c.cons.Info(ctx); !errors.Is(err, jetstream.ErrConsumerNotFound) {
		return false
	}
	c.o.onError(fmt.Errorf("events: %s: %w", c.name(), jetstream.ErrConsumerDeleted))
	return true
}

// fetch pulls up to n messages and handles each as it arrives, inline when
// concurrency is 1, else in a goroutine holding one slot until its handler
// returns. It returns how many arrived.
func (c *ConsumeContext) fetch(n int, grant Grant) (int, error) {
	// The deadline sets the pull's expiry (FetchContext takes it from
	// there; it cannot be combined with FetchMaxWait).
	ctx, cancel := context.WithTimeout(c.fetchCtx, fetchWait)
	defer cancel()
	c.pullMu.Lock()
	c.cancelPull, c.pullGen = cancel, c.nc.Stats().Reconnects
	c.pullMu.Unlock()
	defer func() {
		c.pullMu.Lock()
		c.cancelPull = nil
		c.pullMu.Unlock()
	}()

	batch, err := c.cons.Fetch(n, jetstream.FetchContext(ctx))
	if err != nil {
		return 0, err
	}
	got := 0
	for m := range batch.Messages() {
		got++
		c.wg.Add(1)
		msg := pulled{m, grant}
		switch {
		case c.o.concurrency == 1:
			c.handleInSlot(msg)
		case c.shards != nil:
			h := fnv.New32a()
			h.Write([]byte(c.o.orderKey(m)))
			c.shards[h.Sum32()%uint32(len(c.shards))] <- msg
		default:
			go c.handleInSlot(msg)
		}
	}
	return got, batch.Error()
}

// handleInSlot handles msg and then frees its slot; a message fetched but
// not started when the consumption stops goes back to JetStream at once.
func (c *ConsumeContext) handleInSlot(msg pulled) {
	defer func() {
		<-c.slots
		c.wg.Done()
	}()
	if c.stopping.Load() {
		_ = msg.Nak() // let another consumer have it now
		msg.unused()
		return
	}
	c.handle(msg)
}

// pulled is a message with the Grant it was pulled under, if any.
type pulled struct {
	jetstream.Msg
	grant Grant
}

// unused gives the message's part of its grant back: it reaches no
// handler.
func (p pulled) unused() {
	if p.grant != nil {
		p.grant.Release(1)
	}
}

// watch ends the current pull when the connection is re-established, and
// all pulling when it is closed for good.
func (c *ConsumeContext) watch(status <-chan nats.Status) {
	for {
		select {
		case s, ok := <-status:
			if !ok {
				return
			}
			if s == nats.CLOSED {
				c.o.onError(fmt.Errorf("events: consume %s: %w", c.name(), nats.ErrConnectionClosed))
				c.cancelFetch() // nothing more can arrive
				c.stop()
				return
			}
			// Only a pull sent before this reconnect was lost with the
			// old connection; one sent since is live (cancelling it would
			// drop what it already received).
			reconnects := c.nc.Stats().Reconnects
			c.pullMu.Lock()
			if c.cancelPull != nil && c.pullGen < reconnects {
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

// handle calls the handler with the message's lease as its context.
func (c *ConsumeContext) handle(msg pulled) {
	md, err := msg.Metadata()
	if err != nil { // not a JetStream message: cannot ack it either
		c.o.onError(fmt.Errorf("events: message on %s without JetStream metadata: %w", msg.Subject(), err))
		msg.unused()
		return
	}
	parent := context.WithValue(c.baseCtx, msgMetadataKey{}, md)
	if msg.grant != nil {
		parent = context.WithValue(parent, grantKey{}, msg.grant)
	}
	ctx, cancel := newLease(parent, msg.Msg, c.ackWait)
	defer cancel()
	c.handler(ctx, msg.Msg)
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

// MsgMetadata returns the JetStream metadata of the message a handler
// (JobHandler, MsgHandler) is handling (delivery count, stream sequence,
// timestamp), from the handler's context.
func MsgMetadata(ctx context.Context) (*jetstream.MsgMetadata, bool) {
	md, ok := ctx.Value(msgMetadataKey{}).(*jetstream.MsgMetadata)
	return md, ok && md != nil
}

// grantSize is g.N(), or 0 for no grant, for errors.
func grantSize(g Grant) int {
	if g == nil {
		return 0
	}
	return g.N()
}
