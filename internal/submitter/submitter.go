package submitter

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/kreabus/kreabus/internal/accountpause"
	"github.com/kreabus/kreabus/internal/ledger"
	"github.com/kreabus/kreabus/internal/retry"
	"github.com/kreabus/kreabus/pkg/events"
	"github.com/kreabus/kreabus/pkg/krea"
)

// API is the part of the Krea client the submitter uses; *krea.Client
// implements it.
type API interface {
	Submit(ctx context.Context, path string, input json.RawMessage, opts ...krea.SubmitOpt) (*krea.SubmitResult, error)
	// ListJobs is how an uncertain call is checked for the job it may
	// have made.
	ListJobs(ctx context.Context, opts krea.ListOptions) (*krea.JobList, error)
}

// Ledger is the part of the job ledger the submitter uses; *ledger.Ledger
// implements it.
type Ledger interface {
	// RequestAt returns the record of a request and its revision, or an
	// error matching ledger.ErrNotFound.
	RequestAt(ctx context.Context, requestID string) (*ledger.Record, uint64, error)
	// PutRequestAt moves a request on (intent, retrying, uncertain) if
	// its record is still at the revision read; ledger.ErrChanged if not.
	PutRequestAt(ctx context.Context, rec ledger.Record, rev uint64) (uint64, error)
	// RecordSubmission records that the API accepted a request; a
	// *ledger.ConflictError says the request had its outcome already.
	RecordSubmission(ctx context.Context, rec ledger.Record) error
	// PutRejection records that a request is being rejected; an error
	// matching ledger.ErrConflict says it was submitted after all.
	PutRejection(ctx context.Context, rec ledger.Record) error
	// Job returns the record of a job, or an error matching
	// ledger.ErrNotFound: who owns a job an uncertain call may have made.
	Job(ctx context.Context, jobID string) (*ledger.Record, error)
}

// Deps are what a Submitter works with.
type Deps struct {
	// JS is the JetStream context (required).
	JS jetstream.JetStream
	// Ledger records submitted requests (required): open it with
	// ledger.Open.
	Ledger Ledger
	// Client calls the Krea API. Nil: a *krea.Client built from the
	// configuration (KREA_API_URL, KREA_API_TOKEN, KREABUS_API_TIMEOUT).
	Client API
	// Log gets the submitter's logs (nil: discarded).
	Log *slog.Logger
	// Registerer gets the metrics (nil: not registered). Collectors already
	// registered by an earlier Submitter are reused.
	Registerer prometheus.Registerer
	// Pause is the account pause shared with the reconciler (see
	// NewAccountPause). Nil: the Submitter makes its own on its consumer
	// and follows it while it runs.
	Pause *accountpause.Pause
}

// NewAccountPause returns the account pause of the settings: JetStream's
// consumer pause on the submitter's durable consumer on KREA_REQUESTS,
// starting at KREABUS_PAUSE_BACKOFF_MIN and doubling up to
// KREABUS_PAUSE_BACKOFF_MAX. The program shares it with the reconciler and
// runs it (Run) to follow other replicas.
func NewAccountPause(cfg Config, js jetstream.JetStream, log *slog.Logger) (*accountpause.Pause, error) {
	cfg.SetDefaults()
	return accountpause.New(cfg.PauseBackoffMin, cfg.PauseBackoffMax,
		accountpause.WithConsumer(js, events.StreamRequests, cfg.Consumer),
		accountpause.WithLogger(log))
}

// Submitter consumes generation requests and submits them to Krea. Create it
// with New and start it with Run; it is not restartable, make a new one (on
// the same durable consumer) instead.
type Submitter struct {
	cfg    Config
	js     jetstream.JetStream
	ledger Ledger
	api    API
	tok    *events.Tokenizer
	log    *slog.Logger
	m      *metrics
	gate   *gate
	acct   *accountpause.Pause
	ownAcc bool // acct was made here: Run follows it

	idsMu sync.Mutex
	ids   map[string]struct{} // request IDs being handled in this process

	runOnce sync.Once

	bindMu  sync.Mutex
	bound   bool  // the requests consumer is bound
	bindErr error // why it is not, when known
}

