// Package reconciler makes every submitted job end in exactly one terminal
// event even when its webhook never comes: it polls GET /jobs/{id} for jobs
// the ledger holds as not terminal after KREABUS_WEBHOOK_GRACE, and
// publishes what it finds with Kreabus-Source: poll and the same
// Nats-Msg-Id a webhook would have had, so the two never both land. A job
// Krea no longer knows, or one still not terminal after KREABUS_JOB_MAX_AGE,
// ends in one krea.jobs.failed event saying why.
//
// Its work list is the ledger's open.<job_id> keys, held in memory by a
// watch on those keys only: a scan costs the jobs in flight, and each poll
// reads one job record, whatever the ledger keeps.
//
// Several replicas may run it at once. With Deps.Claims a job is polled by
// one replica per round (a claim in the ledger bucket). Should two still
// publish, JetStream drops the second event with the same Nats-Msg-Id
// within the duplicate window, and each replica reads the job's record
// before it polls and again before it publishes, which covers later
// repeats.
package reconciler

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"

	"github.com/kreabus/kreabus/internal/accountpause"
	"github.com/kreabus/kreabus/internal/ledger"
	"github.com/kreabus/kreabus/internal/promreg"
	"github.com/kreabus/kreabus/pkg/events"
	"github.com/kreabus/kreabus/pkg/krea"
)

// JobGetter reads one job from the Krea API; *krea.Client implements it.
// The raw answer body (Job.Raw) is published as the event body.
type JobGetter interface {
	GetJob(ctx context.Context, id string) (*krea.Job, error)
}

// Open is the list of jobs not terminal, in memory; *ledger.OpenJobs
// implements it. It holds the jobs in flight only, so a scan costs what is
// in flight, not what the ledger keeps.
type Open interface {
	// Pending returns the open jobs submitted at least grace before now.
	Pending(now time.Time, grace time.Duration) []ledger.Record
	// Forget drops a job the reconciler settled or saw settled.
	Forget(jobID string)
}

// Claims shares the polling of a job among replicas; *ledger.Ledger
// implements it (see its ClaimPoll).
type Claims interface {
	ClaimPoll(ctx context.Context, jobID, holder string, ttl time.Duration) (bool, error)
}

// Store reads a job record from the ledger bucket and takes a job off the
// open list; *ledger.Ledger implements it.
type Store interface {
	Job(ctx context.Context, jobID string) (*ledger.Record, error)
	CloseOpen(ctx context.Context, jobID string) error
}

// AccountPause is the pause Krea account errors (401, 402, 403) take,
// shared with the submitter: *accountpause.Pause implements it. While it
// lasts nothing is polled; a poll refused for the account trips it.
type AccountPause interface {
	Remaining() time.Duration
	Trip(ctx context.Context, reason string) time.Time
	// Clear ends the pause after a call begun at started succeeded.
	Clear(ctx context.Context, started time.Time)
}

// Deps are the reconciler's collaborators.
type Deps struct {
	// JetStream publishes the events (required).
	JetStream jetstream.JetStream
	// Krea polls jobs (required): a *krea.Client.
	Krea JobGetter
	// Open lists the jobs not terminal (required): the *ledger.OpenJobs
	// of the process.
	Open Open
	// Store (required; the *ledger.Ledger) is read before each poll and
	// right before publishing, so a job another replica or a webhook
	// settled moments ago is neither polled nor published again, even
	// beyond the duplicate window.
	Store Store
	// Claims, when set (the *ledger.Ledger), has a replica poll a job only
	// while it holds the job's claim, so several replicas cost the API one
	// poll per job and round instead of one each.
	Claims Claims
	// Ready, when set, gates every scan: the submitter passes
	// recorder.Synced && open.Ready, so nothing is polled before the
	// ledger has caught up with the stream.
	Ready func() bool
	// Pause is the account pause shared with the submitter (the
	// submitter program passes its consumer pause). Nil: a pause of the
	// reconciler's own, with accountpause's default backoff.
	Pause AccountPause
	// Log defaults to discarding.
	Log *slog.Logger
	// Registerer, when set, gets the reconciler's metrics.
	Registerer prometheus.Registerer
}

