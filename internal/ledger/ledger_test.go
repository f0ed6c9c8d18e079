package ledger

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"testing"
	"time"
	"unsafe"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kreabus/kreabus/internal/natstest"
	"github.com/kreabus/kreabus/pkg/events"
	"github.com/kreabus/kreabus/pkg/krea"
)

type env struct {
	t   *testing.T
	ctx context.Context
	js  jetstream.JetStream
	l   *Ledger
}

// setup starts a JetStream server with KREA_JOBS (duplicate window dup)
// and opens a ledger with the given TTL.
func setup(t *testing.T, dup, ttl time.Duration) *env {
	t.Helper()
	s := natstest.RunServer(t)
	nc := natstest.Connect(t, s.ClientURL())
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	if _, err := events.EnsureStream(ctx, js, events.JobsStreamConfig(events.StreamOptions{DuplicateWindow: dup})); err != nil {
		t.Fatal(err)
	}
	l, err := Open(ctx, js, Config{TTL: ttl, Create: true, Workers: 4, AckWait: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return &env{t: t, ctx: ctx, js: js, l: l}
}

// recorder starts a Recorder that stops when the test ends.
func (e *env) recorder() *Recorder {
	e.t.Helper()
	r, err := NewRecorder(e.l, nil)
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(e.ctx)
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	e.t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			e.t.Errorf("recorder: %v", err)
		}
	})
	natstest.CheckFor(e.t, 10*time.Second, 10*time.Millisecond, func() error {
		if !r.Ready() {
			return errors.New("recorder not ready")
		}
		return nil
	})
	return r
}

// view starts a View that stops when the test ends.
func (e *env) view() *View {
	e.t.Helper()
	ctx, cancel := context.WithCancel(e.ctx)
	v, err := e.l.Watch(ctx)
	if err != nil {
		cancel()
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { cancel(); <-v.Done() })
	return v
}

func jobBody(jobID string, status krea.Status) []byte {
	b, _ := json.Marshal(map[string]any{
		"job_id": jobID, "status": status, "created_at": "2026-02-13T02:20:58.265Z",
		"completed_at": nil, "result": nil, "unknown_field": 1,
	})
	return b
}

// publish stores one job event and returns its PubAck.
func (e *env) publish(requestID, jobID string, status krea.Status, src events.Source, md string) *jetstream.PubAck {
	e.t.Helper()
	h := events.EventHeaders{JobID: jobID, Status: status, RequestID: requestID, Source: src}
	if md != "" {
		h.Metadata = json.RawMessage(md)
	}
	ack, err := e.js.PublishMsg(e.ctx, events.NewJobMsg(h, jobBody(jobID, status)))
	if err != nil {
		e.t.Fatalf("publish %s %s: %v", jobID, status, err)
	}
	return ack
}

// drained waits until the Recorder has applied every stored event.
func (e *env) drained() {
	e.t.Helper()
	natstest.CheckFor(e.t, 10*time.Second, 10*time.Millisecond, func() error {
		c, err := e.js.Consumer(e.ctx, events.StreamJobs, ConsumerName)
		if err != nil {
			return err
		}
		ci, err := c.Info(e.ctx)
		if err != nil {
			return err
		}
		if ci.NumPending != 0 || ci.NumAckPending != 0 {
			return fmt.Errorf("recorder behind: %d pending, %d unacknowledged", ci.NumPending, ci.NumAckPending)
		}
		return nil
	})
}

func (e *env) waitJob(jobID string, ok func(*Record) error) *Record {
	e.t.Helper()
	var rec *Record
	natstest.CheckFor(e.t, 10*time.Second, 10*time.Millisecond, func() error {
		r, err := e.l.Job(e.ctx, jobID)
		if err != nil {
			return err
		}
		rec = r
		return ok(r)
	})
	return rec
}

