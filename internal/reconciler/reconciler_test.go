package reconciler

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go/jetstream"
	dto "github.com/prometheus/client_model/go"

	"github.com/kreabus/kreabus/internal/accountpause"
	"github.com/kreabus/kreabus/internal/ledger"
	"github.com/kreabus/kreabus/internal/ledger/ledgertest"
	"github.com/kreabus/kreabus/internal/natstest"
	"github.com/kreabus/kreabus/pkg/events"
	"github.com/kreabus/kreabus/pkg/krea"
	"github.com/kreabus/kreabus/pkg/krea/kreatest"
)

const flux = "/generate/image/bfl/flux-1-dev"

// env is one NATS server with KREA_JOBS and the ledger bucket, a Krea
// simulator, and any number of kreabus "replicas" (ledger, recorder, open list,
// reconciler, and a minimal bridge).
type env struct {
	t   *testing.T
	ctx context.Context
	url string
	js  jetstream.JetStream
	sim *kreatest.Server
	tok *events.Tokenizer
	// pause, when set, is the account pause replicas share.
	pause AccountPause
}

func newEnv(t *testing.T, dup time.Duration, sim kreatest.Config) *env {
	t.Helper()
	s, _, js := natstest.JetStream(t)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	if _, err := events.EnsureStream(ctx, js, events.JobsStreamConfig(events.StreamOptions{DuplicateWindow: dup})); err != nil {
		t.Fatal(err)
	}
	sim.Logf = t.Logf
	srv := kreatest.NewServer(sim)
	t.Cleanup(srv.Close)
	tok, err := events.NewTokenizer("test-secret", "")
	if err != nil {
		t.Fatal(err)
	}
	return &env{t: t, ctx: ctx, url: s.ClientURL(), js: js, sim: srv, tok: tok}
}

// replica is one kreabus process: its own NATS connection, ledger, open list,
// recorder, reconciler and bridge.
type replica struct {
	e      *env
	js     jetstream.JetStream
	l      *ledger.Ledger
	owners *ledger.Owners
	open   *ledger.OpenJobs
	rec    *ledger.Recorder
	rc     *Reconciler
	bridge *httptest.Server
	// bridge answers
	published, duplicates, foreign atomic.Int64
}

