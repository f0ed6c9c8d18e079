package ledger

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

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
	_, _, js := natstest.JetStream(t)
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
		if !r.live.Load() {
			return errors.New("recorder not ready")
		}
		return nil
	})
	return r
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
		c.SetDefaults()
		if err := c.Validate(); err == nil {
			t.Errorf("%+v: want an error", c)
		}
	}
	c := Config{}
	c.SetDefaults()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if c.Bucket != DefaultBucket || c.TTL != DefaultTTL || c.replicas() != DefaultReplicas || c.Workers != DefaultWorkers {
		t.Fatalf("defaults: %+v", c)
	}
}

func TestOpenWithoutCreate(t *testing.T) {
	s := natstest.RunServer(t)
	_, js := natstest.ConnectJetStream(t, s.ClientURL())
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

// open starts an open-jobs watch that stops when the test ends.
func (e *env) open() *OpenJobs {
	e.t.Helper()
	ctx, cancel := context.WithCancel(e.ctx)
	o := e.l.WatchOpen(ctx)
	if err := o.WaitReady(ctx); err != nil {
		cancel()
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { cancel(); <-o.Done() })
	return o
}

func lookup(t *testing.T, o *Owners, requestID, jobID string) Ownership {
	t.Helper()
	own, err := o.Lookup(context.Background(), requestID, jobID)
	if err != nil {
		t.Fatalf("lookup(%s, %s): %v", requestID, jobID, err)
	}
	return own
}

func TestRecordSubmission(t *testing.T) {
	e := setup(t, time.Minute, time.Hour)
	rid, jid := "req-1", uuid.NewString()
	if _, err := e.l.Request(e.ctx, rid); !errors.Is(err, ErrNotFound) {
		t.Fatalf("want ErrNotFound, got %v", err)
	}
	rec := Record{RequestID: rid, JobID: jid, Path: "/generate/image/bfl/flux-1-dev", Metadata: json.RawMessage(`{"user":"42"}`)}
	if err := e.l.RecordSubmission(e.ctx, rec); err != nil {
		t.Fatal(err)
	}
	if err := e.l.RecordSubmission(e.ctx, rec); err != nil {
		t.Fatalf("same pair again: %v", err)
	}
	got, err := e.l.Request(e.ctx, rid)
	if err != nil {
		t.Fatal(err)
	}
	if got.JobID != jid || got.Path != rec.Path || string(got.Metadata) != `{"user":"42"}` ||
		got.Status != events.StatusSubmitted || got.Source != events.SourceSubmitter || got.SubmittedAt.IsZero() || got.Terminal {
		t.Fatalf("request record %+v", got)
	}
	job, err := e.l.Job(e.ctx, jid)
	if err != nil || job.RequestID != rid || job.Extra || job.Terminal || string(job.Metadata) != `{"user":"42"}` {
		t.Fatalf("job record %+v, %v", job, err)
	}
	if o := e.open(); o.Len() != 1 {
		t.Fatalf("open jobs %d, want 1", o.Len())
	}
	// A second job for the same request: recorded, marked extra.
	jid2 := uuid.NewString()
	err = e.l.RecordSubmission(e.ctx, Record{RequestID: rid, JobID: jid2})
	var xe *ConflictError
	if !errors.Is(err, ErrConflict) || !errors.As(err, &xe) || xe.Existing.JobID != jid {
		t.Fatalf("want an extra-job error naming %s, got %v", jid, err)
	}
	if job, err := e.l.Job(e.ctx, jid2); err != nil || !job.Extra || job.RequestID != rid {
		t.Fatalf("extra job record %+v, %v", job, err)
	}
	if got, _ := e.l.Request(e.ctx, rid); got.JobID != jid {
		t.Fatalf("the request's job changed to %s", got.JobID)
	}
	if err := e.l.RecordSubmission(e.ctx, Record{RequestID: "a.b", JobID: jid}); !errors.Is(err, ErrInvalidRecord) {
		t.Fatalf("want invalid record, got %v", err)
	}
}

// TestRequestLifecycle: intents are revision-checked, so two deliveries of
// one request can never both decide to send it; an uncertain request becomes
// submitted when the submission is recorded.
func TestRequestLifecycle(t *testing.T) {
	e := setup(t, time.Minute, time.Hour)
	rid := "req-life"
	intent := Record{RequestID: rid, Path: "/styles/train", Status: StatusSending, Attempt: 1, IntentAt: time.Now()}
	rev, err := e.l.PutRequestAt(e.ctx, intent, 0)
	if err != nil {
		t.Fatal(err)
	}
	// A second delivery that read "absent" loses.
	if _, err := e.l.PutRequestAt(e.ctx, intent, 0); !errors.Is(err, ErrChanged) {
		t.Fatalf("second create: %v, want ErrChanged", err)
	}
	intent.Status = StatusUncertain
	rev2, err := e.l.PutRequestAt(e.ctx, intent, rev)
	if err != nil {
		t.Fatal(err)
	}
	// A write at the old revision loses.
	if _, err := e.l.PutRequestAt(e.ctx, intent, rev); !errors.Is(err, ErrChanged) {
		t.Fatalf("stale write: %v, want ErrChanged", err)
	}
	got, gotRev, err := e.l.RequestAt(e.ctx, rid)
	if err != nil || gotRev != rev2 || got.Status != StatusUncertain || got.Attempt != 1 || !got.Unresolved() || got.Settled() {
		t.Fatalf("record %+v rev %d (want %d), %v", got, gotRev, rev2, err)
	}
	jid := uuid.NewString()
	if err := e.l.RecordSubmission(e.ctx, Record{RequestID: rid, JobID: jid, Attempt: 1}); err != nil {
		t.Fatal(err)
	}
	got, _ = e.l.Request(e.ctx, rid)
	if got.Status != events.StatusSubmitted || got.JobID != jid || got.Path != "/styles/train" || !got.Settled() {
		t.Fatalf("after submission %+v", got)
	}
	// Rejecting it now is refused: it has a job.
	var ce *ConflictError
	if err := e.l.PutRejection(e.ctx, Record{RequestID: rid}); !errors.As(err, &ce) || ce.Existing.JobID != jid {
		t.Fatalf("reject a submitted request: %v", err)
	}
}

func TestRecorderAndOwners(t *testing.T) {
	e := setup(t, time.Minute, time.Hour)
	e.recorder()
	owners := e.l.Owners(0)
	rid, jid := "req-a", uuid.NewString()
	md := `{"user":"42"}`
	if err := e.l.RecordSubmission(e.ctx, Record{RequestID: rid, JobID: jid, Path: "/generate/image/bfl/flux-1-dev", Metadata: json.RawMessage(md)}); err != nil {
		t.Fatal(err)
	}
	// Known at once, before any event: the submitter's write is the record.
	if o := lookup(t, owners, rid, jid); o.Foreign || o.Terminal || o.Extra || string(o.Metadata) != md {
		t.Fatalf("lookup %+v", o)
	}
	e.publish(rid, jid, events.StatusSubmitted, events.SourceSubmitter, md)
	e.publish(rid, jid, krea.StatusProcessing, events.SourceWebhook, md)
	e.waitJob(jid, func(r *Record) error {
		if r.Status != krea.StatusProcessing {
			return fmt.Errorf("status %q", r.Status)
		}
		return nil
	})
	e.publish(rid, jid, krea.StatusCompleted, events.SourceWebhook, md)
	rec := e.waitJob(jid, func(r *Record) error {
		if !r.Terminal {
			return errors.New("not terminal")
		}
		return nil
	})
	if rec.Status != krea.StatusCompleted || rec.Source != events.SourceWebhook || rec.Path != "/generate/image/bfl/flux-1-dev" {
		t.Fatalf("terminal record %+v", rec)
	}
	if o := lookup(t, owners, rid, jid); !o.Terminal || o.Foreign || string(o.Metadata) != md {
		t.Fatalf("lookup after terminal %+v", o)
	}
	// Later events never un-terminal the job.
	e.publish(rid, jid, krea.StatusProcessing, events.SourceWebhook, md)
	e.drained()
	rec, _ = e.l.Job(e.ctx, jid)
	if !rec.Terminal || rec.Status != krea.StatusCompleted {
		t.Fatalf("terminal record changed: %+v", rec)
	}
	// A fresh index (another bridge, started after all this) answers the
	// same without loading anything.
	if o := lookup(t, e.l.Owners(0), rid, jid); !o.Terminal || o.Foreign || string(o.Metadata) != md {
		t.Fatalf("fresh lookup %+v", o)
	}
	// The mirror's event changes nothing of the job but is noted where it
	// is stored, with the job's other events.
	ack := e.publish(rid, jid, events.StatusMirrored, events.SourceMirror, md)
	rec = e.waitJob(jid, func(r *Record) error {
		for _, ref := range r.Events {
			if ref.Subject == "krea.jobs.mirrored" {
				if ref.Seq != ack.Sequence || ref.Source != events.SourceMirror {
					return fmt.Errorf("mirrored event noted as %+v, stored at %d", ref, ack.Sequence)
				}
				return nil
			}
		}
		return fmt.Errorf("mirrored event not noted: %+v", r.Events)
	})
	if !rec.Terminal || rec.Status != krea.StatusCompleted {
		t.Fatalf("a mirrored event changed the job: %+v", rec)
	}
}

func TestTerminalBeforeSubmitted(t *testing.T) {
	e := setup(t, time.Minute, time.Hour)
	e.recorder()
	rid, jid := "req-fast", uuid.NewString()
	// The webhook beat the submitter's event (another program calls Krea
	// itself and only publishes the event).
	e.publish(rid, jid, krea.StatusCompleted, events.SourceWebhook, "")
	e.drained()
	e.publish(rid, jid, events.StatusSubmitted, events.SourceSubmitter, `{"k":1}`)
	e.drained()
	rec, err := e.l.Job(e.ctx, jid)
	if err != nil || !rec.Terminal || rec.Status != krea.StatusCompleted || rec.RequestID != rid {
		t.Fatalf("record %+v, %v", rec, err)
	}
	if o := e.open(); o.Len() != 0 {
		t.Fatalf("a terminal job is open: %+v", o.Pending(time.Now().Add(time.Hour), 0))
	}
}

// TestForeignAndExtra: a job the ledger gives to another request is
// foreign; a job of a request that has another job is extra, not foreign.
func TestForeignAndExtra(t *testing.T) {
	e := setup(t, time.Minute, time.Hour)
	owners := e.l.Owners(0)
	ridA, jidA := "req-A", uuid.NewString()
	if err := e.l.RecordSubmission(e.ctx, Record{RequestID: ridA, JobID: jidA, Metadata: json.RawMessage(`{"a":1}`)}); err != nil {
		t.Fatal(err)
	}
	// Another request's valid token naming A's job.
	if o := lookup(t, owners, "req-B", jidA); !o.Foreign || o.Metadata != nil {
		t.Fatalf("lookup(B, jobA) = %+v, want foreign without metadata", o)
	}
	// A's token naming another job: a second (paid) job of A.
	if o := lookup(t, owners, ridA, uuid.NewString()); o.Foreign || !o.Extra || string(o.Metadata) != `{"a":1}` {
		t.Fatalf("lookup(A, other job) = %+v, want extra with A's metadata", o)
	}
	// Unknown pair: neither (a webhook faster than the submitter's write).
	ridC, jidC := "req-C", uuid.NewString()
	if o := lookup(t, owners, ridC, jidC); o.Foreign || o.Terminal || o.Extra {
		t.Fatalf("unknown pair %+v", o)
	}
	// Once the bridge stored a terminal event for it, the pair is known
	// without a read, for this request and against others.
	owners.Stored(ridC, jidC, krea.StatusCompleted, Ownership{})
	if o := lookup(t, owners, ridC, jidC); o.Foreign || !o.Terminal {
		t.Fatalf("stored pair %+v", o)
	}
	if o := lookup(t, owners, "req-D", jidC); !o.Foreign {
		t.Fatalf("stored job with another request %+v", o)
	}
	// A rejected request's job is extra too: its one outcome was the
	// rejection.
	if err := e.l.PutRejection(e.ctx, Record{RequestID: "req-R", Reason: "x"}); err != nil {
		t.Fatal(err)
	}
	if o := lookup(t, owners, "req-R", uuid.NewString()); !o.Extra || o.Foreign {
		t.Fatalf("job of a rejected request %+v", o)
	}
}

// TestEvidenceLinksUncertainRequest: a webhook for a job the ledger lacks,
// carrying a request's token, settles that request when its call's answer
// was lost; when the request has another job, the event's job is extra.
func TestEvidenceLinksUncertainRequest(t *testing.T) {
	e := setup(t, time.Minute, time.Hour)
	e.recorder()
	rid := "req-lost"
	if _, err := e.l.PutRequestAt(e.ctx, Record{RequestID: rid, Status: StatusUncertain, Attempt: 1, IntentAt: time.Now(),
		Metadata: json.RawMessage(`{"m":1}`)}, 0); err != nil {
		t.Fatal(err)
	}
	jid := uuid.NewString()
	e.publish(rid, jid, krea.StatusCompleted, events.SourceWebhook, `{"m":1}`)
	e.drained()
	req, err := e.l.Request(e.ctx, rid)
	if err != nil || req.Status != events.StatusSubmitted || req.JobID != jid || req.Attempt != 1 {
		t.Fatalf("request after the webhook: %+v, %v", req, err)
	}
	if job, _ := e.l.Job(e.ctx, jid); job == nil || job.Extra || !job.Terminal {
		t.Fatalf("job %+v", job)
	}
	// A second job's webhook for the same request: stored as extra.
	jid2 := uuid.NewString()
	e.publish(rid, jid2, krea.StatusCompleted, events.SourceWebhook, `{"m":1}`)
	e.drained()
	if job, _ := e.l.Job(e.ctx, jid2); job == nil || !job.Extra || job.RequestID != rid {
		t.Fatalf("second job %+v", job)
	}
	if req, _ := e.l.Request(e.ctx, rid); req.JobID != jid {
		t.Fatalf("request's job changed: %+v", req)
	}
	// A running job first heard of from a non-terminal webhook (another
	// uncertain request): linked, and on the open list so that the
	// reconciler polls it should its terminal webhook be lost.
	if _, err := e.l.PutRequestAt(e.ctx, Record{RequestID: "req-running", Status: StatusUncertain, Attempt: 1, IntentAt: time.Now()}, 0); err != nil {
		t.Fatal(err)
	}
	running := uuid.NewString()
	e.publish("req-running", running, krea.StatusProcessing, events.SourceWebhook, "")
	e.drained()
	if req, _ := e.l.Request(e.ctx, "req-running"); req == nil || req.JobID != running {
		t.Fatalf("running job not linked: %+v", req)
	}
	if o := e.open(); o.Len() != 1 {
		t.Fatalf("open list holds %d jobs, want the running one", o.Len())
	}
	// An unknown request (a program calling Krea itself): left alone.
	jid3 := uuid.NewString()
	e.publish("req-elsewhere", jid3, krea.StatusCompleted, events.SourceWebhook, "")
	e.drained()
	if _, err := e.l.Request(e.ctx, "req-elsewhere"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("request record made from a webhook: %v", err)
	}
}

// TestLateDuplicateBeyondWindow: a terminal webhook repeated after the
// stream's duplicate window is no longer caught by JetStream, but the ledger
// still knows the job is terminal, in this process and in a fresh one.
func TestLateDuplicateBeyondWindow(t *testing.T) {
	const window = time.Second
	e := setup(t, window, time.Hour)
	e.recorder()
	owners := e.l.Owners(0)
	rid, jid := "req-late", uuid.NewString()
	first := time.Now()
	if ack := e.publish(rid, jid, krea.StatusCompleted, events.SourceWebhook, ""); ack.Duplicate {
		t.Fatal("first terminal event reported duplicate")
	}
	owners.Stored(rid, jid, krea.StatusCompleted, Ownership{})
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
	for name, o := range map[string]*Owners{"same": owners, "fresh": e.l.Owners(0), "uncached": e.l.Owners(-1)} {
		if own := lookup(t, o, rid, jid); !own.Terminal || own.Foreign {
			t.Fatalf("%s index: %+v, want terminal", name, own)
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
	owners := e.l.Owners(-1)
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
			o, err := owners.Lookup(e.ctx, fmt.Sprintf("req-%d", i), id)
			if err != nil || !o.Terminal || o.Foreign || string(o.Metadata) != `{"i":1}` {
				return fmt.Errorf("job %d: %+v %v", i, o, err)
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
	if o := e.open(); o.Len() != 0 {
		t.Fatalf("%d jobs still open after their terminal events", o.Len())
	}
}

// TestOpenJobs: the open list holds submitted jobs until their terminal
// event, survives a fresh watch, and lists what is overdue, oldest first.
func TestOpenJobs(t *testing.T) {
	e := setup(t, time.Minute, time.Hour)
	r, err := NewRecorder(e.l, nil)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	old := now.Add(-10 * time.Minute).UTC()
	jOld, jNew, jDone := uuid.NewString(), uuid.NewString(), uuid.NewString()
	for _, s := range []struct {
		rid, jid string
		at       time.Time
	}{{"r-old", jOld, old}, {"r-new", jNew, now}, {"r-done", jDone, old.Add(time.Second)}} {
		if err := e.l.RecordSubmission(e.ctx, Record{RequestID: s.rid, JobID: s.jid, Path: "/styles/train", SubmittedAt: s.at,
			Metadata: json.RawMessage(`{"x":1}`)}); err != nil {
			t.Fatal(err)
		}
	}
	o := e.open()
	if got := o.Pending(now, 5*time.Minute); len(got) != 3-1 || got[0].JobID != jOld || got[1].JobID != jDone {
		t.Fatalf("pending %+v", got)
	}
	if _, err := r.Apply(e.ctx, &events.Event{JobID: jDone, RequestID: "r-done", Status: krea.StatusCompleted}); err != nil {
		t.Fatal(err)
	}
	var got []Record
	natstest.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		got = o.Pending(now, 5*time.Minute)
		if len(got) != 1 || got[0].JobID != jOld {
			return fmt.Errorf("pending %d: %+v", len(got), got)
		}
		return nil
	})
	if got[0].RequestID != "r-old" || got[0].Path != "/styles/train" || string(got[0].Metadata) != `{"x":1}` || !got[0].SubmittedAt.Equal(old) {
		t.Fatalf("pending %+v", got)
	}
	if got := o.Pending(now, time.Hour); len(got) != 0 {
		t.Fatalf("pending with a long grace %+v", got)
	}
	// A fresh watch (a restarted submitter) loads the two open jobs only.
	if o2 := e.open(); o2.Len() != 2 {
		t.Fatalf("fresh open list holds %d jobs, want 2", o2.Len())
	}
	o.Forget(jOld)
	if o.Len() != 1 {
		t.Fatalf("forget: %d left", o.Len())
	}
}

// TestOpenWatchIgnoresHistory: the open-jobs watch reads open.> only, so
// jobs that ended (and everything else the bucket keeps) cost it nothing.
func TestOpenWatchIgnoresHistory(t *testing.T) {
	e := setup(t, time.Minute, time.Hour)
	r, err := NewRecorder(e.l, nil)
	if err != nil {
		t.Fatal(err)
	}
	const settled, open = 300, 3
	for i := range settled + open {
		rid, jid := fmt.Sprintf("r-%d", i), uuid.NewString()
		if err := e.l.RecordSubmission(e.ctx, Record{RequestID: rid, JobID: jid}); err != nil {
			t.Fatal(err)
		}
		if i < settled {
			if _, err := r.Apply(e.ctx, &events.Event{JobID: jid, RequestID: rid, Status: krea.StatusCompleted}); err != nil {
				t.Fatal(err)
			}
		}
	}
	o := e.open()
	if o.Len() != open {
		t.Fatalf("open list %d, want %d", o.Len(), open)
	}
	// What the watch read: the open keys, plus the purge markers of the
	// jobs that ended within the marker TTL (they expire after it).
	st, err := e.l.KeyValue().Status(e.ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("bucket holds %d values; open list %d", st.Values(), o.Len())
}

// TestTTL: entries leave the bucket after the TTL.
func TestTTL(t *testing.T) {
	e := setup(t, time.Second, 3*time.Second)
	jid := uuid.NewString()
	if err := e.l.RecordSubmission(e.ctx, Record{RequestID: "r-ttl", JobID: jid}); err != nil {
		t.Fatal(err)
	}
	o := e.open()
	if o.Len() != 1 {
		t.Fatalf("open %d", o.Len())
	}
	natstest.CheckFor(t, 15*time.Second, 50*time.Millisecond, func() error {
		if _, err := e.l.Request(e.ctx, "r-ttl"); !errors.Is(err, ErrNotFound) {
			return fmt.Errorf("request record still there: %v", err)
		}
		if _, err := e.l.Job(e.ctx, jid); !errors.Is(err, ErrNotFound) {
			return fmt.Errorf("job record still there: %v", err)
		}
		if o.Len() != 0 {
			return errors.New("expired open key still listed")
		}
		return nil
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
	// An uncertain request can be rejected; its attempt count stays.
	if _, err := e.l.PutRequestAt(e.ctx, Record{RequestID: "unc-1", Status: StatusUncertain, Attempt: 2}, 0); err != nil {
		t.Fatal(err)
	}
	if err := e.l.PutRejection(e.ctx, Record{RequestID: "unc-1", Reason: "uncertain"}); err != nil {
		t.Fatal(err)
	}
	if got, _ := e.l.Request(e.ctx, "unc-1"); got.Status != events.StatusRejected || got.Attempt != 2 {
		t.Fatalf("rejected uncertain request %+v", got)
	}
	// A request recorded with a job must not be rejected: the conflict names the job.
	jid := uuid.NewString()
	if err := e.l.RecordSubmission(e.ctx, Record{RequestID: "sub-1", JobID: jid}); err != nil {
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

// TestJobCacheBounded: the bridge's cache never holds more than its size,
// keeps what is used, never un-terminals a job, and copies what it keeps.
func TestJobCacheBounded(t *testing.T) {
	c := newJobCache(256)
	hot := uuid.NewString()
	md := []byte(`{"m":1}`)
	c.put(hot, jobFacts{owner: "r", metadata: md})
	md[2] = 'x' // the caller's buffer is reused
	for i := range 10_000 {
		c.put(uuid.NewString(), jobFacts{owner: "r"})
		f, ok := c.get(hot)
		if !ok {
			t.Fatalf("hot entry evicted after %d puts", i)
		}
		if f.owner != "r" || string(f.metadata) != `{"m":1}` {
			t.Fatalf("hot entry %+v", f)
		}
	}
	if n := c.len(); n > 256 {
		t.Fatalf("cache holds %d entries, bound 256", n)
	}
	c.put(hot, jobFacts{owner: "r", terminal: true, extra: true})
	c.put(hot, jobFacts{owner: "r"})
	if f, _ := c.get(hot); !f.terminal || !f.extra {
		t.Fatalf("terminal entry replaced by an older one: %+v", f)
	}
	if f, _ := c.get(strings.ToUpper(hot)); !f.terminal {
		t.Fatal("the key is the UUID, whatever its letter case")
	}
	c.put("not-a-uuid", jobFacts{owner: "r"})
	if _, ok := c.get("not-a-uuid"); ok {
		t.Fatal("a job ID that is not a UUID was cached")
	}
	c.remove(hot)
	if _, ok := c.get(hot); ok {
		t.Fatal("removed entry still cached")
	}
	none := newJobCache(-1)
	none.put(hot, jobFacts{owner: "r"})
	if _, ok := none.get(hot); ok {
		t.Fatal("a disabled cache keeps entries")
	}
}

// TestJobCacheMemory: what a full cache of jobs (UUID owners, 45-byte
// metadata) costs in heap.
func TestJobCacheMemory(t *testing.T) {
	const n = DefaultCacheSize
	ids := make([]string, n)
	for i := range ids {
		ids[i] = uuid.NewString()
	}
	md := json.RawMessage(`{"user":"u-4812","campaign":"spring-launch"}`)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	c := newJobCache(n)
	for _, id := range ids {
		c.put(id, jobFacts{owner: id, metadata: md})
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	per := float64(after.HeapAlloc-before.HeapAlloc) / float64(c.len())
	t.Logf("%d jobs cached: %.0f bytes each, %d heap objects in all", c.len(), per, int64(after.HeapObjects)-int64(before.HeapObjects))
	if per > 200 {
		t.Errorf("%.0f bytes per cached job, want at most 200", per)
	}
	runtime.KeepAlive(c)
}

func BenchmarkLookupCached(b *testing.B) {
	c := newJobCache(DefaultCacheSize)
	ids := make([]string, 1024)
	for i := range ids {
		ids[i] = uuid.NewString()
		c.put(ids[i], jobFacts{owner: "r1", terminal: true})
	}
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			f, _ := c.get(ids[i%len(ids)])
			_ = f.ownership("r1")
			i++
		}
	})
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
	// Claims are no open jobs.
	o := e.open()
	if n := o.Len(); n != 0 {
		t.Fatalf("open list holds %d jobs after claims", n)
	}
}

// TestOwnersFollow: job records written while an Owners follows them are
// answered from memory, terminal states included; a bucket made without
// the RePublish gets it when a program allowed to create opens it.
func TestOwnersFollow(t *testing.T) {
	e := setup(t, time.Minute, time.Hour)
	r, err := NewRecorder(e.l, nil)
	if err != nil {
		t.Fatal(err)
	}
	owners := e.l.Owners(0)
	ctx, stop := context.WithCancel(e.ctx)
	defer stop()
	if err := owners.Follow(ctx); err != nil {
		t.Fatal(err)
	}
	rid, jid := "req-f", uuid.NewString()
	md := `{"f":1}`
	if err := e.l.RecordSubmission(e.ctx, Record{RequestID: rid, JobID: jid, Metadata: json.RawMessage(md)}); err != nil {
		t.Fatal(err)
	}
	wait := func(what string, ok func(Ownership) bool, requestID string) Ownership {
		t.Helper()
		var own Ownership
		natstest.CheckFor(t, 5*time.Second, 5*time.Millisecond, func() error {
			own = lookup(t, owners, requestID, jid)
			if !own.Cached || !ok(own) {
				return fmt.Errorf("%s: %+v", what, own)
			}
			return nil
		})
		return own
	}
	wait("running job from memory", func(o Ownership) bool { return !o.Terminal && !o.Foreign && string(o.Metadata) == md }, rid)
	if o := lookup(t, owners, "req-other", jid); !o.Cached || !o.Foreign {
		t.Fatalf("another request's token from memory: %+v", o)
	}
	if _, err := r.Apply(e.ctx, &events.Event{JobID: jid, RequestID: rid, Status: krea.StatusCompleted}); err != nil {
		t.Fatal(err)
	}
	wait("terminal from memory", func(o Ownership) bool { return o.Terminal }, rid)
	// An older record arriving late never un-terminals the cached job.
	owners.cache.put(jid, jobFacts{owner: rid})
	if o := lookup(t, owners, rid, jid); !o.Terminal {
		t.Fatalf("terminal entry replaced by an older one: %+v", o)
	}

	// A bucket made by hand without the RePublish.
	js := e.js
	if _, err := js.CreateKeyValue(e.ctx, jetstream.KeyValueConfig{Bucket: "LEGACY_LEDGER", History: 1, TTL: time.Hour}); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(e.ctx, js, Config{Bucket: "LEGACY_LEDGER", TTL: time.Hour}); err != nil {
		t.Fatal(err)
	}
	st, _ := js.Stream(e.ctx, "KV_LEGACY_LEDGER")
	if st.CachedInfo().Config.RePublish != nil {
		t.Fatal("opened without Create, yet the stream was changed")
	}
	if _, err := Open(e.ctx, js, Config{Bucket: "LEGACY_LEDGER", TTL: time.Hour, Create: true}); err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(e.ctx)
	if err != nil {
		t.Fatal(err)
	}
	if rp := info.Config.RePublish; rp == nil || rp.Destination != JobChangesSubject("LEGACY_LEDGER") {
		t.Fatalf("RePublish %+v", rp)
	}
}
