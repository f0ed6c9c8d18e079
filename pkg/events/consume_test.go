package events_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kreabus/kreabus/internal/natstest"
	"github.com/kreabus/kreabus/pkg/events"
	"github.com/kreabus/kreabus/pkg/krea"
)

// publishEvent stores a job event on KREA_JOBS as a producer would.
func publishEvent(t *testing.T, js jetstream.JetStream, jobID string, status krea.Status) {
	t.Helper()
	body := fmt.Sprintf(`{"job_id":%q,"status":%q,"result":{"urls":["https://example.com/%s.png"]}}`, jobID, status, jobID)
	h := events.EventHeaders{JobID: jobID, Status: status, RequestID: "req-" + jobID, Source: events.SourceWebhook, Metadata: []byte(`{"user":"42"}`)}
	if status == events.StatusRejected {
		h.JobID = ""
		body = `{"reason":"refused"}`
	}
	if _, err := js.PublishMsg(testCtx(t), events.NewJobMsg(h, []byte(body))); err != nil {
		t.Fatal(err)
	}
}

// errorLog collects what a consumer reports.
type errorLog struct {
	mu   sync.Mutex
	errs []error
}

func (l *errorLog) add(err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.errs = append(l.errs, err)
}

func (l *errorLog) all() []error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.errs)
}

func (l *errorLog) messageErrors() []*events.MessageError {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []*events.MessageError
	for _, err := range l.errs {
		var me *events.MessageError
		if errors.As(err, &me) {
			out = append(out, me)
		}
	}
	return out
}

// recorder is a JobHandler keeping the events it saw.
type recorder struct {
	mu     sync.Mutex
	events []*events.Event
	mds    []*jetstream.MsgMetadata
	times  []time.Time
	// deadlines: how far each handler's context deadline was.
	deadlines []time.Duration
	fail      func(ev *events.Event, md *jetstream.MsgMetadata) error
}

// ctxDeadline is how far the deadline of handler call i was.
func (r *recorder) ctxDeadline(i int) (time.Duration, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if i >= len(r.deadlines) || r.deadlines[i] < 0 {
		return 0, false
	}
	return r.deadlines[i], true
}

func (r *recorder) handle(ctx context.Context, ev *events.Event) error {
	md, ok := events.MsgMetadata(ctx)
	if !ok {
		return errors.New("no metadata in handler context")
	}
	r.mu.Lock()
	r.events = append(r.events, ev)
	r.mds = append(r.mds, md)
	r.times = append(r.times, time.Now())
	dl, ok := ctx.Deadline()
	if ok {
		r.deadlines = append(r.deadlines, time.Until(dl))
	} else {
		r.deadlines = append(r.deadlines, -1)
	}
	fail := r.fail
	r.mu.Unlock()
	if fail != nil {
		return fail(ev, md)
	}
	return nil
}

func (r *recorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.events)
}

func (r *recorder) waitFor(t *testing.T, n int) {
	t.Helper()
	natstest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if got := r.count(); got < n {
			return fmt.Errorf("handled %d events, want %d", got, n)
		}
		return nil
	})
}

func consumerInfo(t *testing.T, c *events.ConsumeContext) *jetstream.ConsumerInfo {
	t.Helper()
	info, err := c.Consumer().Info(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	return info
}

// waitSettled waits until the consumer has nothing pending or unacked.
func waitSettled(t *testing.T, c *events.ConsumeContext) {
	t.Helper()
	natstest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		info := consumerInfo(t, c)
		if info.NumAckPending != 0 || info.NumPending != 0 {
			return fmt.Errorf("ack pending %d, pending %d", info.NumAckPending, info.NumPending)
		}
		return nil
	})
}

// jobsConsumer creates (or updates) the consumer durable on KREA_JOBS.
func jobsConsumer(t *testing.T, js jetstream.JetStream, durable string, opts ...events.JobsConsumerOpt) jetstream.Consumer {
	t.Helper()
	cfg, err := events.JobsConsumerConfig(durable, opts...)
	if err != nil {
		t.Fatal(err)
	}
	cons, err := js.CreateOrUpdateConsumer(testCtx(t), events.StreamJobs, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return cons
}

// consume creates the consumer durable with the JobsConsumerOpts among
// opts and consumes it with the ConsumeOpts; the test's end stops it and
// waits for its handlers.
func consume(t *testing.T, js jetstream.JetStream, durable string, h events.JobHandler, opts ...any) *events.ConsumeContext {
	t.Helper()
	var copts []events.JobsConsumerOpt
	var ropts []events.ConsumeOpt
	for _, o := range opts {
		switch o := o.(type) {
		case events.JobsConsumerOpt:
			copts = append(copts, o)
		case events.ConsumeOpt:
			ropts = append(ropts, o)
		default:
			t.Fatalf("option %T", o)
		}
	}
	c, err := events.ConsumeJobs(js.Conn(), jobsConsumer(t, js, durable, copts...), h, ropts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Stop(); <-c.Closed() })
	return c
}