func TestConfigValidate(t *testing.T) {
	for _, c := range []Config{{TTL: time.Millisecond}, {Bucket: "a.b"}, {Replicas: 7}} {
		if err := c.Validate(); err == nil {
			t.Errorf("%+v: want an error", c)
		}
	}
	c := Config{}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	c.setDefaults()
	if c.Bucket != DefaultBucket || c.TTL != DefaultTTL || c.Replicas != 1 || c.Workers != DefaultWorkers {
		t.Fatalf("defaults: %+v", c)
	}
}

func TestOpenWithoutCreate(t *testing.T) {
	s := natstest.RunServer(t)
	nc := natstest.Connect(t, s.ClientURL())
	js, _ := jetstream.New(nc)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := Open(ctx, js, Config{}); !errors.Is(err, jetstream.ErrBucketNotFound) {
		t.Fatalf("want bucket not found, got %v", err)
	}
	l, err := Open(ctx, js, Config{Create: true, TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	st, err := l.KeyValue().Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.TTL() != time.Hour || st.History() != 1 {
		t.Fatalf("bucket ttl %v history %d", st.TTL(), st.History())
	}
	// Present now: opening without create works, and keeps the bucket's TTL.
	l2, err := Open(ctx, js, Config{TTL: 2 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if l2.TTL() != time.Hour {
		t.Fatalf("TTL %v, want the bucket's", l2.TTL())
	}
}

func TestPutRequest(t *testing.T) {
	e := setup(t, time.Minute, time.Hour)
	rid, jid := "req-1", uuid.NewString()
	if _, err := e.l.Request(e.ctx, rid); !errors.Is(err, ErrNotFound) {
		t.Fatalf("want ErrNotFound, got %v", err)
	}
	rec := Record{RequestID: rid, JobID: jid, Path: "/generate/image/bfl/flux-1-dev", Metadata: json.RawMessage(`{"user":"42"}`)}
	if err := e.l.PutRequest(e.ctx, rec); err != nil {
		t.Fatal(err)
	}
	if err := e.l.PutRequest(e.ctx, rec); err != nil {
		t.Fatalf("same pair again: %v", err)
	}
	err := e.l.PutRequest(e.ctx, Record{RequestID: rid, JobID: uuid.NewString()})
	var ce *ConflictError
	if !errors.Is(err, ErrConflict) || !errors.As(err, &ce) || ce.Existing.JobID != jid {
		t.Fatalf("want conflict naming %s, got %v", jid, err)
	}
	got, err := e.l.Request(e.ctx, rid)
	if err != nil {
		t.Fatal(err)
	}
	if got.JobID != jid || got.Path != rec.Path || string(got.Metadata) != `{"user":"42"}` ||
		got.Status != events.StatusSubmitted || got.Source != events.SourceSubmitter || got.SubmittedAt.IsZero() || got.Terminal {
		t.Fatalf("record %+v", got)
	}
	if err := e.l.PutRequest(e.ctx, Record{RequestID: "a.b", JobID: jid}); !errors.Is(err, ErrInvalidRecord) {
		t.Fatalf("want invalid record, got %v", err)
	}
}

func TestRecorderAndView(t *testing.T) {
	e := setup(t, time.Minute, time.Hour)
	e.recorder()
	v := e.view()
	if !v.Ready() {
		t.Fatal("view not ready after Watch")
	}
	rid, jid := "req-a", uuid.NewString()
	md := `{"user":"42"}`
	if err := e.l.PutRequest(e.ctx, Record{RequestID: rid, JobID: jid, Path: "/generate/image/bfl/flux-1-dev", Metadata: json.RawMessage(md)}); err != nil {
		t.Fatal(err)
	}
	e.publish(rid, jid, events.StatusSubmitted, events.SourceSubmitter, md)
	rec := e.waitJob(jid, func(r *Record) error {
		if r.Status != events.StatusSubmitted {
			return fmt.Errorf("status %q", r.Status)
		}
		return nil
	})
	if rec.RequestID != rid || string(rec.Metadata) != md || rec.Path != "/generate/image/bfl/flux-1-dev" || rec.Terminal || rec.SubmittedAt.IsZero() {
		t.Fatalf("job record %+v", rec)
	}
	o := v.Lookup(rid, jid)
	if o.Foreign || o.Terminal || string(o.Metadata) != md {
		t.Fatalf("lookup %+v", o)
	}

	e.publish(rid, jid, krea.StatusProcessing, events.SourceWebhook, md)
	e.waitJob(jid, func(r *Record) error {
		if r.Status != krea.StatusProcessing {
			return fmt.Errorf("status %q", r.Status)
		}
		return nil
	})
	e.publish(rid, jid, krea.StatusCompleted, events.SourceWebhook, md)
	rec = e.waitJob(jid, func(r *Record) error {
		if !r.Terminal {
			return errors.New("not terminal")
		}
		return nil
	})
	if rec.Status != krea.StatusCompleted || rec.Source != events.SourceWebhook {
		t.Fatalf("terminal record %+v", rec)
	}
	natstest.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if !v.Lookup(rid, jid).Terminal {
			return errors.New("view does not know the job is terminal")
		}
		return nil
	})
	// Later events never un-terminal the job.
	e.publish(rid, jid, krea.StatusProcessing, events.SourceWebhook, md)
	e.drained()
	rec, _ = e.l.Job(e.ctx, jid)
	if !rec.Terminal || rec.Status != krea.StatusCompleted {
		t.Fatalf("terminal record changed: %+v", rec)
	}
	// A new view (another process) learns everything from the bucket.
	v2 := e.view()
	if o := v2.Lookup(rid, jid); !o.Terminal || o.Foreign || string(o.Metadata) != md {
		t.Fatalf("fresh view lookup %+v", o)
	}
}

func TestTerminalBeforeSubmitted(t *testing.T) {
	e := setup(t, time.Minute, time.Hour)
	e.recorder()
	rid, jid := "req-fast", uuid.NewString()
	// The webhook beat the submitter's event.
	e.publish(rid, jid, krea.StatusCompleted, events.SourceWebhook, "")
	e.publish(rid, jid, events.StatusSubmitted, events.SourceSubmitter, `{"k":1}`)
	rec := e.waitJob(jid, func(r *Record) error {
		if len(r.Metadata) == 0 {
			return errors.New("submitted event not applied yet")
		}
		return nil
	})
	if !rec.Terminal || rec.Status != krea.StatusCompleted || rec.RequestID != rid {
		t.Fatalf("record %+v", rec)
	}
	// The submitted event also wrote the request record nobody else wrote.
	req, err := e.l.Request(e.ctx, rid)
	if err != nil || req.JobID != jid {
		t.Fatalf("request record %+v, %v", req, err)
	}
}

func TestForeign(t *testing.T) {
	e := setup(t, time.Minute, time.Hour)
	e.recorder()
	v := e.view()
	ridA, jidA := "req-A", uuid.NewString()
	if err := e.l.PutRequest(e.ctx, Record{RequestID: ridA, JobID: jidA, Metadata: json.RawMessage(`{"a":1}`)}); err != nil {
		t.Fatal(err)
	}
	e.publish(ridA, jidA, events.StatusSubmitted, events.SourceSubmitter, `{"a":1}`)
	natstest.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if je := v.jobs.get(jidA); je == nil || je.kv == nil {
			return errors.New("job not in view")
		}
		return nil
	})
	// Another request's valid token naming A's job.
	if o := v.Lookup("req-B", jidA); !o.Foreign || o.Metadata != nil {
		t.Fatalf("lookup(B, jobA) = %+v, want foreign without metadata", o)
	}
	// A's token naming another job.
	if o := v.Lookup(ridA, uuid.NewString()); !o.Foreign {
		t.Fatalf("lookup(A, other job) = %+v, want foreign", o)
	}
	// Unknown pair: not foreign (a webhook faster than the submitter).
	ridC, jidC := "req-C", uuid.NewString()
	if o := v.Lookup(ridC, jidC); o.Foreign || o.Terminal {
		t.Fatalf("unknown pair %+v", o)
	}
	// Once the bridge stored an event for it, the pair is known locally.
	v.Stored(ridC, jidC, krea.StatusCompleted)
	if o := v.Lookup(ridC, jidC); o.Foreign || !o.Terminal {
		t.Fatalf("stored pair %+v", o)
	}
	if o := v.Lookup("req-D", jidC); !o.Foreign {
		t.Fatalf("stored job with another request %+v", o)
	}
	if o := v.Lookup(ridC, uuid.NewString()); !o.Foreign {
		t.Fatalf("stored request with another job %+v", o)
	}
}