// New checks cfg and returns a Submitter. Zero fields of cfg take their
// defaults.
func New(cfg Config, deps Deps) (*Submitter, error) {
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if deps.JS == nil {
		return nil, errors.New("submitter: Deps.JS is required")
	}
	if deps.Ledger == nil {
		return nil, errors.New("submitter: Deps.Ledger is required")
	}
	tok, err := events.NewTokenizer(cfg.WebhookSecret, cfg.WebhookSecretPrevious)
	if err != nil {
		return nil, fmt.Errorf("KREABUS_WEBHOOK_SECRET: %w", err)
	}
	api := deps.Client
	if api == nil {
		c, err := NewAPIClient(cfg, cfg.Concurrency)
		if err != nil {
			return nil, err
		}
		api = c
	}
	log := deps.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m, err := newMetrics(deps.Registerer)
	if err != nil {
		return nil, fmt.Errorf("submitter: metrics: %w", err)
	}
	acct, own := deps.Pause, false
	if acct == nil {
		if acct, err = NewAccountPause(cfg, deps.JS, log); err != nil {
			return nil, err
		}
		own = true
	}
	s := &Submitter{
		cfg:    cfg,
		js:     deps.JS,
		ledger: deps.Ledger,
		api:    api,
		tok:    tok,
		log:    log.With("component", "submitter"),
		m:      m,
		gate:   newGate(cfg.Concurrency, cfg.Rate, acct, cfg.PauseBackoffMin, cfg.RetryBackoffMax),
		acct:   acct,
		ownAcc: own,
		ids:    map[string]struct{}{},
	}
	s.gate.onPause = s.onPause
	m.paused.Set(0)
	m.limit.Set(float64(cfg.Concurrency))
	return s, nil
}

// NewAPIClient returns the Krea client of the settings, keeping up to
// conns connections alive.
func NewAPIClient(cfg Config, conns int) (*krea.Client, error) {
	return krea.NewClient(cfg.APIToken,
		krea.WithBaseURL(cfg.APIURL),
		krea.WithTimeout(cfg.APITimeout),
		krea.WithUserAgent("submitter"),
		krea.WithHTTPClient(apiHTTPClient(conns)))
}