func TestConsumeJobsFilteredByStatus(t *testing.T) {
	js := startStreams(t)
	publishEvent(t, js, "j1", events.StatusSubmitted)
	publishEvent(t, js, "j1", krea.StatusProcessing)
	publishEvent(t, js, "j1", krea.StatusCompleted)
	publishEvent(t, js, "j2", krea.StatusFailed)
	publishEvent(t, js, "j3", krea.StatusCancelled)
	publishEvent(t, js, "r4", events.StatusRejected)

	var rec recorder
	var log errorLog
	c := consume(t, js, "svc", rec.handle,
		events.WithStatuses(krea.StatusCompleted, krea.StatusFailed, events.StatusRejected, krea.StatusCompleted),
		events.WithErrorHandler(log.add))
	rec.waitFor(t, 3)
	waitSettled(t, c)
	time.Sleep(50 * time.Millisecond) // nothing else arrives
	if rec.count() != 3 {
		t.Fatalf("handled %d events, want 3", rec.count())
	}

	cfg := consumerInfo(t, c).Config
	if want := []string{"krea.jobs.completed", "krea.jobs.failed", "krea.jobs.rejected"}; !slices.Equal(cfg.FilterSubjects, want) {
		t.Errorf("FilterSubjects = %v, want %v", cfg.FilterSubjects, want)
	}
	if cfg.Durable != "svc" || cfg.AckPolicy != jetstream.AckExplicitPolicy || cfg.DeliverPolicy != jetstream.DeliverAllPolicy {
		t.Errorf("consumer config %+v", cfg)
	}

	ev := rec.events[0]
	if ev.Subject != "krea.jobs.completed" || ev.Status != krea.StatusCompleted || ev.JobID != "j1" || ev.RequestID != "req-j1" ||
		ev.Source != events.SourceWebhook || string(ev.Metadata) != `{"user":"42"}` || ev.Time.IsZero() {
		t.Errorf("event = %+v", ev)
	}
	if ev.Job.JobID != "j1" || ev.Job.Result == nil || len(ev.Job.Result.URLs) != 1 {
		t.Errorf("decoded job = %+v", ev.Job)
	}
	if rec.events[1].Status != krea.StatusFailed || rec.events[2].Status != events.StatusRejected || rec.events[2].RequestID != "req-r4" {
		t.Errorf("events 2, 3 = %+v %+v", rec.events[1], rec.events[2])
	}
	if errs := log.all(); len(errs) != 0 {
		t.Errorf("errors reported: %v", errs)
	}
}

func TestConsumeJobsSingleStatusAndAll(t *testing.T) {
	js := startStreams(t)
	publishEvent(t, js, "j1", events.StatusSubmitted)
	publishEvent(t, js, "j1", krea.StatusCompleted)

	var one, all recorder
	c1 := consume(t, js, "one", one.handle, events.WithStatuses(krea.StatusCompleted))
	c2 := consume(t, js, "all", all.handle)
	all.waitFor(t, 2)
	one.waitFor(t, 1)
	waitSettled(t, c1)
	waitSettled(t, c2)
	if one.count() != 1 || one.events[0].Status != krea.StatusCompleted {
		t.Errorf("filtered consumer got %d events", one.count())
	}
	if f := consumerInfo(t, c1).Config.FilterSubject; f != "krea.jobs.completed" {
		t.Errorf("FilterSubject = %q", f)
	}
	if all.count() != 2 || all.events[0].Status != events.StatusSubmitted {
		t.Errorf("unfiltered consumer got %d events", all.count())
	}
}

func TestConsumeJobsRedeliversWithBackoff(t *testing.T) {
	js := startStreams(t)
	publishEvent(t, js, "j1", krea.StatusCompleted)

	rec := recorder{fail: func(ev *events.Event, md *jetstream.MsgMetadata) error {
		if md.NumDelivered < 4 {
			return errors.New("downstream unavailable")
		}
		return nil
	}}
	var log errorLog
	const min = 100 * time.Millisecond
	c := consume(t, js, "retry", rec.handle, events.WithBackoff(events.Backoff{Min: min, Max: 2 * min}), events.WithErrorHandler(log.add))
	rec.waitFor(t, 4)
	waitSettled(t, c)

	rec.mu.Lock()
	defer rec.mu.Unlock()
	for i, md := range rec.mds {
		if md.NumDelivered != uint64(i+1) {
			t.Errorf("call %d: NumDelivered = %d", i, md.NumDelivered)
		}
		if md.Sequence.Stream != 1 {
			t.Errorf("call %d: stream seq = %d", i, md.Sequence.Stream)
		}
	}
	// Delays (events.Backoff, jittered into the upper half of each
	// ceiling): min, 2*min, then capped at 2*min.
	for i, ceiling := range []time.Duration{min, 2 * min, 2 * min} {
		if gap := rec.times[i+1].Sub(rec.times[i]); gap < ceiling/2 {
			t.Errorf("redelivery %d after %v, want at least %v", i+1, gap, ceiling/2)
		}
	}
	mes := log.messageErrors()
	if len(mes) != 3 {
		t.Fatalf("reported %d message errors, want 3: %v", len(mes), log.all())
	}
	for i, ceiling := range []time.Duration{min, 2 * min, 2 * min} {
		me := mes[i]
		if me.Retry < ceiling/2 || me.Retry > ceiling || me.Terminated || me.NumDelivered != uint64(i+1) || me.JobID != "j1" || me.RequestID != "req-j1" || me.Err.Error() != "downstream unavailable" {
			t.Errorf("message error %d = %+v", i, me)
		}
	}
	if info := consumerInfo(t, c); info.NumRedelivered != 0 || info.AckFloor.Stream != 1 {
		t.Errorf("consumer after success: %+v", info)
	}
}