// TestLateDuplicateBeyondWindow: a terminal webhook repeated after the
// stream's duplicate window is no longer caught by JetStream, but the ledger
// still knows the job is terminal, in this process and in a fresh one.
func TestLateDuplicateBeyondWindow(t *testing.T) {
	const window = time.Second
	e := setup(t, window, time.Hour)
	e.recorder()
	v := e.view()
	rid, jid := "req-late", uuid.NewString()
	first := time.Now()
	if ack := e.publish(rid, jid, krea.StatusCompleted, events.SourceWebhook, ""); ack.Duplicate {
		t.Fatal("first terminal event reported duplicate")
	}
	v.Stored(rid, jid, krea.StatusCompleted)
	if ack := e.publish(rid, jid, krea.StatusCompleted, events.SourceWebhook, ""); !ack.Duplicate {
		t.Fatal("repeat within the window not caught by JetStream")
	}
	e.waitJob(jid, func(r *Record) error {
		if !r.Terminal {
			return errors.New("not terminal")
		}
		return nil
	})
	// Let the duplicate window pass.
	natstest.CheckFor(t, 5*time.Second, 50*time.Millisecond, func() error {
		if time.Since(first) < window+200*time.Millisecond {
			return errors.New("duplicate window not over")
		}
		return nil
	})
	fresh := e.view()
	for name, view := range map[string]*View{"same": v, "fresh": fresh} {
		if o := view.Lookup(rid, jid); !o.Terminal || o.Foreign {
			t.Fatalf("%s view: %+v, want terminal", name, o)
		}
	}
	// Proof the ledger is what protects us: JetStream alone stores it once
	// its purge timer has forgotten the ID (a duplicate stores nothing, so
	// trying again changes nothing else).
	natstest.CheckFor(t, 10*time.Second, 100*time.Millisecond, func() error {
		if ack := e.publish(rid, jid, krea.StatusFailed, events.SourceWebhook, ""); ack.Duplicate {
			return errors.New("JetStream still de-duplicates after the window; the test would prove nothing")
		}
		return nil
	})
	// And even then the ledger keeps the first terminal status.
	e.drained()
	rec, err := e.l.Job(e.ctx, jid)
	if err != nil || rec.Status != krea.StatusCompleted {
		t.Fatalf("record %+v %v", rec, err)
	}
}

