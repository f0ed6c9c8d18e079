// Package accountpause is the one pause kreabus takes when Krea refuses the
// account (401, 402, 403): the submitter stops sending requests and the
// reconciler stops polling, until the pause ends and the next call probes
// the account again.
//
// The pause is JetStream's own consumer pause on the submitter's durable
// consumer on KREA_REQUESTS (nats-server 2.11+): while it lasts the server
// delivers no request to any replica, `nats consumer info` shows it, and
// `nats consumer resume` ends it early. Every replica follows the
// consumer's state (Run), so an account error seen by one replica, by its
// submitter or by its reconciler, pauses them all.
package accountpause

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/kreabus/kreabus/pkg/events"
)

// Defaults.
const (
	// DefaultBackoffMin is the first pause after an account error.
	DefaultBackoffMin = 10 * time.Second
	// DefaultBackoffMax caps the pause; each account error right after a
	// pause ended (the probe failed) doubles it up to here.
	DefaultBackoffMax = 5 * time.Minute
	// DefaultRefresh is how often Run reads the consumer's pause, to follow
	// a pause taken by another replica or ended by an operator.
	DefaultRefresh = 5 * time.Second
	// opTimeout bounds one JetStream call.
	opTimeout = 5 * time.Second
)

// ErrInvalid is matched by the errors New returns for bad settings.
var ErrInvalid = errors.New("accountpause: invalid setting")

// Consumer names the durable consumer the pause is taken on.
type Consumer struct {
	JS     jetstream.JetStream
	Stream string
	Name   string
}

// Option configures New.
type Option func(*Pause) error

// WithConsumer takes the pause on a JetStream consumer (the submitter's,
// on KREA_REQUESTS). Without it the pause is local to the process.
func WithConsumer(js jetstream.JetStream, stream, consumer string) Option {
	return func(p *Pause) error {
		if js == nil || stream == "" || consumer == "" {
			return fmt.Errorf("%w: WithConsumer needs JetStream, a stream and a consumer name", ErrInvalid)
		}
		p.cons = &Consumer{JS: js, Stream: stream, Name: consumer}
		return nil
	}
}

// WithLogger sets the logger (default: discard).
func WithLogger(log *slog.Logger) Option {
	return func(p *Pause) error {
		if log != nil {
			p.log = log.With("component", "account-pause")
		}
		return nil
	}
}

// WithClock replaces time.Now, for tests driving a fake clock.
func WithClock(now func() time.Time) Option {
	return func(p *Pause) error {
		if now == nil {
			return fmt.Errorf("%w: nil clock", ErrInvalid)
		}
		p.now = now
		return nil
	}
}

// Pause is the shared account pause. It is safe for concurrent use.
type Pause struct {
	backoff events.Backoff // the pause's length, by account errors in a row (no jitter: one pause for all)
	cons    *Consumer
	log     *slog.Logger
	now     func() time.Time

	mu     sync.Mutex
	until  time.Time // no Krea calls before (zero: never paused)
	reason string
	trips  uint64    // pauses in a row, each after the last one's probe failed; 0 once a call succeeded
	began  time.Time // when the pause in force began here (tripped or adopted)
	setAt  time.Time // when this process last finished changing the consumer
	local  bool      // the consumer could not be paused: this process's pause only
}

// New returns a Pause whose first pause lasts min and whose pauses double
// up to max while the account keeps failing.
func New(min, max time.Duration, opts ...Option) (*Pause, error) {
	var errs []error
	if min <= 0 {
		errs = append(errs, fmt.Errorf("%w: backoff min %v must be positive", ErrInvalid, min))
	}
	if max < min {
		errs = append(errs, fmt.Errorf("%w: backoff max %v is below min %v", ErrInvalid, max, min))
	}
	p := &Pause{backoff: events.Backoff{Min: min, Max: max}, log: slog.New(slog.DiscardHandler), now: time.Now}
	for _, o := range opts {
		if err := o(p); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return p, nil
}

// Remaining is how long Krea calls stay paused (0: not paused).
func (p *Pause) Remaining() time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	return max(0, p.until.Sub(p.now()))
}

// State returns when the pause ends (zero or past: not paused) and the
// account error that started it.
func (p *Pause) State() (until time.Time, reason string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.until, p.reason
}