// Poll outcomes, the values of kreabus_reconciler_polls_total{outcome}.
const (
	OutcomeTerminal       = "terminal"        // Krea said terminal: event published
	OutcomeNonTerminal    = "non_terminal"    // still running: polled again later
	OutcomeNotFound       = "not_found"       // 404: failed event published
	OutcomeExpired        = "expired"         // past the maximum age: failed event published
	OutcomeRetryableError = "retryable_error" // 429, 5xx, network: backing off
	OutcomeAccountError   = "account_error"   // 401, 402, 403: polling paused
	OutcomeError          = "error"           // anything else: backing off
	OutcomeClaimed        = "claimed"         // another replica holds the job's polls: not polled here
)

// Failure codes of the failed events kreabus itself decides, in the
// synthesised body's error.code.
const (
	CodeNotFound = "kreabus_job_not_found"
	CodeMaxAge   = "kreabus_max_age_exceeded"
)

// Reconciler polls jobs whose terminal webhook is overdue. Create it with
// New and call Run.
type Reconciler struct {
	cfg      Config
	d        Deps
	log      *slog.Logger
	limiter  *rate.Limiter
	holder   string // this replica's name in poll claims
	warnOnce sync.Once
	polls    *prometheus.CounterVec
	pending  prometheus.Gauge

	mu   sync.Mutex
	jobs map[string]*jobState
	// holdUntil: no poll before (a Retry-After Krea asked for).
	holdUntil time.Time
}

// jobState is the polling schedule of one job.
type jobState struct {
	next     time.Time
	backoff  time.Duration
	inFlight bool
}

// New returns a Reconciler. It fails on invalid settings, missing
// dependencies, or metrics that cannot be registered.
func New(cfg Config, d Deps) (*Reconciler, error) {
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if d.JetStream == nil || d.Krea == nil || d.Open == nil || d.Store == nil {
		return nil, errors.New("reconciler: JetStream, Krea, Open and Store are required")
	}
	log := d.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if d.Pause == nil {
		p, err := accountpause.New(accountpause.DefaultBackoffMin, accountpause.DefaultBackoffMax, accountpause.WithLogger(log))
		if err != nil {
			return nil, err
		}
		d.Pause = p
	}
	r := &Reconciler{
		cfg:     cfg,
		d:       d,
		log:     log.With("component", "reconciler"),
		limiter: rate.NewLimiter(rate.Limit(cfg.Rate), max(1, int(cfg.Rate))),
		holder:  uuid.NewString(),
		jobs:    map[string]*jobState{},
	}
	polls := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "kreabus_reconciler_polls_total",
		Help: "GET /jobs/{id} polls of jobs whose terminal webhook is overdue, by outcome.",
	}, []string{"outcome"})
	pending := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "kreabus_reconciler_pending_jobs",
		Help: "Jobs past the webhook grace without a terminal event, at the last scan.",
	})
	var err error
	if r.polls, err = promreg.Register(d.Registerer, polls); err != nil {
		return nil, err
	}
	if r.pending, err = promreg.Register(d.Registerer, pending); err != nil {
		return nil, err
	}
	for _, o := range []string{OutcomeTerminal, OutcomeNonTerminal, OutcomeNotFound, OutcomeExpired,
		OutcomeRetryableError, OutcomeAccountError, OutcomeError, OutcomeClaimed} {
		r.polls.WithLabelValues(o)
	}
	return r, nil
}

