package submitter

import (
	"context"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/kreabus/kreabus/internal/accountpause"
)

// outcome is what became of one request a slot was taken for, as far as the
// gate cares.
type outcome int

const (
	// outcomeNoCall: the request ended without an API call (invalid, already
	// submitted, paused, ledger trouble). Says nothing about the API.
	outcomeNoCall outcome = iota
	// outcomeOK: the API answered 2xx.
	outcomeOK
	// outcomeRefused: the API answered a request error (400/404/410/422):
	// the account works.
	outcomeRefused
	// outcomeThrottled: the API answered 429.
	outcomeThrottled
	// outcomeFailed: a retryable failure other than 429 (5xx, network).
	outcomeFailed
	// outcomeAccount: 401/402/403.
	outcomeAccount
	// outcomeSlow: the call timed out: the API is slower than our
	// timeout, and more calls at once only make more of them time out.
	outcomeSlow
)

// gate decides when the submitter may take another request off the queue.
// It bounds the requests in hand (and so the API calls in flight) by an
// adaptive limit, paces API calls with an optional rate limiter, holds new
// calls while a Retry-After runs, and pauses everything after an account
// error until a probe succeeds.
//
// The account pause itself is the shared accountpause.Pause (the JetStream
// consumer pause, shared with the reconciler and other replicas): the gate
// follows it, and once it ends lets exactly one call through, the probe,
// until a call proves the account works again.
//
// The limit follows AIMD: a 429 halves it (once per round of calls: a 429
// of a call started before the last cut does not cut again), each success
// raises it by 1/limit, so it regains one slot per round of successful
// calls. With a rate limit the rate follows the same factor.
type gate struct {
	maxSlots int
	rate     float64 // configured calls/s, 0 = none
	rl       *rate.Limiter

	acct       *accountpause.Pause
	retryProbe time.Duration // after an inconclusive probe
	holdMax    time.Duration
	now        func() time.Time
	onPause    func(paused bool, reason string)

	mu        sync.Mutex
	factor    float64 // (0, 1]: share of maxSlots and rate allowed now
	inflight  int
	lastCut   time.Time
	holdUntil time.Time // no new calls before (Retry-After)
	paused    bool
	pausedAt  time.Time
	reason    string    // the account error that paused us
	retryAt   time.Time // no probe before (an inconclusive probe)
	probing   bool      // the single probe slot is taken
	wake      chan struct{}
}

func newGate(slots int, callsPerSec float64, acct *accountpause.Pause, retryProbe, holdMax time.Duration) *gate {
	g := &gate{
		maxSlots:   slots,
		rate:       callsPerSec,
		acct:       acct,
		retryProbe: retryProbe,
		holdMax:    holdMax,
		now:        time.Now,
		factor:     1,
		wake:       make(chan struct{}),
	}
	if callsPerSec > 0 {
		g.rl = rate.NewLimiter(rate.Limit(callsPerSec), 1)
	}
	return g
}

// limitLocked is the number of slots allowed now.
func (g *gate) limitLocked() int {
	return max(1, int(g.factor*float64(g.maxSlots)+1e-9))
}

// Limit returns the current adaptive concurrency limit.
func (g *gate) Limit() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.limitLocked()
}

// broadcastLocked wakes every waiter.
func (g *gate) broadcastLocked() {
	close(g.wake)
	g.wake = make(chan struct{})
}

// acquire blocks until a slot may be taken and takes it. probe is true when
// the slot is the single probe allowed while paused: the request taken for
// it tells whether the account works again.
func (g *gate) acquire(ctx context.Context) (probe bool, err error) {
	for {
		started := g.follow()
		if started != "" && g.onPause != nil {
			g.onPause(true, started)
		}
		g.mu.Lock()
		now := g.now()
		probeAt := g.probeAtLocked()
		var wait time.Duration
		switch {
		case g.paused:
			if g.probing {
				wait = -1
			} else if now.Before(probeAt) {
				wait = min(probeAt.Sub(now), followInterval)
			} else if g.inflight < g.limitLocked() {
				g.probing = true
				g.inflight++
				g.mu.Unlock()
				return true, nil
			} else {
				wait = -1
			}
		case now.Before(g.holdUntil):
			wait = g.holdUntil.Sub(now)
		case g.inflight < g.limitLocked():
			g.inflight++
			g.mu.Unlock()
			return false, nil
		default:
			wait = -1
		}
		wake := g.wake
		g.mu.Unlock()
		var timer *time.Timer
		var fire <-chan time.Time
		if wait >= 0 {
			timer = time.NewTimer(wait)
			fire = timer.C
		}
		select {
		case <-ctx.Done():
			err = ctx.Err()
		case <-wake:
		case <-fire:
		}
		if timer != nil {
			timer.Stop()
		}
		if err != nil {
			return false, err
		}
	}
}

// followInterval bounds how long a waiting acquire goes without looking at
// the shared pause (which another replica or the reconciler may change).
const followInterval = time.Second