func (e *env) replica(cfg Config, client JobGetter) *replica {
	t := e.t
	t.Helper()
	_, js := natstest.ConnectJetStream(t, e.url)
	ctx, cancel := context.WithCancel(e.ctx)
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	l, err := ledger.Open(ctx, js, ledger.Config{TTL: 24 * time.Hour, Create: true, Workers: 4, AckWait: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	rec, err := ledger.NewRecorder(l, nil)
	if err != nil {
		t.Fatal(err)
	}
	wg.Go(func() {
		if err := rec.Run(ctx); err != nil {
			t.Errorf("recorder: %v", err)
		}
	})
	open := l.WatchOpen(ctx)
	wg.Go(func() { <-open.Done() })
	if client == nil {
		client = e.sim.NewClient()
	}
	rc, err := New(cfg, Deps{
		JetStream: js, Krea: client, Open: open, Store: l, Claims: l,
		Ready: func() bool { return rec.Synced() && open.Ready() },
		Pause: e.pause,
	})
	if err != nil {
		t.Fatal(err)
	}
	wg.Go(func() {
		if err := rc.Run(ctx); err != nil {
			t.Errorf("reconciler: %v", err)
		}
	})
	r := &replica{e: e, js: js, l: l, owners: l.Owners(0), open: open, rec: rec, rc: rc}
	r.bridge = httptest.NewServer(http.HandlerFunc(r.webhook))
	t.Cleanup(r.bridge.Close)
	return r
}

// webhook is a minimal bridge: token, ownership, duplicate check, publish,
// Stored. The real one lives in internal/bridge.
func (r *replica) webhook(w http.ResponseWriter, req *http.Request) {
	rid, err := r.e.tok.Verify(strings.TrimPrefix(req.URL.Path, events.WebhookPathPrefix))
	if err != nil {
		http.Error(w, `{"error":"bad token"}`, http.StatusUnauthorized)
		return
	}
	body, _ := io.ReadAll(req.Body)
	job, err := krea.ParseJob(body)
	if err != nil {
		http.Error(w, `{"error":"bad job"}`, http.StatusBadRequest)
		return
	}
	own, err := r.owners.Lookup(req.Context(), rid, job.JobID)
	switch {
	case err != nil:
		http.Error(w, `{"error":"ledger unavailable"}`, http.StatusServiceUnavailable)
		return
	case own.Foreign:
		r.foreign.Add(1)
		http.Error(w, `{"error":"foreign"}`, http.StatusForbidden)
		return
	case own.Terminal && job.Status.IsTerminal():
		r.duplicates.Add(1)
		fmt.Fprintf(w, `{"job_id":%q,"status":%q,"duplicate":true}`, job.JobID, job.Status)
		return
	}
	msg := events.NewJobMsg(events.EventHeaders{JobID: job.JobID, Status: job.Status, RequestID: rid,
		Source: events.SourceWebhook, Metadata: own.Metadata}, body)
	ack, err := r.js.PublishMsg(req.Context(), msg)
	if err != nil {
		http.Error(w, `{"error":"unavailable"}`, http.StatusServiceUnavailable)
		return
	}
	r.owners.Stored(rid, job.JobID, job.Status, own)
	if ack.Duplicate {
		r.duplicates.Add(1)
	} else {
		r.published.Add(1)
	}
	fmt.Fprintf(w, `{"job_id":%q,"status":%q,"duplicate":%v}`, job.JobID, job.Status, ack.Duplicate)
}

// submit does what the submitter does: call the API with a webhook URL,
// record the request, publish the submitted event.
func (r *replica) submit(prompt string) (requestID, jobID string) {
	t := r.e.t
	t.Helper()
	rid := events.NewRequestID()
	input, _ := json.Marshal(map[string]string{"prompt": prompt})
	res, err := r.e.sim.NewClient().Submit(r.e.ctx, flux, input, krea.WithWebhook(r.e.tok.URL(r.bridge.URL, rid)))
	if err != nil {
		t.Fatal(err)
	}
	r.record(rid, res.Job.JobID, res.Job.Raw)
	return rid, res.Job.JobID
}

// record writes the ledger and the submitted event for a job.
func (r *replica) record(rid, jid string, body []byte) {
	t := r.e.t
	t.Helper()
	md := json.RawMessage(fmt.Sprintf(`{"request":%q}`, rid))
	if err := r.l.RecordSubmission(r.e.ctx, ledger.Record{RequestID: rid, JobID: jid, Path: flux, Metadata: md}); err != nil {
		t.Fatal(err)
	}
	msg := events.NewJobMsg(events.EventHeaders{JobID: jid, Status: events.StatusSubmitted, RequestID: rid,
		Source: events.SourceSubmitter, Metadata: md}, body)
	if _, err := r.js.PublishMsg(r.e.ctx, msg); err != nil {
		t.Fatal(err)
	}
}

// stored is a job event as stored in KREA_JOBS.
type stored struct {
	subject string
	msgID   string
	ev      *events.Event
}

// terminalEvents returns the terminal events of KREA_JOBS by job ID.
func (e *env) terminalEvents() map[string][]stored {
	e.t.Helper()
	s, err := e.js.Stream(e.ctx, events.StreamJobs)
	if err != nil {
		e.t.Fatal(err)
	}
	info, err := s.Info(e.ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	out := map[string][]stored{}
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		m, err := s.GetMsg(e.ctx, seq)
		if err != nil {
			e.t.Fatal(err)
		}
		ev, err := events.DecodeEvent(m.Subject, m.Header, m.Data)
		if err != nil {
			e.t.Fatalf("seq %d: %v", seq, err)
		}
		if ev.Status.IsTerminal() {
			out[ev.JobID] = append(out[ev.JobID], stored{m.Subject, m.Header.Get(events.HeaderMsgID), ev})
		}
	}
	return out
}

// waitTerminal waits until every job has a terminal event and checks that
// none has more than one.
func (e *env) waitTerminal(jobs ...string) map[string][]stored {
	e.t.Helper()
	var got map[string][]stored
	natstest.CheckFor(e.t, 20*time.Second, 20*time.Millisecond, func() error {
		got = e.terminalEvents()
		for _, j := range jobs {
			if len(got[j]) == 0 {
				return fmt.Errorf("job %s has no terminal event yet", j)
			}
		}
		return nil
	})
	e.exactlyOne(got, jobs...)
	return got
}

func (e *env) exactlyOne(got map[string][]stored, jobs ...string) {
	e.t.Helper()
	for _, j := range jobs {
		if n := len(got[j]); n != 1 {
			e.t.Fatalf("job %s has %d terminal events: %+v", j, n, got[j])
		}
		if id := got[j][0].msgID; id != j {
			e.t.Fatalf("job %s: Nats-Msg-Id %q", j, id)
		}
	}
}

// elapse waits until d has passed, to let several scans run.
func elapse(t *testing.T, d time.Duration) {
	t.Helper()
	start := time.Now()
	natstest.CheckFor(t, d+5*time.Second, 10*time.Millisecond, func() error {
		if time.Since(start) < d {
			return errors.New("waiting")
		}
		return nil
	})
}

func counter(r *Reconciler, outcome string) float64 {
	var m dto.Metric
	_ = r.polls.WithLabelValues(outcome).Write(&m)
	return m.GetCounter().GetValue()
}

// fast is a configuration for tests: short grace, scans and backoffs.
func fast() Config {
	return Config{
		WebhookGrace: 300 * time.Millisecond,
		MaxBackoff:   400 * time.Millisecond,
		Rate:         200,
		Concurrency:  8,
		JobMaxAge:    time.Hour,
		Interval:     25 * time.Millisecond,
	}
}

func TestConfig(t *testing.T) {
	var c Config
	c.SetDefaults()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if c.WebhookGrace != 5*time.Minute || c.JobMaxAge != 3*time.Hour || c.Rate != 5 || c.MaxBackoff != 5*time.Minute {
		t.Fatalf("defaults %+v", c)
	}
	if _, err := New(Config{}, Deps{JetStream: nopJS{}, Krea: nopKrea{}}); err == nil ||
		!strings.Contains(err.Error(), "Open and Store are required") {
		t.Fatalf("missing open list and store: %v", err)
	}
	bad := []Config{{Rate: -1}, {Concurrency: -1}, {WebhookGrace: time.Hour, JobMaxAge: time.Minute}, {MaxBackoff: time.Millisecond}}
	for _, c := range bad {
		c.SetDefaults()
		if err := c.Validate(); err == nil {
			t.Errorf("%+v: want an error", c)
		}
	}
}

// TestDroppedWebhooks: Krea never calls back; every job still ends in
// exactly one terminal event, from polling, with the API's body.
func TestDroppedWebhooks(t *testing.T) {
	e := newEnv(t, time.Minute, kreatest.Config{Faults: kreatest.Faults{DropWebhookRate: 1}, RunTime: 20 * time.Millisecond})
	r := e.replica(fast(), nil)
	var jobs []string
	failing := map[string]bool{}
	for i := range 6 {
		prompt := "a cat"
		if i%3 == 0 {
			prompt = "a cat " + kreatest.DirectiveFail
		}
		_, jid := r.submit(prompt)
		jobs = append(jobs, jid)
		failing[jid] = i%3 == 0
	}
	got := e.waitTerminal(jobs...)
	for _, j := range jobs {
		s := got[j][0]
		want := krea.StatusCompleted
		if failing[j] {
			want = krea.StatusFailed
		}
		raw, _ := e.sim.JobJSON(j)
		if s.ev.Status != want || s.ev.Source != events.SourcePoll || string(s.ev.Raw) != string(raw) ||
			s.ev.RequestID == "" || string(s.ev.Metadata) != fmt.Sprintf(`{"request":%q}`, s.ev.RequestID) || s.ev.Reason != "" {
			t.Fatalf("job %s event %+v (body %s, api %s)", j, s.ev, s.ev.Raw, raw)
		}
	}
	if n := counter(r.rc, OutcomeTerminal); n < float64(len(jobs)) {
		t.Fatalf("terminal polls %v", n)
	}
	// The ledger settles, and the reconciler stops polling.
	natstest.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		for _, j := range jobs {
			if rec, err := r.l.Job(e.ctx, j); err != nil || !rec.Terminal {
				return fmt.Errorf("job %s not terminal in the ledger: %+v %v", j, rec, err)
			}
		}
		if p := r.open.Pending(time.Now(), 0); len(p) != 0 {
			return fmt.Errorf("%d still pending", len(p))
		}
		return nil
	})
	before := e.sim.Requests()
	elapse(t, 300*time.Millisecond)
	if after := e.sim.Requests(); after != before {
		t.Fatalf("%d more API calls after every job settled", after-before)
	}
}