// Trip pauses Krea calls after an account error and returns when the pause
// ends. An error while paused already (calls that were in flight) keeps
// the pause as it is; an error once a pause has ended (the probe failed)
// doubles it, up to the maximum; a call that succeeded (Clear) resets it.
func (p *Pause) Trip(ctx context.Context, reason string) time.Time {
	p.mu.Lock()
	now := p.now()
	if now.Before(p.until) {
		p.reason = reason
		until := p.until
		p.mu.Unlock()
		return until
	}
	p.trips++
	p.until, p.reason, p.began, p.local = now.Add(p.backoff.Ceiling(p.trips)), reason, now, false
	until := p.until
	p.mu.Unlock()
	if p.cons != nil {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), opTimeout)
		defer cancel()
		_, err := p.cons.JS.PauseConsumer(cctx, p.cons.Stream, p.cons.Name, until)
		p.mu.Lock()
		// Reads of the consumer begun before this point may predate the
		// change: Sync ignores them.
		p.setAt = p.now()
		p.local = err != nil
		p.mu.Unlock()
		if err != nil {
			// The pause still holds in this process (Sync must not take
			// the unpaused consumer for a resume); other replicas learn of
			// the account error by their own calls.
			p.log.Warn("cannot pause the requests consumer; pausing this replica only",
				"consumer", p.cons.Name, "err", err)
		}
	}
	p.log.Error("Krea refuses the account: submission and polling paused", "reason", reason,
		"until", until.UTC().Format(time.RFC3339), "pause", p.length())
	return until
}

// length is the length of the last pause tripped.
func (p *Pause) length() time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.backoff.Ceiling(p.trips)
}

// Clear records that a call the account error would have refused
// succeeded: the next pause starts from the minimum again, and a pause
// still running (another replica's, or a poll's error) ends now. started
// is when the call began: a call begun before the pause (in flight when
// the error came) proves nothing about the account since, and clears
// nothing.
func (p *Pause) Clear(ctx context.Context, started time.Time) {
	p.mu.Lock()
	if (p.trips == 0 && !p.now().Before(p.until)) || !started.After(p.began) {
		// Nothing to clear, or the call began before the pause did: it
		// says nothing about the account since.
		p.mu.Unlock()
		return
	}
	wasPaused := p.now().Before(p.until) && !p.local
	p.trips, p.until, p.reason, p.local = 0, time.Time{}, "", false
	p.mu.Unlock()
	if wasPaused && p.cons != nil {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), opTimeout)
		defer cancel()
		_, err := p.cons.JS.ResumeConsumer(cctx, p.cons.Stream, p.cons.Name)
		p.mu.Lock()
		p.setAt = p.now()
		p.mu.Unlock()
		if err != nil {
			p.log.Warn("cannot resume the requests consumer; it resumes by itself when its pause ends",
				"consumer", p.cons.Name, "err", err)
		}
	}
}

// Run follows the consumer's pause until ctx ends: a pause another replica
// took is adopted, and one an operator ended (`nats consumer resume`) ends
// here too. Without a consumer it has nothing to follow and only waits.
func (p *Pause) Run(ctx context.Context) {
	t := time.NewTicker(DefaultRefresh)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		p.Sync(ctx)
	}
}

// Sync reads the consumer's pause once and adopts it (Run does this every
// DefaultRefresh).
func (p *Pause) Sync(ctx context.Context) {
	if p.cons == nil {
		return
	}
	asked := p.now()
	cctx, cancel := context.WithTimeout(ctx, opTimeout)
	info, err := p.cons.JS.Consumer(cctx, p.cons.Stream, p.cons.Name)
	cancel()
	if err != nil {
		return
	}
	ci := info.CachedInfo()
	p.mu.Lock()
	switch {
	case asked.Before(p.setAt):
		// Read before our own last change: stale.
	case ci.Paused && ci.Config.PauseUntil != nil && ci.Config.PauseUntil.After(p.until):
		if !asked.Before(p.until) {
			p.began = asked // a pause new to this process
		}
		p.until, p.local = *ci.Config.PauseUntil, false
		if p.reason == "" {
			p.reason = "the requests consumer is paused (an account error seen by another replica, or an operator)"
		}
		p.trips = max(p.trips, 1)
	case !ci.Paused && asked.Before(p.until) && !p.local:
		// Resumed from outside (an operator, or another replica's probe
		// that succeeded): the account is worth trying again.
		p.until, p.reason = time.Time{}, ""
	}
	p.mu.Unlock()
}