func TestConsumeJobsMaxDeliver(t *testing.T) {
	js := startStreams(t)
	publishEvent(t, js, "j1", krea.StatusCompleted)
	publishEvent(t, js, "j2", krea.StatusCompleted)

	rec := recorder{fail: func(ev *events.Event, _ *jetstream.MsgMetadata) error {
		if ev.JobID == "j1" {
			return errors.New("always")
		}
		return nil
	}}
	var log errorLog
	c := consume(t, js, "max", rec.handle, events.WithBackoff(events.Backoff{Min: 10 * time.Millisecond, Max: 10 * time.Millisecond}), events.WithMaxDeliver(3), events.WithErrorHandler(log.add))
	rec.waitFor(t, 4) // j1 three times, j2 once
	waitSettled(t, c)
	time.Sleep(100 * time.Millisecond)
	if n := rec.count(); n != 4 {
		t.Fatalf("handled %d times, want 4", n)
	}
	mes := log.messageErrors()
	if len(mes) != 3 || !mes[2].Terminated || mes[2].NumDelivered != 3 || mes[1].Terminated {
		t.Fatalf("message errors %v", mes)
	}
	if cfg := consumerInfo(t, c).Config; cfg.MaxDeliver != 3 {
		t.Errorf("MaxDeliver = %d", cfg.MaxDeliver)
	}
}

func TestConsumeJobsTerminate(t *testing.T) {
	js := startStreams(t)
	publishEvent(t, js, "j1", krea.StatusCompleted)
	errBad := errors.New("not for us")
	rec := recorder{fail: func(*events.Event, *jetstream.MsgMetadata) error { return events.Terminate(errBad) }}
	var log errorLog
	c := consume(t, js, "term", rec.handle, events.WithBackoff(events.Backoff{Min: 10 * time.Millisecond, Max: 10 * time.Millisecond}), events.WithErrorHandler(log.add))
	rec.waitFor(t, 1)
	waitSettled(t, c)
	time.Sleep(100 * time.Millisecond)
	if rec.count() != 1 {
		t.Fatalf("terminated event handled %d times", rec.count())
	}
	mes := log.messageErrors()
	if len(mes) != 1 || !mes[0].Terminated || !errors.Is(mes[0], errBad) {
		t.Fatalf("message errors %v", mes)
	}
	if events.Terminate(nil) != nil {
		t.Error("Terminate(nil) != nil")
	}
}

func TestConsumeJobsPanicIsRedelivered(t *testing.T) {
	js := startStreams(t)
	publishEvent(t, js, "j1", krea.StatusCompleted)
	rec := recorder{fail: func(_ *events.Event, md *jetstream.MsgMetadata) error {
		if md.NumDelivered == 1 {
			panic("boom")
		}
		return nil
	}}
	var log errorLog
	c := consume(t, js, "panic", rec.handle, events.WithBackoff(events.Backoff{Min: 10 * time.Millisecond, Max: 10 * time.Millisecond}), events.WithErrorHandler(log.add))
	rec.waitFor(t, 2)
	waitSettled(t, c)
	if mes := log.messageErrors(); len(mes) != 1 || mes[0].Terminated {
		t.Fatalf("message errors %v", mes)
	}
}

func TestConsumeJobsTerminatesMalformed(t *testing.T) {
	js := startStreams(t)
	ctx := testCtx(t)
	bad := events.NewJobMsg(events.EventHeaders{JobID: "bad", Status: krea.StatusCompleted, Source: events.SourceWebhook, RequestID: "req-bad"}, []byte(`{"job_id": `))
	if _, err := js.PublishMsg(ctx, bad); err != nil {
		t.Fatal(err)
	}
	notObject := events.NewJobMsg(events.EventHeaders{JobID: "arr", Status: krea.StatusCompleted, Source: events.SourceWebhook}, []byte(`[1,2]`))
	if _, err := js.PublishMsg(ctx, notObject); err != nil {
		t.Fatal(err)
	}
	publishEvent(t, js, "good", krea.StatusCompleted)

	var rec recorder
	var log errorLog
	c := consume(t, js, "malformed", rec.handle, events.WithBackoff(events.Backoff{Min: 10 * time.Millisecond, Max: 10 * time.Millisecond}), events.WithErrorHandler(log.add))
	rec.waitFor(t, 1)
	waitSettled(t, c)
	time.Sleep(100 * time.Millisecond)
	if rec.count() != 1 || rec.events[0].JobID != "good" {
		t.Fatalf("handler saw %d events", rec.count())
	}
	mes := log.messageErrors()
	if len(mes) != 2 {
		t.Fatalf("message errors %v", log.all())
	}
	for _, me := range mes {
		if !errors.Is(me, events.ErrMalformedEvent) || !me.Terminated || me.NumDelivered != 1 {
			t.Errorf("message error %+v", me)
		}
	}
	if mes[0].JobID != "bad" || mes[0].RequestID != "req-bad" || mes[0].Sequence != 1 {
		t.Errorf("first message error %+v", mes[0])
	}
	if info := consumerInfo(t, c); info.NumRedelivered != 0 || info.AckFloor.Stream != 3 {
		t.Errorf("consumer %+v", info)
	}
}

func TestConsumeJobsInOrderByDefault(t *testing.T) {
	js := startStreams(t)
	const n = 30
	for i := range n {
		publishEvent(t, js, fmt.Sprintf("j%02d", i), krea.StatusCompleted)
	}
	var inFlight, maxInFlight atomic.Int32
	rec := recorder{fail: func(*events.Event, *jetstream.MsgMetadata) error {
		cur := inFlight.Add(1)
		defer inFlight.Add(-1)
		if cur > maxInFlight.Load() {
			maxInFlight.Store(cur)
		}
		time.Sleep(time.Millisecond)
		return nil
	}}
	c := consume(t, js, "ordered", rec.handle)
	rec.waitFor(t, n)
	waitSettled(t, c)
	for i, ev := range rec.events {
		if want := fmt.Sprintf("j%02d", i); ev.JobID != want {
			t.Fatalf("event %d is %s, want %s", i, ev.JobID, want)
		}
	}
	if m := maxInFlight.Load(); m != 1 {
		t.Errorf("%d handlers ran at once, want 1", m)
	}
}