// TestWebhooksArriveNoPolls: with working webhooks, the reconciler stays
// quiet.
func TestWebhooksArriveNoPolls(t *testing.T) {
	e := newEnv(t, time.Minute, kreatest.Config{RunTime: 10 * time.Millisecond})
	cfg := fast()
	cfg.WebhookGrace = 2 * time.Second
	r := e.replica(cfg, nil)
	var jobs []string
	for range 4 {
		_, jid := r.submit("a dog")
		jobs = append(jobs, jid)
	}
	got := e.waitTerminal(jobs...)
	for _, j := range jobs {
		if got[j][0].ev.Source != events.SourceWebhook {
			t.Fatalf("job %s from %s", j, got[j][0].ev.Source)
		}
	}
	elapse(t, 2500*time.Millisecond)
	for _, o := range []string{OutcomeTerminal, OutcomeNonTerminal, OutcomeNotFound} {
		if n := counter(r.rc, o); n != 0 {
			t.Fatalf("%s polls: %v", o, n)
		}
	}
}

// TestNotFound: a job Krea does not know ends in one failed event.
func TestNotFound(t *testing.T) {
	e := newEnv(t, time.Minute, kreatest.Config{})
	r := e.replica(fast(), nil)
	jid := uuid.NewString()
	rid := events.NewRequestID()
	r.record(rid, jid, []byte(fmt.Sprintf(`{"job_id":%q,"status":"queued","created_at":"2026-02-13T02:20:58.265Z","completed_at":null,"result":null}`, jid)))
	got := e.waitTerminal(jid)
	s := got[jid][0]
	if s.subject != "krea.jobs.failed" || s.ev.Source != events.SourcePoll || !strings.Contains(s.ev.Reason, "404") || s.ev.RequestID != rid {
		t.Fatalf("event %+v", s.ev)
	}
	if s.ev.Job.Error == nil || s.ev.Job.Error.Code != CodeNotFound || s.ev.Job.JobID != jid || s.ev.Job.Status != krea.StatusFailed {
		t.Fatalf("body %s", s.ev.Raw)
	}
	if _, err := krea.ParseJob(s.ev.Raw); err != nil {
		t.Fatalf("synthesised body is not a valid job: %v", err)
	}
	elapse(t, 300*time.Millisecond)
	e.exactlyOne(e.terminalEvents(), jid)
	if n := counter(r.rc, OutcomeNotFound); n != 1 {
		t.Fatalf("not_found polls %v", n)
	}
}

