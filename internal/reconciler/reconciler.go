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
//
// reconciler.go holds what it works with (Deps) and New; schedule.go which
// jobs are due and when each is polled next; poll.go one poll and the
// event it publishes.
package reconciler

import (
	"context"
	"errors"
	"log/slog"
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
	holder   string         // this replica's name in poll claims
	every    events.Backoff // the wait between two polls of one job
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
	grown    uint64 // how often its wait grew: the wait is every.Ceiling(grown+1)
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
		// From the webhook grace, doubling up to the maximum.
		every: events.Backoff{Min: max(min(cfg.WebhookGrace, cfg.MaxBackoff), MinBackoff), Max: cfg.MaxBackoff},
		jobs:  map[string]*jobState{},
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