func TestConsumeJobsConcurrency(t *testing.T) {
	js := startStreams(t)
	const workers = 4
	for i := range 2 * workers {
		publishEvent(t, js, fmt.Sprintf("j%d", i), krea.StatusCompleted)
	}
	var inFlight, maxInFlight atomic.Int32
	release := make(chan struct{})
	rec := recorder{fail: func(*events.Event, *jetstream.MsgMetadata) error {
		cur := inFlight.Add(1)
		defer inFlight.Add(-1)
		for {
			m := maxInFlight.Load()
			if cur <= m || maxInFlight.CompareAndSwap(m, cur) {
				break
			}
		}
		<-release
		return nil
	}}
	c := consume(t, js, "parallel", rec.handle, events.WithConcurrency(workers))
	natstest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if m := inFlight.Load(); m != workers {
			return fmt.Errorf("%d handlers in flight, want %d", m, workers)
		}
		return nil
	})
	close(release)
	rec.waitFor(t, 2*workers)
	waitSettled(t, c)
	if m := maxInFlight.Load(); m != workers {
		t.Errorf("at most %d handlers ran at once, want %d", m, workers)
	}
}

// TestConsumeJobsDrainWaitsForHandlers: Drain stops pulling at once, lets
// the handler in flight finish and acks its event; Closed waits for it.
func TestConsumeJobsDrainWaitsForHandlers(t *testing.T) {
	for _, workers := range []int{1, 3} {
		t.Run(fmt.Sprint("concurrency ", workers), func(t *testing.T) {
			js := startStreams(t)
			publishEvent(t, js, "j1", krea.StatusCompleted)
			started := make(chan struct{})
			release := make(chan struct{})
			var handled atomic.Bool
			cons := jobsConsumer(t, js, "stop", events.WithAckWait(2*time.Second))
			c, err := events.ConsumeJobs(js.Conn(), cons, func(ctx context.Context, ev *events.Event) error {
				close(started)
				<-release
				handled.Store(true)
				return ctx.Err()
			}, events.WithConcurrency(workers))
			if err != nil {
				t.Fatal(err)
			}
			<-started
			c.Drain() // does not wait
			select {
			case <-c.Closed():
				t.Fatal("closed while a handler was running")
			case <-time.After(100 * time.Millisecond):
			}
			publishEvent(t, js, "j2", krea.StatusCompleted) // not handled: draining
			close(release)
			select {
			case <-c.Closed():
			case <-time.After(10 * time.Second):
				t.Fatal("not closed after the handler returned")
			}
			if !handled.Load() {
				t.Fatal("handler did not finish")
			}
			c.Drain() // again: no-op
			c.Stop()

			// The event in flight was acked; j2 is still there for the next run.
			natstest.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
				info, err := cons.Info(testCtx(t))
				if err != nil {
					return err
				}
				if info.AckFloor.Stream != 1 {
					return fmt.Errorf("ack floor %d, want 1", info.AckFloor.Stream)
				}
				return nil
			})
			var rec recorder
			// A short ack wait: j2 may have gone to the stopped consumer's
			// pull before the server heard it was cancelled.
			c2 := consume(t, js, "stop", rec.handle, events.WithAckWait(2*time.Second))
			rec.waitFor(t, 1)
			waitSettled(t, c2)
			if rec.count() != 1 || rec.events[0].JobID != "j2" {
				t.Errorf("resumed consumer got %d events", rec.count())
			}
		})
	}
}