// TestMaxAge: a job that stays processing ends failed after the maximum age.
func TestMaxAge(t *testing.T) {
	e := newEnv(t, time.Minute, kreatest.Config{RunTime: time.Hour})
	cfg := fast()
	cfg.JobMaxAge = 3 * time.Second // room for a poll before it, on a loaded machine
	r := e.replica(cfg, nil)
	_, jid := r.submit("a slow video")
	got := e.waitTerminal(jid)
	s := got[jid][0]
	if s.subject != "krea.jobs.failed" || !strings.Contains(s.ev.Reason, "KREABUS_JOB_MAX_AGE") ||
		s.ev.Job.Error == nil || s.ev.Job.Error.Code != CodeMaxAge || s.ev.Job.CreatedAt == nil {
		t.Fatalf("event %+v body %s", s.ev, s.ev.Raw)
	}
	if n := counter(r.rc, OutcomeNonTerminal); n < 1 {
		t.Fatalf("job was not polled before it expired: %v", n)
	}
	// Krea finishing it later changes nothing: the bridge sees it settled.
	if err := e.sim.Finish(jid, krea.StatusCompleted, ""); err != nil {
		t.Fatal(err)
	}
	natstest.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		if r.duplicates.Load() == 0 {
			return errors.New("late webhook not answered as duplicate yet")
		}
		return nil
	})
	e.exactlyOne(e.terminalEvents(), jid)
}