func TestApplyEventRules(t *testing.T) {
	now := time.Now()
	jid := uuid.NewString()
	ev := func(st krea.Status, rid, md string) *events.Event {
		e := &events.Event{Status: st, JobID: jid, RequestID: rid, Source: events.SourceWebhook, Time: now}
		if md != "" {
			e.Metadata = json.RawMessage(md)
		}
		return e
	}
	r, ch := applyEvent(nil, ev(events.StatusSubmitted, "r", `{"a":1}`), now)
	if !ch || r.Status != events.StatusSubmitted || r.RequestID != "r" || string(r.Metadata) != `{"a":1}` || r.SubmittedAt.IsZero() {
		t.Fatalf("submitted: %+v", r)
	}
	if _, ch := applyEvent(&r, ev(events.StatusSubmitted, "r", `{"a":1}`), now.Add(time.Second)); ch {
		t.Fatal("re-applying changed the record")
	}
	r2, ch := applyEvent(&r, ev(krea.StatusFailed, "r", ""), now)
	if !ch || !r2.Terminal || r2.Status != krea.StatusFailed {
		t.Fatalf("terminal: %+v", r2)
	}
	for _, st := range []krea.Status{krea.StatusProcessing, krea.StatusCompleted, events.StatusSubmitted, krea.StatusCancelled} {
		if r3, ch := applyEvent(&r2, ev(st, "r", ""), now); ch || r3.Status != krea.StatusFailed {
			t.Fatalf("%s after terminal: changed=%v %+v", st, ch, r3)
		}
	}
	// Another request's metadata never lands on this job.
	r4, _ := applyEvent(&Record{JobID: jid, RequestID: "r"}, ev(krea.StatusProcessing, "x", `{"b":2}`), now)
	if r4.RequestID != "r" || r4.Metadata != nil {
		t.Fatalf("foreign event: %+v", r4)
	}
}