// TestConsumeJobsStopCancelsHandlers: Stop ends the contexts of the
// handlers in flight; Closed follows once they have returned.
func TestConsumeJobsStopCancelsHandlers(t *testing.T) {
	js := startStreams(t)
	publishEvent(t, js, "j1", krea.StatusCompleted)
	started := make(chan struct{})
	cancelled := make(chan error, 1)
	c, err := events.ConsumeJobs(js.Conn(), jobsConsumer(t, js, "shutdown"), func(ctx context.Context, ev *events.Event) error {
		close(started)
		<-ctx.Done()
		cancelled <- ctx.Err()
		return ctx.Err()
	}, events.WithErrorHandler(nil))
	if err != nil {
		t.Fatal(err)
	}
	<-started
	c.Stop()
	select {
	case err := <-cancelled:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("handler context ended with %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("handler context not cancelled")
	}
	select {
	case <-c.Closed():
	case <-time.After(5 * time.Second):
		t.Fatal("consumer not closed")
	}
}

func TestConsumeJobsHandlerContext(t *testing.T) {
	js := startStreams(t)
	publishEvent(t, js, "j1", krea.StatusCompleted)
	got := make(chan context.Context, 1)
	c := consume(t, js, "ctx", func(ctx context.Context, ev *events.Event) error {
		got <- ctx
		return nil
	}, events.WithAckWait(2*time.Second))
	ctx := <-got
	if dl, ok := ctx.Deadline(); !ok || time.Until(dl) > 2*time.Second {
		t.Errorf("handler deadline %v, want within the 2s ack wait", dl)
	}
	if cfg := consumerInfo(t, c).Config; cfg.AckWait != 2*time.Second {
		t.Errorf("AckWait = %v", cfg.AckWait)
	}
	if _, ok := events.MsgMetadata(context.Background()); ok {
		t.Error("MsgMetadata outside a handler")
	}
}

func TestConsumeJobsDeliverNew(t *testing.T) {
	js := startStreams(t)
	publishEvent(t, js, "old", krea.StatusCompleted)
	var rec recorder
	c := consume(t, js, "new", rec.handle, events.WithDeliverPolicy(jetstream.DeliverNewPolicy))
	publishEvent(t, js, "fresh", krea.StatusCompleted)
	rec.waitFor(t, 1)
	waitSettled(t, c)
	if rec.count() != 1 || rec.events[0].JobID != "fresh" {
		t.Fatalf("got %d events, first %+v", rec.count(), rec.events[0])
	}
}

func TestConsumeJobsEphemeral(t *testing.T) {
	js := startStreams(t)
	publishEvent(t, js, "j1", krea.StatusFailed)
	var rec recorder
	c := consume(t, js, "", rec.handle)
	rec.waitFor(t, 1)
	if cfg := consumerInfo(t, c).Config; cfg.Durable != "" {
		t.Errorf("ephemeral consumer has durable %q", cfg.Durable)
	}
}

func TestConsumeJobsUpdatesFilter(t *testing.T) {
	js := startStreams(t)
	publishEvent(t, js, "j1", krea.StatusCompleted)
	var rec recorder
	c := consume(t, js, "upd", rec.handle, events.WithStatuses(krea.StatusCompleted))
	rec.waitFor(t, 1)
	waitSettled(t, c)
	c.Stop()
	<-c.Closed()

	publishEvent(t, js, "j2", krea.StatusFailed)
	var rec2 recorder
	c2 := consume(t, js, "upd", rec2.handle, events.WithStatuses(krea.StatusCompleted, krea.StatusFailed))
	rec2.waitFor(t, 1)
	waitSettled(t, c2)
	if rec2.events[0].JobID != "j2" {
		t.Errorf("after widening the filter got %+v", rec2.events[0])
	}
}

func TestConsumeJobsConnectionClosed(t *testing.T) {
	_, nc, js := natstest.JetStream(t)
	if err := events.EnsureStreams(testCtx(t), js, events.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	c, err := events.ConsumeJobs(nc, jobsConsumer(t, js, "closing"), func(context.Context, *events.Event) error { return nil }, events.WithErrorHandler(nil))
	if err != nil {
		t.Fatal(err)
	}
	nc.Close()
	select {
	case <-c.Closed():
	case <-time.After(10 * time.Second):
		t.Fatal("consumer not closed with its connection")
	}
	c.Stop()
}

func TestConsumeJobsInvalidOptions(t *testing.T) {
	js := startStreams(t)
	for name, opt := range map[string]events.JobsConsumerOpt{
		"no statuses":          events.WithStatuses(),
		"bad status":           events.WithStatuses("completed.x"),
		"wildcard status":      events.WithStatuses(">"),
		"deliver by start seq": events.WithDeliverPolicy(jetstream.DeliverByStartSequencePolicy),
		"max deliver 0":        events.WithMaxDeliver(0),
		"ack wait 0":           events.WithAckWait(0),
	} {
		if _, err := events.JobsConsumerConfig("x", opt); !errors.Is(err, events.ErrInvalidOption) {
			t.Errorf("%s: err = %v, want ErrInvalidOption", name, err)
		}
	}
	cons := jobsConsumer(t, js, "x")
	h := func(context.Context, *events.Event) error { return nil }
	for name, opt := range map[string]events.ConsumeOpt{
		"backoff zero":     events.WithBackoff(events.Backoff{Max: time.Second}),
		"backoff inverted": events.WithBackoff(events.Backoff{Min: time.Second, Max: time.Millisecond}),
		"concurrency 0":    events.WithConcurrency(0),
	} {
		if _, err := events.ConsumeJobs(js.Conn(), cons, h, opt); !errors.Is(err, events.ErrInvalidOption) {
			t.Errorf("%s: err = %v, want ErrInvalidOption", name, err)
		}
	}
	if _, err := events.ConsumeJobs(js.Conn(), cons, nil); !errors.Is(err, events.ErrInvalidOption) {
		t.Errorf("nil handler: err = %v", err)
	}
	if _, err := events.ConsumeJobs(nil, cons, h); !errors.Is(err, events.ErrInvalidOption) {
		t.Errorf("nil connection: err = %v", err)
	}
	// A consumer that acks nothing cannot be consumed: its events would be
	// gone whether the handler succeeded or not.
	noAck, err := js.CreateConsumer(testCtx(t), events.StreamJobs, jetstream.ConsumerConfig{Durable: "no-ack", AckPolicy: jetstream.AckNonePolicy})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := events.ConsumeJobs(js.Conn(), noAck, h); !errors.Is(err, events.ErrInvalidOption) {
		t.Errorf("ack none consumer: err = %v", err)
	}
}

func TestJobsConsumerConfig(t *testing.T) {
	cfg, err := events.JobsConsumerConfig("d")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Durable != "d" || cfg.AckPolicy != jetstream.AckExplicitPolicy || cfg.AckWait != events.DefaultAckWait ||
		cfg.MaxDeliver != -1 || cfg.DeliverPolicy != jetstream.DeliverAllPolicy || cfg.FilterSubject != "" || len(cfg.FilterSubjects) != 0 {
		t.Errorf("defaults: %+v", cfg)
	}
	cfg, err = events.JobsConsumerConfig("d",
		events.WithStatuses(events.StatusCompleted, events.StatusFailed, events.StatusCompleted),
		events.WithMaxDeliver(5), events.WithAckWait(time.Minute), events.WithDeliverPolicy(jetstream.DeliverNewPolicy))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(cfg.FilterSubjects, []string{"krea.jobs.completed", "krea.jobs.failed"}) || cfg.FilterSubject != "" ||
		cfg.MaxDeliver != 5 || cfg.AckWait != time.Minute || cfg.DeliverPolicy != jetstream.DeliverNewPolicy {
		t.Errorf("with options: %+v", cfg)
	}
	cfg, _ = events.JobsConsumerConfig("d", events.WithStatuses(events.StatusFailed, events.StatusCompleted), events.WithStatuses(events.StatusMirrored))
	if cfg.FilterSubject != "krea.jobs.mirrored" || cfg.FilterSubjects != nil {
		t.Errorf("the last WithStatuses wins: %+v", cfg)
	}
}

// TestConsumeJobsOperatorConsumer: ConsumeJobs consumes through a consumer
// an operator made, as it is: it neither creates nor updates one, so two
// deployments with their own durables cannot overwrite each other.
func TestConsumeJobsOperatorConsumer(t *testing.T) {
	js := startStreams(t)
	made, err := js.CreateConsumer(testCtx(t), events.StreamJobs, jetstream.ConsumerConfig{
		Durable: "operators", AckPolicy: jetstream.AckExplicitPolicy, FilterSubject: "krea.jobs.failed",
		AckWait: 3 * time.Second, Description: "made by hand",
	})
	if err != nil {
		t.Fatal(err)
	}
	publishEvent(t, js, "j1", krea.StatusCompleted)
	publishEvent(t, js, "j2", krea.StatusFailed)
	bound, err := js.Consumer(testCtx(t), events.StreamJobs, "operators")
	if err != nil {
		t.Fatal(err)
	}
	var rec recorder
	c, err := events.ConsumeJobs(js.Conn(), bound, rec.handle)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Stop(); <-c.Closed() })
	rec.waitFor(t, 1)
	waitSettled(t, c)
	if rec.count() != 1 || rec.events[0].JobID != "j2" {
		t.Errorf("got %d events", rec.count())
	}
	info, err := made.Info(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	if info.Config.Description != "made by hand" || info.Config.FilterSubject != "krea.jobs.failed" || info.Config.AckWait != 3*time.Second {
		t.Errorf("consumer changed: %+v", info.Config)
	}
	if dl, ok := rec.ctxDeadline(0); !ok || dl > 3*time.Second {
		t.Errorf("handler deadline in %v, want within the consumer's 3s ack wait", dl)
	}
}

// TestConsume: the message-level loop hands each message to its handler,
// which settles it itself.
func TestConsume(t *testing.T) {
	js := startStreams(t)
	for _, id := range []string{"j1", "j2", "j3"} {
		publishEvent(t, js, id, krea.StatusCompleted)
	}
	var mu sync.Mutex
	var subjects []string
	c, err := events.Consume(js.Conn(), jobsConsumer(t, js, "raw"), func(ctx context.Context, msg jetstream.Msg) {
		md, ok := events.MsgMetadata(ctx)
		if !ok {
			t.Error("no metadata in the handler's context")
			return
		}
		mu.Lock()
		subjects = append(subjects, fmt.Sprintf("%s:%d", msg.Headers().Get(events.HeaderJobID), md.Sequence.Stream))
		mu.Unlock()
		_ = msg.Ack()
	}, events.WithConcurrency(2))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Stop(); <-c.Closed() })
	waitSettled(t, c)
	mu.Lock()
	defer mu.Unlock()
	slices.Sort(subjects)
	if !slices.Equal(subjects, []string{"j1:1", "j2:2", "j3:3"}) {
		t.Errorf("handled %v", subjects)
	}
}