// TestLateAndDuplicateWebhooksBeyondWindow: webhooks come late (after the
// poll published) and twice, past a 1 s duplicate window; the ledger alone
// keeps each job to one terminal event.
func TestLateAndDuplicateWebhooksBeyondWindow(t *testing.T) {
	const window = time.Second
	e := newEnv(t, window, kreatest.Config{RunTime: 10 * time.Millisecond, Faults: kreatest.Faults{
		LateWebhookRate: 1, LateWebhookDelay: 5 * time.Second, DuplicateWebhookRate: 1,
	}})
	cfg := fast()
	cfg.WebhookGrace = 100 * time.Millisecond
	r := e.replica(cfg, nil)
	var jobs []string
	for range 4 {
		_, jid := r.submit("a late bird")
		jobs = append(jobs, jid)
	}
	first := e.waitTerminal(jobs...)
	for _, j := range jobs {
		if first[j][0].ev.Source != events.SourcePoll {
			t.Fatalf("job %s: first terminal event from %s, want poll", j, first[j][0].ev.Source)
		}
	}
	// Both deliveries of every webhook, each answered 2xx.
	natstest.CheckFor(t, 15*time.Second, 20*time.Millisecond, func() error {
		ok := 0
		for _, d := range e.sim.WebhookDeliveries() {
			if d.Succeeded() {
				ok++
			} else if d.StatusCode != 0 {
				return fmt.Errorf("webhook for %s answered %d", d.JobID, d.StatusCode)
			}
		}
		if ok < 2*len(jobs) {
			return fmt.Errorf("%d of %d webhook deliveries done", ok, 2*len(jobs))
		}
		return nil
	})
	e.exactlyOne(e.terminalEvents(), jobs...)
	if d := r.duplicates.Load(); d != int64(2*len(jobs)) {
		t.Fatalf("bridge answered %d duplicates, want %d", d, 2*len(jobs))
	}
}