// follow adopts a pause the gate did not take itself (the reconciler's,
// another replica's), and drops its own once the shared one was cleared (a
// call since the pause succeeded, here or in the reconciler, or an
// operator resumed the consumer): no probe is owed then. It returns the
// reason when it paused the gate.
func (g *gate) follow() string {
	until, reason := g.acct.State()
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.paused && until.IsZero() {
		g.resumeLocked()
		g.broadcastLocked()
		return ""
	}
	if g.paused || !g.now().Before(until) {
		return ""
	}
	g.paused, g.pausedAt, g.reason = true, g.now(), reason
	g.broadcastLocked()
	return reason
}

// probeAtLocked is when the next probe may go: when the shared pause ends,
// not before an inconclusive probe's retry time.
func (g *gate) probeAtLocked() time.Time {
	until, _ := g.acct.State()
	if g.retryAt.After(until) {
		return g.retryAt
	}
	return until
}

// acquireMore takes up to n more slots without waiting, when not paused and
// not held. It returns how many it took.
func (g *gate) acquireMore(n int) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.paused || g.now().Before(g.holdUntil) {
		return 0
	}
	got := 0
	for got < n && g.inflight < g.limitLocked() {
		g.inflight++
		got++
	}
	return got
}

// release gives back n slots that were never used for a request.
func (g *gate) release(n int, probe bool) {
	if n <= 0 {
		return
	}
	g.mu.Lock()
	g.inflight -= n
	if probe {
		g.probing = false
	}
	g.broadcastLocked()
	g.mu.Unlock()
}

// waitRate waits for the rate limiter's next token. extra more tokens are
// taken when available at once; the count taken (1+) is returned.
func (g *gate) waitRate(ctx context.Context, extra int) (int, error) {
	if g.rl == nil {
		return 1 + extra, nil
	}
	if err := g.rl.Wait(ctx); err != nil {
		return 0, err
	}
	n := 1
	for n <= extra && g.rl.Allow() {
		n++
	}
	return n, nil
}

// done returns a slot taken by acquire or acquireMore and reports what the
// request's API call came to. started is when the call started; retryAfter
// is the delay a 429 asked for (0 when none).
func (g *gate) done(probe bool, o outcome, started time.Time, retryAfter time.Duration) {
	if o == outcomeOK || o == outcomeRefused {
		// The account works: the next pause starts from the minimum, and
		// one still running (a poll's, another replica's) ends.
		g.acct.Clear(context.Background(), started)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	now := g.now()
	g.inflight--
	if probe {
		g.probing = false
	}
	switch o {
	case outcomeOK, outcomeRefused:
		if g.paused && (probe || started.After(g.pausedAt)) {
			g.resumeLocked()
		}
		if o == outcomeOK && g.factor < 1 {
			// One more slot per round of successful calls.
			g.factor = min(1, g.factor+1/(float64(g.limitLocked())*float64(g.maxSlots)))
			g.applyRateLocked()
		}
	case outcomeThrottled, outcomeSlow:
		if started.After(g.lastCut) || started.Equal(g.lastCut) {
			g.factor = max(g.factor/2, 1/float64(g.maxSlots))
			g.lastCut = now
			g.applyRateLocked()
		}
		if retryAfter > 0 {
			if until := now.Add(min(retryAfter, g.holdMax)); until.After(g.holdUntil) {
				g.holdUntil = until
			}
		}
	case outcomeAccount:
		// pause() already tripped the shared pause: a probe that failed
		// again made it longer.
	case outcomeFailed:
		if probe && g.paused {
			// Inconclusive: try another probe soon.
			g.retryAt = now.Add(g.retryProbe)
		}
	}
	g.broadcastLocked()
}

func (g *gate) applyRateLocked() {
	if g.rl != nil {
		g.rl.SetLimit(rate.Limit(g.rate * g.factor))
	}
}

// pause stops taking requests after an account error, tripping the shared
// pause. It returns true when this call paused a running gate.
func (g *gate) pause(ctx context.Context, reason string) bool {
	g.acct.Trip(ctx, reason)
	g.mu.Lock()
	if g.paused {
		g.reason = reason
		g.mu.Unlock()
		return false
	}
	g.paused = true
	g.pausedAt = g.now()
	g.reason = reason
	g.broadcastLocked()
	cb := g.onPause
	g.mu.Unlock()
	if cb != nil {
		cb(true, reason)
	}
	return true
}

func (g *gate) resumeLocked() {
	g.paused = false
	g.reason = ""
	g.retryAt = time.Time{}
	if g.onPause != nil {
		// Called with the lock held; the callback only touches metrics.
		g.onPause(false, "")
	}
}

// Paused reports whether submission is paused, and why.
func (g *gate) Paused() (bool, string, time.Time) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.paused, g.reason, g.probeAtLocked()
}

// pauseDelay is how long a request nak'ed because of a pause should wait:
// until the next probe, at least a second.
func (g *gate) pauseDelay() time.Duration {
	g.mu.Lock()
	defer g.mu.Unlock()
	d := g.probeAtLocked().Sub(g.now())
	return max(d, time.Second)
}