// apiHTTPClient keeps a connection per API slot alive (the default
// transport keeps 2 per host, so a higher concurrency would open and close
// a connection per call) and, like the krea client's default, does not
// follow redirects: a redirected POST is not the request we meant.
func apiHTTPClient(conns int) *http.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConns = max(tr.MaxIdleConns, conns)
	tr.MaxIdleConnsPerHost = conns
	return &http.Client{
		Transport:     tr,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// WaitAPI waits for room under the submitter's Krea rate limit
// (KREABUS_SUBMIT_RATE), so calls made for the NATS service share it.
func (s *Submitter) WaitAPI(ctx context.Context) error {
	_, err := s.gate.waitRate(ctx, 0)
	return err
}

// Paused reports whether account errors paused submission.
func (s *Submitter) Paused() bool {
	p, _, _ := s.gate.Paused()
	return p
}

// ReadyCheck returns a readiness check (an admin.Check) failing until the
// requests consumer is bound and while submission is paused by account
// errors.
func (s *Submitter) ReadyCheck() func(context.Context) error {
	return func(context.Context) error {
		s.bindMu.Lock()
		bound, bindErr := s.bound, s.bindErr
		s.bindMu.Unlock()
		if !bound {
			if bindErr != nil {
				return fmt.Errorf("requests consumer %s not bound: %v", s.cfg.Consumer, bindErr)
			}
			return fmt.Errorf("requests consumer %s not bound yet", s.cfg.Consumer)
		}
		p, reason, probeAt := s.gate.Paused()
		if !p {
			return nil
		}
		return fmt.Errorf("paused by a Krea account error (%s); next probe in %v",
			reason, max(0, time.Until(probeAt)).Round(time.Second))
	}
}

func (s *Submitter) onPause(paused bool, reason string) {
	if paused {
		s.m.paused.Set(1)
		s.m.pauses.Inc()
		s.log.Error("Krea account error: submission paused (requests consumer paused) until a probe succeeds", "reason", reason)
		return
	}
	s.m.paused.Set(0)
	s.log.Info("Krea account works again: submission resumed")
}

// Run consumes requests until ctx ends, then stops fetching, lets the calls
// in flight finish, publishes their events, acks their requests and returns
// nil. It returns an error when the consumer cannot be set up, at start or
// after it was deleted (an incompatible consumer, or a missing one that may
// not be created). Run may be called once.
func (s *Submitter) Run(ctx context.Context) error {
	err := errors.New("submitter: Run called twice")
	s.runOnce.Do(func() { err = s.run(ctx) })
	return err
}

func (s *Submitter) run(ctx context.Context) error {
	// opCtx outlives ctx by ShutdownTimeout: what is in hand at the stop is
	// finished under it.
	opCtx, cancelOps := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelOps()
	stopped := make(chan struct{})
	defer close(stopped)
	go func() {
		select {
		case <-stopped:
			return
		case <-ctx.Done():
		}
		t := time.NewTimer(s.cfg.ShutdownTimeout)
		defer t.Stop()
		select {
		case <-stopped:
		case <-t.C:
			s.log.Warn("shutdown timeout: abandoning requests in hand; they will be redelivered")
			cancelOps()
		}
	}()

	cons, err := s.ensureConsumer(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	if s.ownAcc {
		followed := make(chan struct{})
		defer func() { <-followed }()
		go func() { defer close(followed); s.acct.Run(ctx) }()
	}
	s.log.Info("submitter started", "consumer", s.cfg.Consumer, "concurrency", s.cfg.Concurrency,
		"rate", s.cfg.Rate, "max_deliveries", s.cfg.MaxDeliveries, "api_url", s.cfg.APIURL)

	// Each request held (API call, then ledger, event and ack) takes one of
	// the consumption's handler slots; the gate, sizing every pull, bounds
	// the API calls among them.
	err = retry.Forever(ctx, retry.Reconnect, func(ctx context.Context) error {
		cc, err := events.Consume(s.js.Conn(), cons, func(hctx context.Context, msg jetstream.Msg) {
			// Requests in hand at a stop finish under opCtx, which
			// outlives the handler's context.
			s.handle(opCtx, msg, pulledAsProbe(hctx))
		},
			events.WithConcurrency(handPerSlot*s.cfg.Concurrency),
			events.WithPullGate(pullGate{s.gate, s.cfg.Concurrency}),
			events.WithErrorHandler(func(err error) { s.log.Warn("pulling requests failed", "err", err) }))
		if err != nil {
			return retry.Permanent(err)
		}
		select {
		case <-ctx.Done():
			s.log.Info("submitter stopping: finishing requests in hand")
			cc.Drain()
			<-cc.Closed()
			return nil
		case <-cc.Closed():
		}
		// The consumer was deleted (or the connection closed): bind it
		// again, creating it when allowed.
		c, err := s.ensureConsumer(ctx)
		if errors.Is(err, errConsumerSetup) {
			// Missing with creation off, or unusable: as at start.
			return retry.Permanent(err)
		}
		if err != nil {
			return err
		}
		cons = c
		return errConsumptionEnded
	}, func(err error, _ int, wait time.Duration) {
		if !errors.Is(err, errConsumptionEnded) {
			s.log.Error("re-binding the requests consumer failed", "err", err, "retry_in", wait)
		}
	})
	if err != nil {
		return err
	}
	s.log.Info("submitter stopped")
	return nil
}

// errConsumptionEnded: the consumption of requests ended by itself and
// was started again.
var errConsumptionEnded = errors.New("submitter: consumption of requests ended")

// consumerConfig is the durable consumer the submitter needs.
func (s *Submitter) consumerConfig() jetstream.ConsumerConfig {
	return jetstream.ConsumerConfig{
		Durable:       s.cfg.Consumer,
		Description:   "kreabus submitter: generation requests to the Krea API",
		DeliverPolicy: jetstream.DeliverAllPolicy,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       s.cfg.ackWait(),
		// Redeliveries are counted and ended by the submitter itself
		// (KREABUS_MAX_DELIVERIES), so that none ends silently.
		MaxDeliver:    -1,
		MaxAckPending: s.cfg.maxAckPending(),
		ReplayPolicy:  jetstream.ReplayInstantPolicy,
	}
}

// ensureConsumer binds to the durable consumer, creating it when missing
// (and Config.Create allows), raising AckWait and MaxAckPending when they
// are below what the settings need. It retries transient failures until ctx
// ends.
func (s *Submitter) ensureConsumer(ctx context.Context) (jetstream.Consumer, error) {
	var c jetstream.Consumer
	err := retry.Do(ctx, retry.Reconnect, func(ctx context.Context) error {
		var err error
		c, err = s.bindConsumer(ctx)
		s.bindMu.Lock()
		s.bound, s.bindErr = err == nil, err
		s.bindMu.Unlock()
		if errors.Is(err, errConsumerSetup) {
			return retry.Permanent(err)
		}
		return err
	}, func(err error, _ int, wait time.Duration) {
		s.log.Warn("waiting for JetStream to bind the requests consumer", "consumer", s.cfg.Consumer, "err", err, "retry_in", wait)
	})
	return c, err
}

var errConsumerSetup = errors.New("submitter: requests consumer")

func (s *Submitter) bindConsumer(ctx context.Context) (jetstream.Consumer, error) {
	cctx, cancel := context.WithTimeout(ctx, defaultOpTimeout)
	defer cancel()
	want := s.consumerConfig()
	c, err := s.js.Consumer(cctx, events.StreamRequests, s.cfg.Consumer)
	if errors.Is(err, jetstream.ErrConsumerNotFound) {
		if !s.cfg.Create {
			return nil, fmt.Errorf("%w %s on %s is missing and creation is off (KREABUS_CREATE_STREAMS=false)",
				errConsumerSetup, s.cfg.Consumer, events.StreamRequests)
		}
		c, err = s.js.CreateConsumer(cctx, events.StreamRequests, want)
		if errors.Is(err, jetstream.ErrConsumerExists) {
			c, err = s.js.Consumer(cctx, events.StreamRequests, s.cfg.Consumer)
		}
		var apiErr *jetstream.APIError
		if errors.As(err, &apiErr) && apiErr.Code == http.StatusBadRequest {
			// Refused for good, e.g. another consumer already takes the
			// whole work queue: retrying will not help.
			return nil, fmt.Errorf("%w %s: creating it on %s: %v", errConsumerSetup, s.cfg.Consumer, events.StreamRequests, err)
		}
		if err == nil {
			s.log.Info("created requests consumer", "consumer", s.cfg.Consumer, "ack_wait", want.AckWait,
				"max_ack_pending", want.MaxAckPending)
		}
	}
	if err != nil {
		if errors.Is(err, jetstream.ErrStreamNotFound) && !s.cfg.Create {
			return nil, fmt.Errorf("%w: stream %s is missing", errConsumerSetup, events.StreamRequests)
		}
		return nil, err
	}
	have := c.CachedInfo().Config
	if have.AckPolicy != jetstream.AckExplicitPolicy {
		return nil, fmt.Errorf("%w %s has ack policy %s, want explicit", errConsumerSetup, s.cfg.Consumer, have.AckPolicy)
	}
	if have.DeliverSubject != "" {
		return nil, fmt.Errorf("%w %s is a push consumer, want pull", errConsumerSetup, s.cfg.Consumer)
	}
	if have.AckWait < want.AckWait || have.MaxAckPending < s.cfg.Concurrency {
		upd := have
		upd.AckWait = max(have.AckWait, want.AckWait)
		if have.MaxAckPending < s.cfg.Concurrency {
			upd.MaxAckPending = want.MaxAckPending
		}
		if c2, uerr := s.js.UpdateConsumer(cctx, events.StreamRequests, upd); uerr == nil {
			c = c2
			s.log.Info("updated requests consumer", "consumer", s.cfg.Consumer, "ack_wait", upd.AckWait,
				"max_ack_pending", upd.MaxAckPending)
		} else {
			s.log.Warn("requests consumer has a short ack wait or a low max ack pending and could not be updated",
				"consumer", s.cfg.Consumer, "ack_wait", have.AckWait, "want_ack_wait", want.AckWait,
				"max_ack_pending", have.MaxAckPending, "err", uerr)
		}
	}
	return c, nil
}