// TestRaceWebhookVsPoll publishes the same terminal event both ways at
// once, many times over: exactly one lands per job.
func TestRaceWebhookVsPoll(t *testing.T) {
	e := newEnv(t, time.Minute, kreatest.Config{RunTime: 10 * time.Millisecond, Faults: kreatest.Faults{DropWebhookRate: 1}})
	cfg := fast()
	cfg.WebhookGrace = time.Hour // no polling of its own: the test drives it
	cfg.JobMaxAge = 2 * time.Hour
	r := e.replica(cfg, nil)
	const n = 20
	jobs := make([]string, n)
	rids := make([]string, n)
	for i := range n {
		rids[i], jobs[i] = r.submit("a race")
	}
	natstest.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		for _, j := range jobs {
			if job, _ := e.sim.Job(j); !job.Status.IsTerminal() {
				return fmt.Errorf("job %s still %s", j, job.Status)
			}
		}
		return nil
	})
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i, j := range jobs {
		raw, _ := e.sim.JobJSON(j)
		rec := ledger.Record{RequestID: rids[i], JobID: j, SubmittedAt: time.Now()}
		r.rc.mu.Lock()
		r.rc.jobs[j] = &jobState{inFlight: true}
		r.rc.mu.Unlock()
		wg.Go(func() {
			<-start
			if i%2 == 0 {
				r.rc.poll(e.ctx, rec) // the whole poll: GET, checks, publish
			} else {
				r.rc.publish(e.ctx, rec, krea.StatusCompleted, raw, "") // just the publish
			}
		})
		wg.Go(func() {
			<-start
			resp, err := http.Post(r.e.tok.URL(r.bridge.URL, rids[i]), "application/json", strings.NewReader(string(raw)))
			if err != nil {
				t.Error(err)
				return
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Errorf("webhook answered %d", resp.StatusCode)
			}
		})
	}
	close(start)
	wg.Wait()
	got := e.waitTerminal(jobs...)
	sources := map[events.Source]int{}
	for _, j := range jobs {
		sources[got[j][0].ev.Source]++
	}
	t.Logf("winners: %v", sources)
}

// TestReplicas: two replicas poll the same dropped-webhook jobs; each job
// still ends in exactly one terminal event.
func TestReplicas(t *testing.T) {
	e := newEnv(t, time.Minute, kreatest.Config{RunTime: 10 * time.Millisecond, Faults: kreatest.Faults{DropWebhookRate: 1}})
	cfg := fast()
	cfg.WebhookGrace = 100 * time.Millisecond
	a := e.replica(cfg, nil)
	b := e.replica(cfg, nil)
	var jobs []string
	for i := range 10 {
		r := a
		if i%2 == 1 {
			r = b
		}
		_, jid := r.submit("twins")
		jobs = append(jobs, jid)
	}
	e.waitTerminal(jobs...)
	elapse(t, 300*time.Millisecond)
	e.exactlyOne(e.terminalEvents(), jobs...)
	// Claims share the polling: about one poll per job, not one per replica.
	polls := counter(a.rc, OutcomeTerminal) + counter(b.rc, OutcomeTerminal) +
		counter(a.rc, OutcomeNonTerminal) + counter(b.rc, OutcomeNonTerminal)
	claimed := counter(a.rc, OutcomeClaimed) + counter(b.rc, OutcomeClaimed)
	t.Logf("%d jobs: %v polls, %v left to the other replica", len(jobs), polls, claimed)
	if polls > float64(len(jobs))+3 { // without claims: 15-16
		t.Errorf("%v polls for %d jobs: replicas did not share them", polls, len(jobs))
	}
}

// TestAccountErrorPausesPolling: a 401 stops all polling for the pause.
func TestAccountErrorPausesPolling(t *testing.T) {
	e := newEnv(t, time.Minute, kreatest.Config{RunTime: time.Hour})
	bad, err := krea.NewClient("wrong-token", krea.WithBaseURL(e.sim.URL))
	if err != nil {
		t.Fatal(err)
	}
	cfg := fast()
	cfg.WebhookGrace = 50 * time.Millisecond
	cfg.Concurrency = 1
	r := e.replica(cfg, bad)
	for range 3 {
		r.submit("unpaid")
	}
	natstest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if counter(r.rc, OutcomeAccountError) == 0 {
			return errors.New("no account error yet")
		}
		return nil
	})
	before := e.sim.Requests()
	elapse(t, 500*time.Millisecond)
	if n := e.sim.Requests() - before; n > 0 {
		t.Fatalf("%d API calls during the pause", n)
	}
	if n := counter(r.rc, OutcomeAccountError); n != 1 {
		t.Fatalf("account errors %v, want 1", n)
	}
}