// TestRecordersShareWork runs two Recorders (two replicas) on the same
// durable and many events, including concurrent ones for one job.
func TestRecordersShareWork(t *testing.T) {
	e := setup(t, time.Minute, time.Hour)
	e.recorder()
	e.recorder()
	v := e.view()
	const jobs = 60
	ids := make([]string, jobs)
	var wg sync.WaitGroup
	for i := range ids {
		ids[i] = uuid.NewString()
		rid := fmt.Sprintf("req-%d", i)
		wg.Go(func() {
			e.publish(rid, ids[i], events.StatusSubmitted, events.SourceSubmitter, `{"i":1}`)
			e.publish(rid, ids[i], krea.StatusProcessing, events.SourceWebhook, "")
			e.publish(rid, ids[i], krea.StatusCompleted, events.SourceWebhook, "")
			e.publish(rid, ids[i], krea.StatusFailed, events.SourcePoll, "") // duplicate msg id: dropped
		})
	}
	wg.Wait()
	// Concurrent direct applies of conflicting events on one key.
	r, _ := NewRecorder(e.l, nil)
	hot := uuid.NewString()
	for i := range 8 {
		wg.Go(func() {
			st := krea.StatusProcessing
			if i == 5 {
				st = krea.StatusCancelled
			}
			if _, err := r.Apply(e.ctx, &events.Event{JobID: hot, RequestID: "req-hot", Status: st, Source: events.SourcePoll}); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if rec, err := e.l.Job(e.ctx, hot); err != nil || rec.Status != krea.StatusCancelled || !rec.Terminal {
		t.Fatalf("hot key: %+v %v", rec, err)
	}
	natstest.CheckFor(t, 20*time.Second, 20*time.Millisecond, func() error {
		for i, id := range ids {
			o := v.Lookup(fmt.Sprintf("req-%d", i), id)
			if !o.Terminal || o.Foreign || string(o.Metadata) != `{"i":1}` {
				return fmt.Errorf("job %d: %+v", i, o)
			}
		}
		return nil
	})
	for _, id := range ids {
		rec, err := e.l.Job(e.ctx, id)
		if err != nil || rec.Status != krea.StatusCompleted {
			t.Fatalf("job %s: %+v %v", id, rec, err)
		}
	}
}

func TestPending(t *testing.T) {
	e := setup(t, time.Minute, time.Hour)
	r, err := NewRecorder(e.l, nil)
	if err != nil {
		t.Fatal(err)
	}
	v := e.view()
	now := time.Now()
	old := now.Add(-10 * time.Minute)
	created := old.UTC()
	submit := func(rid, jid string, at time.Time) {
		t.Helper()
		ev := &events.Event{JobID: jid, RequestID: rid, Status: events.StatusSubmitted, Source: events.SourceSubmitter,
			Job: krea.Job{JobID: jid, CreatedAt: &at}}
		if _, err := r.Apply(e.ctx, ev); err != nil {
			t.Fatal(err)
		}
	}
	jOld, jNew, jDone, jReqOnly := uuid.NewString(), uuid.NewString(), uuid.NewString(), uuid.NewString()
	if err := e.l.PutRequest(e.ctx, Record{RequestID: "r-old", JobID: jOld, Path: "/styles/train", SubmittedAt: old}); err != nil {
		t.Fatal(err)
	}
	submit("r-old", jOld, created)
	submit("r-new", jNew, now)
	submit("r-done", jDone, created)
	if _, err := r.Apply(e.ctx, &events.Event{JobID: jDone, RequestID: "r-done", Status: krea.StatusCompleted}); err != nil {
		t.Fatal(err)
	}
	if err := e.l.PutRequest(e.ctx, Record{RequestID: "r-reqonly", JobID: jReqOnly, SubmittedAt: old.Add(time.Second), Metadata: json.RawMessage(`{"x":1}`)}); err != nil {
		t.Fatal(err)
	}
	var got []Record
	natstest.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		got = v.Pending(now, 5*time.Minute)
		if len(got) != 2 || got[0].JobID != jOld || got[1].JobID != jReqOnly {
			return fmt.Errorf("pending %d: %+v", len(got), got)
		}
		return nil
	})
	if got[0].RequestID != "r-old" || got[0].Path != "/styles/train" || string(got[1].Metadata) != `{"x":1}` {
		t.Fatalf("pending %+v", got)
	}
	// A terminal status stored locally takes the job out at once.
	v.Stored("r-old", jOld, krea.StatusCompleted)
	if got := v.Pending(now, 5*time.Minute); len(got) != 1 || got[0].JobID != jReqOnly {
		t.Fatalf("pending after Stored %+v", got)
	}
	if got := v.Pending(now, time.Hour); len(got) != 0 {
		t.Fatalf("pending with a long grace %+v", got)
	}
}

// TestTTL: entries leave the bucket and the view after the TTL.
func TestTTL(t *testing.T) {
	// 3 s: the entries must all be seen at once before the first expires.
	e := setup(t, time.Second, 3*time.Second)
	e.recorder()
	v := e.view()
	jid := uuid.NewString()
	if err := e.l.PutRequest(e.ctx, Record{RequestID: "r-ttl", JobID: jid}); err != nil {
		t.Fatal(err)
	}
	e.publish("r-ttl", jid, events.StatusSubmitted, events.SourceSubmitter, "")
	v.Stored("r-local", uuid.NewString(), krea.StatusCompleted)
	natstest.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if r, j := v.Size(); r != 2 || j != 2 {
			return fmt.Errorf("view holds %d requests, %d jobs", r, j)
		}
		return nil
	})
	natstest.CheckFor(t, 15*time.Second, 50*time.Millisecond, func() error {
		if r, j := v.Size(); r != 0 || j != 0 {
			return fmt.Errorf("view still holds %d requests, %d jobs", r, j)
		}
		return nil
	})
	natstest.CheckFor(t, 15*time.Second, 50*time.Millisecond, func() error {
		if _, err := e.l.Request(e.ctx, "r-ttl"); !errors.Is(err, ErrNotFound) {
			return fmt.Errorf("request record still there: %v", err)
		}
		if _, err := e.l.Job(e.ctx, jid); !errors.Is(err, ErrNotFound) {
			return fmt.Errorf("job record still there: %v", err)
		}
		return nil
	})
}