func TestMessageErrorText(t *testing.T) {
	e := &events.MessageError{Subject: "krea.jobs.completed", Sequence: 7, NumDelivered: 2, JobID: "j", Retry: time.Second, Err: errors.New("x")}
	if got := e.Error(); got != `events: krea.jobs.completed seq 7 (job "j", delivery 2): x; redelivery in 1s` {
		t.Errorf("Error() = %q", got)
	}
	e.Terminated = true
	if got := e.Error(); got != `events: krea.jobs.completed seq 7 (job "j", delivery 2): x; terminated` {
		t.Errorf("Error() = %q", got)
	}
}

// The submitter's rejection body has an HTTP "status" number and maybe an
// "error" string: not a job object, yet the handler must get the event.
func TestConsumeJobsRejectedBodyIsNotAJob(t *testing.T) {
	js := startStreams(t)
	ctx := testCtx(t)
	body := `{"request_id":"req-9","path":"/generate/image/bfl/flux-1-dev","reason":"refused by the API","kind":"api_refused","status":402,"error":"Payment required"}`
	m := events.NewJobMsg(events.EventHeaders{Status: events.StatusRejected, RequestID: "req-9", Source: events.SourceSubmitter, Reason: "refused by the API"}, []byte(body))
	if _, err := js.PublishMsg(ctx, m); err != nil {
		t.Fatal(err)
	}
	// A rejected event whose body is not JSON at all is still malformed.
	m = events.NewJobMsg(events.EventHeaders{Status: events.StatusRejected, RequestID: "req-10", Source: events.SourceSubmitter}, []byte(`not json`))
	if _, err := js.PublishMsg(ctx, m); err != nil {
		t.Fatal(err)
	}
	var rec recorder
	var log errorLog
	c := consume(t, js, "rejections", rec.handle, events.WithStatuses(events.StatusRejected), events.WithErrorHandler(log.add))
	rec.waitFor(t, 1)
	waitSettled(t, c)
	ev := rec.events[0]
	if ev.Status != events.StatusRejected || ev.RequestID != "req-9" || ev.Reason != "refused by the API" || string(ev.Raw) != body || ev.Job.Status != "" {
		t.Errorf("event %+v", ev)
	}
	if mes := log.messageErrors(); len(mes) != 1 || mes[0].RequestID != "req-10" || !errors.Is(mes[0], events.ErrMalformedEvent) {
		t.Errorf("message errors %v", log.all())
	}
}