// TestSharedPauseStopsPolling: an account error the submitter saw (the
// shared pause tripped elsewhere) stops polling too, and a poll refused
// for the account trips it for the submitter; once the pause ends, polling
// resumes.
func TestSharedPauseStopsPolling(t *testing.T) {
	e := newEnv(t, time.Minute, kreatest.Config{RunTime: time.Hour, Faults: kreatest.Faults{DropWebhookRate: 1}})
	shared, err := accountpause.New(700*time.Millisecond, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	e.pause = shared
	cfg := fast()
	cfg.WebhookGrace = 50 * time.Millisecond
	r := e.replica(cfg, nil)
	shared.Trip(context.Background(), "402 Insufficient credits (seen by the submitter)")
	for range 3 {
		r.submit("paused")
	}
	before := e.sim.Requests()
	elapse(t, 400*time.Millisecond)
	if n := e.sim.Requests() - before; n > 0 {
		t.Fatalf("%d polls while the submitter's pause lasts", n)
	}
	natstest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if counter(r.rc, OutcomeNonTerminal) < 3 {
			return errors.New("polling did not resume after the pause")
		}
		return nil
	})

	// A poll refused for the account pauses the submitter's side too.
	bad, err := krea.NewClient("wrong-token", krea.WithBaseURL(e.sim.URL))
	if err != nil {
		t.Fatal(err)
	}
	r2 := e.replica(cfg, bad)
	natstest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if counter(r2.rc, OutcomeAccountError) == 0 {
			return errors.New("no account error yet")
		}
		return nil
	})
	if shared.Remaining() <= 0 {
		t.Fatal("a poll's account error did not trip the shared pause")
	}
}

// TestRetryableErrorsBackOff: 5xx answers are retried until they stop.
func TestRetryableErrorsBackOff(t *testing.T) {
	e := newEnv(t, time.Minute, kreatest.Config{RunTime: time.Hour, Faults: kreatest.Faults{DropWebhookRate: 1}})
	cfg := fast()
	cfg.WebhookGrace = 50 * time.Millisecond
	r := e.replica(cfg, nil)
	_, jid := r.submit("flaky")
	e.sim.SetFaults(kreatest.Faults{DropWebhookRate: 1, Rate5xx: 1})
	natstest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if counter(r.rc, OutcomeRetryableError) < 2 {
			return errors.New("fewer than 2 retryable errors")
		}
		return nil
	})
	e.sim.SetFaults(kreatest.Faults{DropWebhookRate: 1})
	if err := e.sim.Finish(jid, krea.StatusCompleted, ""); err != nil {
		t.Fatal(err)
	}
	got := e.waitTerminal(jid)
	if s := got[jid][0]; s.subject != "krea.jobs.completed" || s.ev.Source != events.SourcePoll {
		t.Fatalf("event %+v", s.ev)
	}
}

// TestForeignWebhook: a valid token for one request naming another
// request's job is refused, and publishes nothing.
func TestForeignWebhook(t *testing.T) {
	e := newEnv(t, time.Minute, kreatest.Config{RunTime: time.Hour})
	cfg := fast()
	cfg.WebhookGrace = time.Hour
	cfg.JobMaxAge = 2 * time.Hour
	r := e.replica(cfg, nil)
	_, jid := r.submit("mine")
	natstest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if _, err := r.l.Job(e.ctx, jid); err != nil {
			return err
		}
		return nil
	})
	natstest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if own, err := r.owners.Lookup(e.ctx, "other", jid); err != nil || !own.Foreign {
			return fmt.Errorf("the ledger does not give the job away: %+v %v", own, err)
		}
		return nil
	})
	body := fmt.Sprintf(`{"job_id":%q,"status":"completed","created_at":"2026-02-13T02:20:58.265Z","completed_at":"2026-02-13T02:21:58.265Z","result":{"urls":["https://gen.krea.ai/images/x.png"]}}`, jid)
	resp, err := http.Post(e.tok.URL(r.bridge.URL, events.NewRequestID()), "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Fatalf("status %d, want 403", resp.StatusCode)
	}
	if len(e.terminalEvents()[jid]) != 0 {
		t.Fatal("foreign webhook published")
	}
}

