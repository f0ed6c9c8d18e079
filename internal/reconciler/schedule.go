package reconciler

import (
	"context"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/kreabus/kreabus/internal/ledger"
	"github.com/kreabus/kreabus/internal/retry"
)

// The schedule: which open jobs are due for a poll, and when each is
// polled next.

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
		if !retry.Sleep(ctx, wait) {
			return nil
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
			st = &jobState{next: now}
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

// reschedule plans the job's next poll: after wait when positive, else
// after its wait (which then grows when grow is set), with ±10% jitter so
// replicas drift apart. (Not Backoff.Delay's jitter: the claim a poll
// takes lasts nine tenths of the wait, and the holder's next poll is to
// find it expired.)
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
		d = r.every.Ceiling(st.grown + 1)
		if grow {
			st.grown++
		}
	}
	d += time.Duration((rand.Float64()*0.2 - 0.1) * float64(d))
	st.next = time.Now().Add(d)
}

// claim reports whether this replica may poll jobID now: it holds the
// job's claim, or there are no claims. A claim lasts a little less than
// the job's current wait, so the holder's next round finds it expired
// (or still its own) and another replica takes over within one round when
// the holder is gone.
func (r *Reconciler) claim(ctx context.Context, jobID string) bool {
	if r.d.Claims == nil {
		return true
	}
	r.mu.Lock()
	ttl := MinBackoff
	if st := r.jobs[jobID]; st != nil {
		ttl = r.every.Ceiling(st.grown + 1)
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