// TestViewExpiryMarkers: the view drops expired keys through the watch
// even when its own clock says they are fresh.
func TestViewExpiryMarkers(t *testing.T) {
	e := setup(t, time.Second, 3*time.Second)
	// Make the view's local expiry long so only the bucket's markers can
	// remove the entry.
	e.l.ttl = time.Hour
	v := e.view()
	if err := e.l.PutRequest(e.ctx, Record{RequestID: "r-m", JobID: uuid.NewString()}); err != nil {
		t.Fatal(err)
	}
	natstest.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if r, _ := v.Size(); r != 1 {
			return errors.New("not loaded")
		}
		return nil
	})
	natstest.CheckFor(t, 15*time.Second, 50*time.Millisecond, func() error {
		if r, _ := v.Size(); r != 0 {
			return errors.New("expired key still in view")
		}
		return nil
	})
}

func TestViewConcurrentUse(t *testing.T) {
	e := setup(t, time.Minute, time.Hour)
	e.recorder()
	v := e.view()
	ctx, cancel := context.WithTimeout(e.ctx, 2*time.Second)
	defer cancel()
	var wg, sweeper sync.WaitGroup
	stop := make(chan struct{})
	for w := range 4 {
		wg.Go(func() {
			for i := 0; ctx.Err() == nil && i < 200; i++ {
				rid, jid := fmt.Sprintf("r-%d-%d", w, i), uuid.NewString()
				_ = v.Lookup(rid, jid)
				v.Stored(rid, jid, krea.StatusProcessing)
				if i%10 == 0 {
					e.publish(rid, jid, krea.StatusCompleted, events.SourceWebhook, "")
				}
				_ = v.Pending(time.Now(), 0)
			}
		})
	}
	sweeper.Go(func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(time.Millisecond):
			}
			v.expire(time.Now())
			v.dropStale(1)
		}
	})
	wg.Wait()
	close(stop)
	sweeper.Wait()
}