type nopJS struct{ jetstream.JetStream }

type nopKrea struct{}

func (nopKrea) GetJob(context.Context, string) (*krea.Job, error) {
	return nil, errors.New("nop")
}

type countingStore struct {
	*ledger.Ledger
	reads atomic.Int64
}

func (c *countingStore) Job(ctx context.Context, jobID string) (*ledger.Record, error) {
	c.reads.Add(1)
	return c.Ledger.Job(ctx, jobID)
}

type countingKrea struct {
	JobGetter
	polls atomic.Int64
}

func (c *countingKrea) GetJob(ctx context.Context, id string) (*krea.Job, error) {
	c.polls.Add(1)
	return c.JobGetter.GetJob(ctx, id)
}

// TestRoundTouchesDueJobsOnly: with 100 000 settled jobs in the ledger and
// 10 overdue, the reconciler's list holds the 10, a round polls the 10 and
// reads their 10 records (once before the poll, once before publishing),
// and nothing else; a round after they settled touches nothing.
func TestRoundTouchesDueJobsOnly(t *testing.T) {
	const settled, due = 100_000, 10
	_, js, led := ledgertest.Filled(t, settled, due)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	if st, err := led.KeyValue().Status(ctx); err != nil || st.Values() < 2*settled {
		t.Fatalf("bucket holds %v values (%v), want at least %d", st, err, 2*settled)
	}
	open := led.WatchOpen(ctx)
	start := time.Now()
	if err := open.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("open list of %d jobs loaded in %v from a bucket of %d jobs", open.Len(), time.Since(start), settled+due)
	if open.Len() != due {
		t.Fatalf("open list holds %d jobs, want %d", open.Len(), due)
	}
	sim := kreatest.NewServer(kreatest.Config{})
	t.Cleanup(sim.Close)
	store := &countingStore{Ledger: led}
	api := &countingKrea{JobGetter: sim.NewClient()}
	cfg := fast()
	cfg.WebhookGrace = time.Minute // the filled open jobs are an hour old
	cfg.MaxBackoff = time.Minute
	rc, err := New(cfg, Deps{JetStream: js, Krea: api, Open: open, Store: store})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	rctx, stop := context.WithCancel(ctx)
	go func() { done <- rc.Run(rctx) }()
	t.Cleanup(func() { stop(); <-done })
	// The simulator does not know the filled jobs: each poll is a 404 and
	// ends the job in one failed event, taking it off the open list.
	natstest.CheckFor(t, 20*time.Second, 10*time.Millisecond, func() error {
		if n := open.Len(); n != 0 {
			return fmt.Errorf("%d jobs still open", n)
		}
		return nil
	})
	if n := api.polls.Load(); n != due {
		t.Errorf("%d polls, want %d", n, due)
	}
	if n := store.reads.Load(); n > 2*due {
		t.Errorf("%d ledger reads for %d due jobs, want at most %d", n, due, 2*due)
	}
	reads := store.reads.Load()
	elapse(t, 10*cfg.Interval) // ten more rounds
	if n := store.reads.Load() - reads; n != 0 {
		t.Errorf("%d ledger reads in rounds with nothing due", n)
	}
	if n := api.polls.Load(); n != due {
		t.Errorf("%d polls after every job settled, want %d", n, due)
	}
}