// Run scans and polls until ctx ends, then waits for the polls in flight
// and returns nil.
func (r *Reconciler) Run(ctx context.Context) error {
	work := make(chan ledger.Record)
	var wg sync.WaitGroup
	for range r.cfg.Concurrency {
		wg.Go(func() {
			for rec := range work {
				r.poll(ctx, rec)
			}
		})
	}
	defer func() {
		close(work)
		wg.Wait()
	}()
	for {
		wait := r.cfg.Interval
		if !r.scan(ctx, work) {
			// Not ready yet (the ledger catching up): look again soon, so
			// the first round starts as soon as it can, not an interval
			// later.
			wait = min(wait, notReadyRecheck)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
	}
}

// notReadyRecheck is how often a reconciler that is not ready looks again.
const notReadyRecheck = 100 * time.Millisecond

// scan hands every job due for a poll to the workers. It blocks while they
// are busy, so the rate limit paces it. It reports false when it did not
// scan because the ledger is not ready.
func (r *Reconciler) scan(ctx context.Context, work chan<- ledger.Record) bool {
	if r.d.Ready != nil && !r.d.Ready() {
		return false
	}
	now := time.Now()
	pending := r.d.Open.Pending(now, r.cfg.WebhookGrace)
	r.pending.Set(float64(len(pending)))

	if r.d.Pause.Remaining() > 0 {
		// Krea refuses the account: polls would only be refused too.
		return true
	}
	r.mu.Lock()
	if now.Before(r.holdUntil) {
		r.mu.Unlock()
		return true
	}
	live := make(map[string]bool, len(pending))
	due := pending[:0]
	for _, rec := range pending {
		live[rec.JobID] = true
		st := r.jobs[rec.JobID]
		if st == nil {
			st = &jobState{next: now, backoff: max(min(r.cfg.WebhookGrace, r.cfg.MaxBackoff), MinBackoff)}
			r.jobs[rec.JobID] = st
		}
		if st.inFlight || now.Before(st.next) {
			continue
		}
		st.inFlight = true
		due = append(due, rec)
	}
	for id, st := range r.jobs {
		if !live[id] && !st.inFlight {
			delete(r.jobs, id)
		}
	}
	r.mu.Unlock()

	for i, rec := range due {
		select {
		case work <- rec:
		case <-ctx.Done():
			r.mu.Lock()
			for _, rec := range due[i:] {
				if st := r.jobs[rec.JobID]; st != nil {
					st.inFlight = false
				}
			}
			r.mu.Unlock()
			return true
		}
	}
	return true
}

// poll polls one job and publishes what it finds.
func (r *Reconciler) poll(ctx context.Context, rec ledger.Record) {
	if r.settled(ctx, rec) {
		return
	}
	if wait := r.pause(); wait > 0 {
		r.reschedule(rec.JobID, wait, false)
		return
	}
	if !r.claim(ctx, rec.JobID) {
		r.outcome(OutcomeClaimed)
		r.reschedule(rec.JobID, 0, false)
		return
	}
	if err := r.limiter.Wait(ctx); err != nil {
		r.reschedule(rec.JobID, 0, false)
		return
	}
	called := time.Now()
	job, err := r.d.Krea.GetJob(ctx, rec.JobID)
	if ctx.Err() != nil {
		r.reschedule(rec.JobID, 0, false)
		return
	}
	if err == nil || errors.Is(err, krea.ErrNotFound) {
		// The account works: a pause the submitter or another replica
		// took ends, and the next one starts from the minimum.
		r.d.Pause.Clear(ctx, called)
	}
	log := r.log.With("job_id", rec.JobID, "request_id", rec.RequestID)
	now := time.Now()
	age := now.Sub(rec.SubmittedAt)
	switch {
	case err == nil && job.Status.IsTerminal():
		r.outcome(OutcomeTerminal)
		log.Info("poll found a terminal job whose webhook did not come", "status", job.Status, "age", age.Round(time.Second))
		r.publish(ctx, rec, job.Status, job.Raw, "")
	case err == nil:
		if age > r.cfg.JobMaxAge {
			r.outcome(OutcomeExpired)
			msg := fmt.Sprintf("job still %s %v after submission, past KREABUS_JOB_MAX_AGE (%v); kreabus declared it failed",
				job.Status, age.Round(time.Second), r.cfg.JobMaxAge)
			log.Warn("job exceeded the maximum age", "status", job.Status, "age", age.Round(time.Second))
			r.publish(ctx, rec, krea.StatusFailed, failedBody(rec, job, CodeMaxAge, msg, now), msg)
			return
		}
		r.outcome(OutcomeNonTerminal)
		r.reschedule(rec.JobID, 0, true)
	case errors.Is(err, krea.ErrNotFound):
		r.outcome(OutcomeNotFound)
		msg := fmt.Sprintf("Krea no longer knows job %s (GET /jobs/%s answered 404); kreabus declared it failed", rec.JobID, rec.JobID)
		log.Warn("job unknown to Krea", "age", age.Round(time.Second))
		r.publish(ctx, rec, krea.StatusFailed, failedBody(rec, nil, CodeNotFound, msg, now), msg)
	case errors.Is(err, krea.ErrAccount):
		r.outcome(OutcomeAccountError)
		until := r.d.Pause.Trip(ctx, err.Error())
		log.Error("Krea refuses the account; polling and submission paused", "err", err, "until", until)
		r.reschedule(rec.JobID, time.Until(until), false)
	case errors.Is(err, krea.ErrRetryable):
		r.outcome(OutcomeRetryableError)
		if d, ok := krea.RetryAfter(err); ok && d > 0 {
			r.hold(now.Add(d))
		}
		log.Warn("poll failed; backing off", "err", err)
		r.reschedule(rec.JobID, 0, true)
	default:
		r.outcome(OutcomeError)
		log.Warn("poll failed; backing off", "err", err)
		r.reschedule(rec.JobID, 0, true)
	}
}

// publish stores the job's terminal event, unless the ledger already holds
// the job as terminal.
func (r *Reconciler) publish(ctx context.Context, rec ledger.Record, status krea.Status, body []byte, reason string) {
	log := r.log.With("job_id", rec.JobID, "request_id", rec.RequestID, "status", status)
	jr, settled := r.record(ctx, rec)
	if settled {
		log.Debug("job settled meanwhile; not publishing")
		return
	}
	md, extra := rec.Metadata, rec.Extra
	if jr != nil {
		// The job record is newer than the open list's copy: it may have
		// been found extra since.
		extra = extra || jr.Extra
		if len(md) == 0 {
			md = jr.Metadata
		}
	}
	msg := events.NewJobMsg(events.EventHeaders{
		JobID:     rec.JobID,
		Status:    status,
		RequestID: rec.RequestID,
		Source:    events.SourcePoll,
		Metadata:  md,
		Reason:    reason,
		ExtraJob:  extra,
	}, body)
	pctx, cancel := context.WithTimeout(ctx, r.cfg.PublishTimeout)
	defer cancel()
	ack, err := r.d.JetStream.PublishMsg(pctx, msg, jetstream.WithExpectStream(events.StreamJobs))
	if err != nil {
		log.Warn("cannot publish the polled event; retrying later", "err", err)
		r.reschedule(rec.JobID, 0, true)
		return
	}
	r.close(ctx, rec.JobID)
	log.Info("published polled event", "duplicate", ack.Duplicate, "seq", ack.Sequence)
}

// settled reports whether the ledger holds the job as terminal already,
// and then takes it off the open list: its webhook, or another replica,
// was first. A ledger that cannot be read says no: the poll goes on, and
// JetStream's duplicate window still guards the event.
func (r *Reconciler) settled(ctx context.Context, rec ledger.Record) bool {
	_, settled := r.record(ctx, rec)
	return settled
}

// record reads the job's record (nil when it cannot) and reports whether it
// is terminal, taking the job off the open list then.
func (r *Reconciler) record(ctx context.Context, rec ledger.Record) (*ledger.Record, bool) {
	jr, err := r.d.Store.Job(ctx, rec.JobID)
	if err != nil {
		return nil, false
	}
	if !jr.Terminal {
		return jr, false
	}
	r.close(ctx, rec.JobID)
	return jr, true
}

// close takes a settled job off the open list and out of the schedule.
func (r *Reconciler) close(ctx context.Context, jobID string) {
	if err := r.d.Store.CloseOpen(ctx, jobID); err != nil {
		r.log.Warn("cannot take a settled job off the open list; the Recorder will", "job_id", jobID, "err", err)
	}
	r.d.Open.Forget(jobID)
	r.forget(jobID)
}

// failedBody is the job object of a failure kreabus decided.
func failedBody(rec ledger.Record, last *krea.Job, code, msg string, now time.Time) []byte {
	const layout = "2006-01-02T15:04:05.000Z"
	b := struct {
		JobID       string        `json:"job_id"`
		Status      krea.Status   `json:"status"`
		CreatedAt   string        `json:"created_at,omitempty"`
		CompletedAt string        `json:"completed_at"`
		Result      *struct{}     `json:"result"`
		Error       krea.JobError `json:"error"`
	}{
		JobID:       rec.JobID,
		Status:      krea.StatusFailed,
		CompletedAt: now.UTC().Format(layout),
		Error:       krea.JobError{Code: code, Message: msg},
	}
	switch {
	case last != nil && last.CreatedAt != nil:
		b.CreatedAt = last.CreatedAt.UTC().Format(layout)
	case !rec.SubmittedAt.IsZero():
		b.CreatedAt = rec.SubmittedAt.UTC().Format(layout)
	}
	out, _ := json.Marshal(b)
	return out
}

func (r *Reconciler) outcome(o string) { r.polls.WithLabelValues(o).Inc() }

// reschedule plans the job's next poll: after wait when positive, else
// after its backoff (doubled afterwards when grow is set), with ±10%
// jitter so replicas drift apart.
func (r *Reconciler) reschedule(jobID string, wait time.Duration, grow bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	st := r.jobs[jobID]
	if st == nil {
		return
	}
	st.inFlight = false
	d := wait
	if d <= 0 {
		d = st.backoff
		if grow {
			st.backoff = min(2*st.backoff, r.cfg.MaxBackoff)
		}
	}
	d += time.Duration((rand.Float64()*0.2 - 0.1) * float64(d))
	st.next = time.Now().Add(d)
}

// claim reports whether this replica may poll jobID now: it holds the
// job's claim, or there are no claims. A claim lasts a little less than
// the job's current backoff, so the holder's next round finds it expired
// (or still its own) and another replica takes over within one round when
// the holder is gone.
func (r *Reconciler) claim(ctx context.Context, jobID string) bool {
	if r.d.Claims == nil {
		return true
	}
	r.mu.Lock()
	ttl := MinBackoff
	if st := r.jobs[jobID]; st != nil {
		ttl = st.backoff
	}
	r.mu.Unlock()
	ok, err := r.d.Claims.ClaimPoll(ctx, jobID, r.holder, ttl*9/10)
	if err != nil && ctx.Err() == nil {
		// Polling goes on without claims; say so once, not per job.
		r.warnOnce.Do(func() {
			r.log.Warn("cannot claim polls in the ledger; every replica polls every overdue job", "err", err)
		})
	}
	return ok
}

func (r *Reconciler) forget(jobID string) {
	r.mu.Lock()
	delete(r.jobs, jobID)
	r.mu.Unlock()
}

// hold stops polling until a Retry-After has passed.
func (r *Reconciler) hold(until time.Time) {
	r.mu.Lock()
	if until.After(r.holdUntil) {
		r.holdUntil = until
	}
	r.mu.Unlock()
}

// pause returns how long polling is still paused or held.
func (r *Reconciler) pause() time.Duration {
	r.mu.Lock()
	held := time.Until(r.holdUntil)
	r.mu.Unlock()
	return max(held, r.d.Pause.Remaining())
}