func BenchmarkLookup(b *testing.B) {
	v := &View{now: time.Now, ttl: time.Hour}
	v.reqs.init()
	v.jobs.init()
	ids := make([]string, 1024)
	for i := range ids {
		ids[i] = uuid.NewString()
		v.Stored(fmt.Sprint("r", i), ids[i], krea.StatusCompleted)
	}
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			_ = v.Lookup("r1", ids[i%len(ids)])
			i++
		}
	})
}

func TestPutRejection(t *testing.T) {
	e := setup(t, time.Minute, time.Hour)
	rej := Record{RequestID: "rej-1", Path: "/generate/image/bfl/flux-1-dev", Reason: "refused", Rejection: json.RawMessage(`{"request_id":"rej-1"}`)}
	if err := e.l.PutRejection(e.ctx, rej); err != nil {
		t.Fatal(err)
	}
	if err := e.l.PutRejection(e.ctx, rej); err != nil {
		t.Fatalf("same rejection again: %v", err)
	}
	got, err := e.l.Request(e.ctx, "rej-1")
	if err != nil || got.Status != events.StatusRejected || !got.Terminal || got.JobID != "" || got.Reason != "refused" || string(got.Rejection) != `{"request_id":"rej-1"}` {
		t.Fatalf("record %+v, %v", got, err)
	}
	// A request recorded with a job must not be rejected: the conflict names the job.
	jid := uuid.NewString()
	if err := e.l.PutRequest(e.ctx, Record{RequestID: "sub-1", JobID: jid}); err != nil {
		t.Fatal(err)
	}
	var ce *ConflictError
	if err := e.l.PutRejection(e.ctx, Record{RequestID: "sub-1"}); !errors.As(err, &ce) || ce.Existing.JobID != jid {
		t.Fatalf("want conflict naming %s, got %v", jid, err)
	}
	if err := e.l.PutRejection(e.ctx, Record{RequestID: "a.b"}); !errors.Is(err, ErrInvalidRecord) {
		t.Fatalf("invalid request ID: %v", err)
	}
}

// The View holds one entry per request and per job of the TTL: its size is
// the bridge's memory per job.
func TestEntryStaysSmall(t *testing.T) {
	if n := unsafe.Sizeof(entry{}); n > 64 {
		t.Fatalf("entry is %d bytes, want at most 64", n)
	}
}