// TestConsumeJobsNeverStalls hands events over one at a time, the case in
// which jetstream's Consume (nats.go v1.55) could skip a pull and wait for
// its heartbeat check: no gap between two events may come near that.
func TestConsumeJobsNeverStalls(t *testing.T) {
	js := startStreams(t)
	const n = 400
	for i := range n {
		publishEvent(t, js, fmt.Sprintf("j%03d", i), krea.StatusCompleted)
	}
	var rec recorder
	c := consume(t, js, "steady", rec.handle)
	natstest.CheckFor(t, 30*time.Second, 10*time.Millisecond, func() error {
		if got := rec.count(); got < n {
			return fmt.Errorf("handled %d events, want %d", got, n)
		}
		return nil
	})
	waitSettled(t, c)
	rec.mu.Lock()
	defer rec.mu.Unlock()
	var worst time.Duration
	for i := 1; i < len(rec.times); i++ {
		worst = max(worst, rec.times[i].Sub(rec.times[i-1]))
	}
	if worst > 8*time.Second { // a stall lasts 10-30 s; a loaded CI machine may pause for a few
		t.Errorf("longest gap between two events %v: the consumer stalled", worst)
	}
	t.Logf("%d events, longest gap %v", n, worst)
}

// TestConsumeJobsServerRestart kills the NATS server under a consumer:
// once it is back, a new event is handled at once, not when the pull lost
// with the old server is found dead by its missing heartbeats (10 s).
func TestConsumeJobsServerRestart(t *testing.T) {
	p := natstest.StartProcess(t)
	// No reconnect buffer: a pull sent while disconnected fails at once,
	// and nats.go then keeps its subscription, which the test would see.
	nc, err := nats.Connect(p.URL(), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond), nats.ReconnectBufSize(-1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	if err := events.EnsureStreams(testCtx(t), js, events.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	var rec recorder
	var log errorLog
	// A short ack wait: the kill may lose the server's record of the first
	// ack (consumer state is flushed lazily), and then that event comes
	// again once its ack wait is over: at least once, as documented.
	c := consume(t, js, "restart", rec.handle, events.WithErrorHandler(log.add), events.WithAckWait(time.Second))
	publishEvent(t, js, "before", krea.StatusCompleted)
	rec.waitFor(t, 1)

	// The subscriptions in use: the connection's own, and one pull's,
	// sent again as soon as the last one ended (sample across that gap).
	subs := 0
	for end := time.Now().Add(100 * time.Millisecond); time.Now().Before(end); time.Sleep(2 * time.Millisecond) {
		subs = max(subs, nc.NumSubscriptions())
	}
	p.Stop()
	natstest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if nc.IsConnected() {
			return errors.New("still connected")
		}
		return nil
	})
	// While the server is away the consumer sends no pulls: each would wait
	// in the reconnect buffer with a subscription of its own and reach the
	// server after its inbox is gone. Watch longer than a pull lasts.
	for deadline := time.Now().Add(events.FetchWait + time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if n := nc.NumSubscriptions(); n > subs {
			t.Fatalf("%d subscriptions while disconnected, %d before", n, subs)
		}
	}
	p.Start()
	natstest.CheckFor(t, 20*time.Second, 20*time.Millisecond, func() error {
		if !nc.IsConnected() {
			return errors.New("not reconnected")
		}
		return nil
	})
	publishEvent(t, js, "after", krea.StatusCompleted)
	published := time.Now()
	// Wait for "after" itself: the redelivered "before" may come first.
	natstest.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		rec.mu.Lock()
		defer rec.mu.Unlock()
		for _, ev := range rec.events {
			if ev.JobID == "after" {
				return nil
			}
		}
		return fmt.Errorf("handled %d events, none of them \"after\"", len(rec.events))
	})
	t.Logf("handled %v after publishing", time.Since(published))
	waitSettled(t, c)
	rec.mu.Lock()
	var ids []string
	for _, ev := range rec.events {
		ids = append(ids, ev.JobID)
	}
	rec.mu.Unlock()
	// "before" may come twice, in any place: its redelivery races the
	// reconnect and the publishing of "after".
	count := map[string]int{}
	for _, id := range ids {
		count[id]++
	}
	if count["after"] != 1 || count["before"] < 1 || count["before"] > 2 || len(count) != 2 {
		t.Errorf("handled %v, want after once and before once or twice", ids)
	}
	if errs := log.messageErrors(); len(errs) != 0 {
		t.Errorf("message errors: %v", errs)
	}
	select {
	case <-c.Closed():
		t.Error("consumer stopped over a server restart")
	default:
	}
}

