package ledger

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/kreabus/kreabus/internal/retry"
)

// PutOpen lists job rec.JobID as not terminal (open.<job_id>), with what
// a poll and its event need: request ID, path, metadata, submission time,
// extra. Listing a job already listed is a no-op.
func (l *Ledger) PutOpen(ctx context.Context, rec Record) error {
	if !ValidID(rec.JobID) {
		return fmt.Errorf("%w: job_id %q", ErrInvalidRecord, rec.JobID)
	}
	open := Record{
		RequestID: rec.RequestID, JobID: rec.JobID, Path: rec.Path, Metadata: rec.Metadata,
		SubmittedAt: rec.SubmittedAt, Extra: rec.Extra,
	}
	_, err := l.put(ctx, OpenKey(rec.JobID), &open, 0)
	if errors.Is(err, ErrChanged) {
		return nil
	}
	return err
}

// CloseOpen removes job jobID from the open list: it is terminal. The key
// is purged with a marker that expires after a while, so watchers learn of
// it and the bucket does not keep a tombstone per job for the whole TTL.
func (l *Ledger) CloseOpen(ctx context.Context, jobID string) error {
	if !ValidID(jobID) {
		return nil
	}
	key := OpenKey(jobID)
	err := l.kv.Purge(ctx, key, jetstream.PurgeTTL(l.markerTTL()))
	if err != nil && ctx.Err() == nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
		// A server without per-message TTLs: a plain delete marker, which
		// ages out with the bucket's TTL.
		err = l.kv.Delete(ctx, key)
	}
	if err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
		return fmt.Errorf("ledger: close %s: %w", key, err)
	}
	return nil
}

func (l *Ledger) markerTTL() time.Duration { return max(min(markerTTL, l.ttl), time.Second) }

// OpenJobs is the set of jobs not terminal (open.<job_id>), kept in memory
// by a watch on open.> only: its size, its start-up and every Pending call
// scale with the jobs in flight, never with the jobs the bucket keeps.
type OpenJobs struct {
	l       *Ledger
	mu      sync.RWMutex
	jobs    map[string]openEntry
	loaded  atomic.Bool
	live    atomic.Bool
	readyCh chan struct{}
	done    chan struct{}
}

// openEntry is an open job and the watch generation that delivered it.
type openEntry struct {
	rec Record
	gen uint64
}

// WatchOpen starts following the open jobs until ctx ends. It returns at
// once; Ready tells when the set has been loaded.
func (l *Ledger) WatchOpen(ctx context.Context) *OpenJobs {
	o := &OpenJobs{
		l:       l,
		jobs:    map[string]openEntry{},
		readyCh: make(chan struct{}),
		done:    make(chan struct{}),
	}
	go func() {
		defer close(o.done)
		o.watch(ctx)
	}()
	return o
}

// Ready reports whether the set has been loaded and is being followed.
func (o *OpenJobs) Ready() bool { return o.loaded.Load() && o.live.Load() }

// WaitReady waits until the set has been loaded once, or ctx ends.
func (o *OpenJobs) WaitReady(ctx context.Context) error {
	select {
	case <-o.readyCh:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-o.done:
		return errors.New("ledger: open-jobs watch stopped")
	}
}

// Done is closed once the watch has stopped.
func (o *OpenJobs) Done() <-chan struct{} { return o.done }

// Len is the number of open jobs.
func (o *OpenJobs) Len() int {
	o.mu.RLock()
	defer o.mu.RUnlock()
	return len(o.jobs)
}

// Pending returns the open jobs submitted at least grace before now,
// oldest first: those whose terminal webhook is overdue.
func (o *OpenJobs) Pending(now time.Time, grace time.Duration) []Record {
	cutoff := now.Add(-grace)
	o.mu.RLock()
	var out []Record
	for _, e := range o.jobs {
		if !e.rec.SubmittedAt.After(cutoff) {
			out = append(out, e.rec)
		}
	}
	o.mu.RUnlock()
	slices.SortFunc(out, func(a, b Record) int {
		if c := a.SubmittedAt.Compare(b.SubmittedAt); c != 0 {
			return c
		}
		return strings.Compare(a.JobID, b.JobID)
	})
	return out
}

// Forget drops a job from the set at once, before the watch reports its
// key removed (the caller closed it, or saw it terminal).
func (o *OpenJobs) Forget(jobID string) {
	o.mu.Lock()
	delete(o.jobs, jobID)
	o.mu.Unlock()
}

// watch follows open.> until ctx ends, watching again whenever a watcher
// ends (the connection closed); a new watch drops what the old one held
// and it did not deliver again.
func (o *OpenJobs) watch(ctx context.Context) {
	var gen uint64
	for ctx.Err() == nil {
		var w jetstream.KeyWatcher
		err := retry.Do(ctx, retry.Reconnect, func(ctx context.Context) (err error) {
			w, err = o.l.kv.Watch(ctx, OpenKeyPrefix+">")
			return err
		}, func(err error, _ int, wait time.Duration) {
			o.l.log.Warn("ledger: cannot watch open jobs; retrying", "err", err, "in", wait)
		})
		if err != nil {
			return
		}
		gen++
		o.live.Store(true)
		o.follow(ctx, w, gen)
		o.live.Store(false)
		_ = w.Stop()
	}
}

func (o *OpenJobs) follow(ctx context.Context, w jetstream.KeyWatcher, gen uint64) {
	initial := true
	for {
		select {
		case <-ctx.Done():
			return
		case e, ok := <-w.Updates():
			if !ok {
				o.l.log.Warn("ledger: open-jobs watch ended; watching again")
				return
			}
			if e == nil {
				if initial {
					initial = false
					o.dropStale(gen)
					if !o.loaded.Swap(true) {
						close(o.readyCh)
					}
				}
				continue
			}
			o.apply(e, gen)
		}
	}
}

func (o *OpenJobs) apply(e jetstream.KeyValueEntry, gen uint64) {
	id := strings.Clone(strings.TrimPrefix(e.Key(), OpenKeyPrefix))
	if e.Operation() != jetstream.KeyValuePut {
		o.mu.Lock()
		delete(o.jobs, id)
		o.mu.Unlock()
		return
	}
	var rec Record
	if err := json.Unmarshal(e.Value(), &rec); err != nil || !ValidID(id) {
		o.l.log.Warn("ledger: open-job entry does not decode; ignoring it", "key", e.Key(), "err", err)
		return
	}
	rec.JobID = id
	if rec.SubmittedAt.IsZero() {
		rec.SubmittedAt = e.Created()
	}
	o.mu.Lock()
	o.jobs[id] = openEntry{rec: rec, gen: gen}
	o.mu.Unlock()
}

// dropStale forgets jobs an earlier watch delivered that the current one
// did not: closed while no watch was running.
func (o *OpenJobs) dropStale(gen uint64) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for id, e := range o.jobs {
		if e.gen < gen {
			delete(o.jobs, id)
		}
	}
}