// TestViewMemoryPerJob measures what the View holds per job in production's
// shape: a req.<id> record from the submitter and a terminal job.<id>
// record from the Recorder, both through the bucket and the watch, and the
// bridge's Stored for the job's webhook.
func TestViewMemoryPerJob(t *testing.T) {
	const n = 5000
	// The server runs as its own process, so this one's heap is the View's
	// and the client's alone.
	p := natstest.StartProcess(t)
	nc := natstest.Connect(t, p.URL())
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	l, err := Open(t.Context(), js, Config{TTL: time.Hour, Create: true, Workers: 1, AckWait: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, ctx: t.Context(), js: js, l: l}
	md := json.RawMessage(`{"user":"u-1234","campaign":"spring"}`)
	var pairs [][2]string
	for i := range n {
		rid, jid := fmt.Sprintf("req-%06d-%s", i, uuid.NewString()[:8]), uuid.NewString()
		pairs = append(pairs, [2]string{rid, jid})
		if err := e.l.PutRequest(e.ctx, Record{RequestID: rid, JobID: jid, Path: "/generate/image/bfl/flux-1-dev", Metadata: md}); err != nil {
			t.Fatal(err)
		}
		job := Record{RequestID: rid, JobID: jid, Path: "/generate/image/bfl/flux-1-dev", Status: krea.StatusCompleted, Terminal: true,
			Metadata: md, SubmittedAt: time.Now().UTC(), UpdatedAt: time.Now().UTC(), Source: events.SourceWebhook}
		data, _ := json.Marshal(job)
		if _, err := e.l.kv.Put(e.ctx, JobKey(jid), data); err != nil {
			t.Fatal(err)
		}
	}
	// Measure the heap with the View and again once it is gone.
	ctx, cancel := context.WithCancel(e.ctx)
	defer cancel()
	v, err := e.l.Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if r, j := v.Size(); r != n || j != n {
		t.Fatalf("view holds %d requests, %d jobs", r, j)
	}
	// Each job's webhook then passes the bridge, which tells the View.
	for _, p := range pairs {
		v.Stored(string([]byte(p[0])), string([]byte(p[1])), krea.StatusCompleted)
	}
	var with, without runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&with)
	runtime.KeepAlive(v)
	cancel()
	<-v.Done()
	v = nil
	runtime.GC()
	runtime.ReadMemStats(&without)
	per := float64(with.HeapAlloc-without.HeapAlloc) / n
	objs := float64(with.HeapObjects-without.HeapObjects) / n
	t.Logf("view: %.0f bytes and %.1f heap objects per job (request and job records)", per, objs)
	// Whole Records and a copy of both IDs per webhook took 1060 bytes and
	// 17 objects per job; 500 and 7 now.
	if per > 800 {
		t.Errorf("the view holds %.0f bytes per job, want under 800", per)
	}
}

// TestClaimPoll: one holder at a time; the holder keeps its claim; a claim
// expires by itself.
func TestClaimPoll(t *testing.T) {
	e := setup(t, time.Minute, time.Hour)
	jid := uuid.NewString()
	claim := func(holder string) bool {
		t.Helper()
		ok, err := e.l.ClaimPoll(e.ctx, jid, holder, time.Second)
		if err != nil {
			t.Fatal(err)
		}
		return ok
	}
	if !claim("a") {
		t.Fatal("first claim refused")
	}
	if claim("b") {
		t.Fatal("second holder got a live claim")
	}
	if !claim("a") {
		t.Fatal("holder lost its own claim")
	}
	natstest.CheckFor(t, 10*time.Second, 50*time.Millisecond, func() error {
		if !claim("b") {
			return errors.New("claim of a has not expired")
		}
		return nil
	})
	if claim("a") {
		t.Fatal("claim expired for a, then b's claim not respected")
	}
	if _, err := e.l.ClaimPoll(e.ctx, "a.b", "a", time.Second); !errors.Is(err, ErrInvalidRecord) {
		t.Fatalf("invalid job ID: %v", err)
	}
	// The view ignores claims.
	v := e.view()
	if r, j := v.Size(); r != 0 || j != 0 {
		t.Fatalf("view holds %d requests, %d jobs after claims", r, j)
	}
}