// TestConsumeJobsConsumerDeleted: deleting the durable consumer under a
// running JobConsumer stops it (Closed) and says why; it does not spin.
func TestConsumeJobsConsumerDeleted(t *testing.T) {
	js := startStreams(t)
	var log errorLog
	c := consume(t, js, "doomed", func(context.Context, *events.Event) error { return nil }, events.WithErrorHandler(log.add))
	if err := js.DeleteConsumer(testCtx(t), events.StreamJobs, "doomed"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-c.Closed():
	case <-time.After(15 * time.Second):
		t.Fatalf("consumer still running after its deletion; errors: %v", log.all())
	}
	errs := log.all()
	if len(errs) == 0 || !errors.Is(errs[len(errs)-1], jetstream.ErrConsumerDeleted) {
		t.Errorf("errors reported: %v", errs)
	}
}

// TestConsumeOrderKey: under concurrency, the messages of one key are
// handled one at a time and in order.
func TestConsumeOrderKey(t *testing.T) {
	js := startStreams(t)
	jobs := []string{"a", "b", "c"}
	const per = 6
	for i := range per {
		for _, j := range jobs {
			publishEvent(t, js, j, krea.Status(fmt.Sprintf("step-%d", i)))
		}
	}
	var mu sync.Mutex
	seen := map[string][]uint64{}
	busy := map[string]bool{}
	c, err := events.Consume(js.Conn(), jobsConsumer(t, js, "ordered"), func(ctx context.Context, msg jetstream.Msg) {
		md, _ := events.MsgMetadata(ctx)
		job := msg.Headers().Get(events.HeaderJobID)
		mu.Lock()
		if busy[job] {
			t.Errorf("two messages of job %s at once", job)
		}
		busy[job] = true
		mu.Unlock()
		time.Sleep(time.Duration(md.Sequence.Stream%3) * time.Millisecond)
		mu.Lock()
		busy[job] = false
		seen[job] = append(seen[job], md.Sequence.Stream)
		mu.Unlock()
		_ = msg.Ack()
	}, events.WithConcurrency(4), events.WithOrderKey(func(m jetstream.Msg) string { return m.Headers().Get(events.HeaderJobID) }))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Stop(); <-c.Closed() })
	waitSettled(t, c)
	mu.Lock()
	defer mu.Unlock()
	for _, j := range jobs {
		if len(seen[j]) != per || !slices.IsSorted(seen[j]) {
			t.Errorf("job %s handled in the order %v", j, seen[j])
		}
	}
}

// TestConsumeOrderedConsumer: Consume takes an ordered consumer too (no
// acks, no information before its first pull).
func TestConsumeOrderedConsumer(t *testing.T) {
	js := startStreams(t)
	cons, err := js.OrderedConsumer(testCtx(t), events.StreamJobs, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	var got atomic.Int64
	c, err := events.Consume(js.Conn(), cons, func(context.Context, jetstream.Msg) { got.Add(1) }, events.WithConcurrency(4))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Stop(); <-c.Closed() })
	for _, id := range []string{"j1", "j2", "j3"} {
		publishEvent(t, js, id, krea.StatusCompleted)
	}
	natstest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if n := got.Load(); n != 3 {
			return fmt.Errorf("handled %d messages, want 3", n)
		}
		return nil
	})
	if _, err := events.ConsumeJobs(js.Conn(), cons, func(context.Context, *events.Event) error { return nil }); !errors.Is(err, events.ErrInvalidOption) {
		t.Errorf("ConsumeJobs of an ordered consumer: %v", err)
	}
}

// Stopping a consumption while messages flow hands back what its last
// pull brings at once: the next consumption on the durable gets every
// message long before the ack wait would have redelivered a dropped one.
func TestDrainWhileMessagesFlowLosesNothing(t *testing.T) {
	js := startStreams(t)
	cons := jobsConsumer(t, js, "flow", events.WithAckWait(time.Minute))
	const total = 400
	seen := make(chan string, 4*total)
	handler := func(_ context.Context, msg jetstream.Msg) {
		seen <- msg.Headers().Get(events.HeaderJobID)
		_ = msg.Ack()
	}
	published := make(chan error, 1)
	go func() {
		for i := range total {
			m := events.NewJobMsg(events.EventHeaders{Status: krea.StatusCompleted, JobID: fmt.Sprintf("flow-%d", i), Source: events.SourceWebhook}, []byte(`{}`))
			if _, err := js.PublishMsgAsync(m); err != nil {
				published <- err
				return
			}
		}
		<-js.PublishAsyncComplete()
		published <- nil
	}()
	got := map[string]bool{}
	// Three consumptions in turn, each stopped while messages arrive.
	for round := range 3 {
		c, err := events.Consume(js.Conn(), cons, handler, events.WithConcurrency(8))
		if err != nil {
			t.Fatal(err)
		}
		for len(got) < (round+1)*total/4 {
			select {
			case id := <-seen:
				got[id] = true
			case <-time.After(10 * time.Second):
				t.Fatalf("round %d: %d of %d messages after 10 s", round, len(got), total)
			}
		}
		if round%2 == 0 {
			c.Drain()
		} else {
			c.Stop()
		}
		<-c.Closed()
	}
	if err := <-published; err != nil {
		t.Fatal(err)
	}
	c, err := events.Consume(js.Conn(), cons, handler, events.WithConcurrency(8))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { c.Stop(); <-c.Closed() }()
	deadline := time.After(15 * time.Second) // the ack wait is a minute
	for len(got) < total {
		select {
		case id := <-seen:
			got[id] = true
		case <-deadline:
			t.Fatalf("%d of %d messages within 15 s: the others wait out their ack wait", len(got), total)
		}
	}
}
