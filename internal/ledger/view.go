package ledger

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/kreabus/kreabus/pkg/krea"
)

// View is an in-memory copy of the ledger, fed by a watch on the bucket,
// plus what the local process stored itself (Stored). It answers Lookup
// without a round trip to JetStream and implements Index. All methods are
// safe for concurrent use.
//
// Memory is bounded by the ledger TTL: entries the bucket removes (delete,
// purge, or TTL expiry markers) leave the view through the watch, and every
// entry is also forgotten locally once it is older than the TTL, whether
// the bucket reports the expiry or not.
type View struct {
	l   *Ledger
	ttl time.Duration
	now func() time.Time

	reqs, jobs table
	paths      interner

	loaded   atomic.Bool
	watching atomic.Bool
	readyCh  chan struct{}
	done     chan struct{}
}

var _ Index = (*View)(nil)

// Watch starts a View of the ledger and returns once it holds the bucket's
// current content. The View follows the bucket until ctx ends; Done is
// closed then. Watch retries transient failures until ctx ends.
func (l *Ledger) Watch(ctx context.Context) (*View, error) {
	v := l.StartWatch(ctx)
	if err := v.WaitReady(ctx); err != nil {
		return nil, err
	}
	return v, nil
}

// StartWatch is Watch without the wait: the View starts empty and not
// Ready, and loads in the background. Lookup on a View that is not ready
// answers from what it has loaded so far.
func (l *Ledger) StartWatch(ctx context.Context) *View {
	v := &View{
		l:       l,
		ttl:     l.ttl,
		now:     time.Now,
		readyCh: make(chan struct{}),
		done:    make(chan struct{}),
	}
	v.reqs.init()
	v.jobs.init()
	var wg sync.WaitGroup
	wg.Go(func() { v.watch(ctx) })
	wg.Go(func() { v.sweep(ctx) })
	go func() { wg.Wait(); close(v.done) }()
	return v
}

// Ready reports whether the View has loaded the bucket and is following it.
func (v *View) Ready() bool { return v.loaded.Load() && v.watching.Load() }

// WaitReady waits until the View has loaded the bucket once, or ctx ends.
func (v *View) WaitReady(ctx context.Context) error {
	select {
	case <-v.readyCh:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-v.done:
		return errors.New("ledger: view stopped")
	}
}

// Done is closed once the View has stopped (its context ended).
func (v *View) Done() <-chan struct{} { return v.done }

// TTL returns how long the View keeps an entry after its last write.
func (v *View) TTL() time.Duration { return v.ttl }

// Size returns how many requests and jobs the View holds.
func (v *View) Size() (requests, jobs int) { return v.reqs.len(), v.jobs.len() }

// Lookup answers what the ledger knows about a webhook for jobID that came
// with a token for requestID:
//
//   - Foreign: job.<jobID> (or what Stored saw) names another request, or
//     req.<requestID> names another job;
//   - Terminal: the job record is terminal, or Stored saw a terminal status;
//   - Metadata: the request's metadata (from req.<requestID>, else from the
//     job record when it names the same request); nil when Foreign. The
//     slice is shared: do not modify it.
func (v *View) Lookup(requestID, jobID string) Ownership {
	var o Ownership
	var je, re *entry
	if jobID != "" {
		je = v.jobs.get(jobID)
	}
	if requestID != "" {
		re = v.reqs.get(requestID)
	}
	if je != nil {
		if owner := je.linked(); owner != "" && requestID != "" && owner != requestID {
			o.Foreign = true
		}
		o.Terminal = je.isTerminal()
	}
	if re != nil {
		if job := re.linked(); job != "" && jobID != "" && job != jobID {
			o.Foreign = true
		}
	}
	if !o.Foreign {
		switch {
		case re != nil && re.kv != nil && len(re.kv.metadata) > 0:
			o.Metadata = re.kv.metadata
		case je != nil && je.kv != nil && je.kv.link == requestID && len(je.kv.metadata) > 0:
			o.Metadata = je.kv.metadata
		}
	}
	return o
}

// Stored tells the View that an event of jobID with status, answering
// requestID, was stored on KREA_JOBS. It updates memory only (the Recorder
// writes the bucket), so Lookup knows at once: a terminal status makes
// later terminal webhooks duplicates, and the pair's mapping makes webhooks
// naming either ID with another one Foreign.
func (v *View) Stored(requestID, jobID string, status krea.Status) {
	if jobID == "" {
		return
	}
	// The caller's strings may be slices of a whole HTTP request line;
	// keeping them (as keys too: a map assignment replaces the key) would
	// keep that line alive as long as the entry. Use the copies the View
	// holds when it has them, as it does for every job the ledger recorded,
	// so a webhook usually allocates nothing here.
	requestID, jobID = v.held(requestID, &v.jobs, jobID), v.held(jobID, &v.reqs, requestID)
	now := v.now().UnixNano()
	v.jobs.update(jobID, func(n *entry) *entry {
		if n.other == "" {
			n.other = requestID
		}
		if status.IsTerminal() {
			n.terminal = true
		}
		n.localAt = now
		return n
	})
	if requestID != "" {
		v.reqs.update(requestID, func(n *entry) *entry {
			if n.other == "" {
				n.other = jobID
			}
			n.localAt = now
			return n
		})
	}
}

// held returns id as a string the View may keep: the one the entry of
// linkedID in t links to when that is id, else a copy.
func (v *View) held(id string, t *table, linkedID string) string {
	if id == "" {
		return ""
	}
	if linkedID != "" {
		if e := t.get(linkedID); e != nil {
			if l := e.linked(); l == id {
				return l
			}
		}
	}
	return strings.Clone(id)
}

// Pending returns the jobs submitted at least grace before now that the
// ledger does not hold as terminal, oldest first: those whose webhook may be
// lost. Each record carries the request ID, metadata, path and submission
// time when known.
func (v *View) Pending(now time.Time, grace time.Duration) []Record {
	cutoff := now.Add(-grace).UnixNano()
	due := func(k *kvRecord) bool { return k.submittedAt != 0 && k.submittedAt <= cutoff }
	var out []Record
	seen := map[string]bool{}
	v.jobs.each(func(id string, e *entry) {
		if e.kv == nil {
			return
		}
		seen[id] = true
		if !e.isTerminal() && due(e.kv) {
			out = append(out, e.kv.record(e.kv.link, id))
		}
	})
	// Jobs the submitter recorded whose submitted event the Recorder has
	// not applied (yet, or ever).
	var extra []Record
	v.reqs.each(func(id string, e *entry) {
		if e.kv != nil && e.kv.link != "" && !seen[e.kv.link] && due(e.kv) {
			extra = append(extra, e.kv.record(id, e.kv.link))
		}
	})
	for _, r := range extra {
		if je := v.jobs.get(r.JobID); je != nil && (je.isTerminal() || je.kv != nil) {
			continue
		}
		r.Terminal = false
		out = append(out, r)
	}
	for i := range out {
		r := &out[i]
		if r.RequestID == "" || (r.Path != "" && len(r.Metadata) > 0) {
			continue
		}
		if re := v.reqs.get(r.RequestID); re != nil && re.kv != nil && re.kv.link == r.JobID {
			if r.Path == "" {
				r.Path = re.kv.path
			}
			if len(r.Metadata) == 0 {
				r.Metadata = re.kv.metadata
			}
		}
	}
	slices.SortFunc(out, func(a, b Record) int {
		if c := a.SubmittedAt.Compare(b.SubmittedAt); c != 0 {
			return c
		}
		return strings.Compare(a.JobID, b.JobID)
	})
	return out
}

// watch follows the bucket until ctx ends, watching again whenever the
// watcher ends (the connection closed).
func (v *View) watch(ctx context.Context) {
	log := v.l.log
	backoff := 100 * time.Millisecond
	var gen uint64
	for ctx.Err() == nil {
		w, err := v.l.kv.WatchAll(ctx)
		if err != nil {
			log.Warn("ledger view: cannot watch the bucket; retrying", "err", err, "in", backoff)
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 5*time.Second)
			continue
		}
		backoff = 100 * time.Millisecond
		gen++
		v.watching.Store(true)
		v.follow(ctx, w, gen)
		v.watching.Store(false)
		_ = w.Stop()
	}
}

// follow applies one watcher's updates until it ends or ctx does.
func (v *View) follow(ctx context.Context, w jetstream.KeyWatcher, gen uint64) {
	initial := true
	for {
		select {
		case <-ctx.Done():
			return
		case e, ok := <-w.Updates():
			if !ok {
				v.l.log.Warn("ledger view: watch ended; watching again")
				return
			}
			if e == nil {
				if initial {
					initial = false
					if gen > 1 {
						v.dropStale(gen)
					}
					if !v.loaded.Swap(true) {
						close(v.readyCh)
					}
				}
				continue
			}
			v.apply(e, gen)
		}
	}
}

// apply folds one bucket update into the View.
func (v *View) apply(e jetstream.KeyValueEntry, gen uint64) {
	var t, linked *table
	key := e.Key()
	id, ok := strings.CutPrefix(key, JobKeyPrefix)
	if ok {
		t, linked = &v.jobs, &v.reqs
	} else if id, ok = strings.CutPrefix(key, RequestKeyPrefix); ok {
		t, linked = &v.reqs, &v.jobs
	} else {
		return
	}
	rev := e.Revision()
	if e.Operation() != jetstream.KeyValuePut {
		// The key is a slice of the watch subject; an entry that survives
		// (local knowledge) would keep it as its key.
		id = strings.Clone(id)
		t.update(id, func(n *entry) *entry {
			if n.rev > rev {
				return n
			}
			n.kv, n.rev, n.gen = nil, rev, gen
			return n
		})
		return
	}
	var rec Record
	if err := json.Unmarshal(e.Value(), &rec); err != nil {
		v.l.log.Warn("ledger view: entry does not decode; ignoring it", "key", key, "err", err)
		return
	}
	kr := v.keep(&rec, t == &v.jobs)
	// The key is a slice of the whole watch subject: keep only the ID, the
	// pair's other record's copy when it has one. It usually holds the same
	// metadata too: share that.
	shared := false
	if le := linked.get(kr.link); le != nil && le.kv != nil {
		if le.kv.link == id {
			id, shared = le.kv.link, true
		}
		if bytes.Equal(le.kv.metadata, kr.metadata) {
			kr.metadata = le.kv.metadata
		}
	}
	if !shared {
		id = strings.Clone(id)
	}
	created := e.Created()
	t.update(id, func(n *entry) *entry {
		if n.rev > rev {
			return n
		}
		n.kv, n.rev, n.kvTime, n.gen = kr, rev, created.UnixNano(), gen
		return n
	})
}

// dropStale forgets bucket values an earlier watch delivered that the
// current one did not: they were removed while no watch was running.
func (v *View) dropStale(gen uint64) {
	for _, t := range []*table{&v.reqs, &v.jobs} {
		t.filter(func(e *entry) *entry {
			if e.kv != nil && e.gen < gen {
				e.kv = nil
			}
			return e
		})
	}
}

// sweep forgets entries older than the TTL until ctx ends.
func (v *View) sweep(ctx context.Context) {
	tick := time.NewTicker(sweepInterval(v.ttl))
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			v.expire(v.now())
		}
	}
}

func sweepInterval(ttl time.Duration) time.Duration {
	return min(max(ttl/64, 50*time.Millisecond), time.Minute)
}

// expire forgets what is older than the TTL at now.
func (v *View) expire(now time.Time) {
	for _, t := range []*table{&v.reqs, &v.jobs} {
		t.filter(func(e *entry) *entry {
			cutoff := now.Add(-v.ttl).UnixNano()
			if e.kv != nil && e.kvTime < cutoff {
				e.kv = nil
			}
			if e.localAt != 0 && e.localAt < cutoff {
				e.other, e.terminal, e.localAt = "", false, 0
			}
			return e
		})
	}
}

// kvRecord is the part of a bucket Record the View keeps: what Lookup and
// Pending need. With whole Records the View held 1060 bytes and 17 heap
// objects per job (request and job record, and the job's webhook); with
// these, and IDs shared between entries, 500 and 7 (TestViewMemoryPerJob).
// It holds every job of the ledger's TTL.
type kvRecord struct {
	// link is the other ID of the pair: a job record's request ID, a
	// request record's job ID.
	link        string
	path        string          // interned: there are few API paths
	metadata    json.RawMessage // nil when none; shared with the pair's other record when equal
	submittedAt int64           // Unix nanoseconds; 0: unknown
	terminal    bool
}

// keep makes the kvRecord of rec, a job record when job is set, else a
// request record.
func (v *View) keep(rec *Record, job bool) *kvRecord {
	k := &kvRecord{link: rec.JobID, path: v.paths.intern(rec.Path), terminal: rec.Terminal}
	if job {
		k.link = rec.RequestID
	}
	if hasMetadata(rec.Metadata) {
		k.metadata = rec.Metadata
	}
	if !rec.SubmittedAt.IsZero() {
		k.submittedAt = rec.SubmittedAt.UnixNano()
	}
	return k
}

// record rebuilds the Record of a request and job pair from k.
func (k *kvRecord) record(requestID, jobID string) Record {
	r := Record{RequestID: requestID, JobID: jobID, Path: k.path, Metadata: k.metadata, Terminal: k.terminal}
	if k.submittedAt != 0 {
		r.SubmittedAt = time.Unix(0, k.submittedAt).UTC()
	}
	return r
}

// maxInterned and maxInternedLen bound the interned paths: the submitter
// allows a configured list, but the bucket may hold anything.
const (
	maxInterned    = 1024
	maxInternedLen = 256
)

// interner shares equal strings.
type interner struct {
	mu sync.Mutex
	m  map[string]string
}

func (in *interner) intern(s string) string {
	if s == "" || len(s) > maxInternedLen {
		return s
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	if v, ok := in.m[s]; ok {
		return v
	}
	if in.m == nil {
		in.m = map[string]string{}
	}
	if len(in.m) < maxInterned {
		in.m[s] = s
	}
	return s
}

// entry is what the View knows about one request or job. Entries are
// immutable once published in a table: updates replace them. There is one
// per request and one per job of the ledger's TTL, so it is kept small
// (64 bytes): times are Unix nanoseconds.
type entry struct {
	// kv is the bucket's record, nil when the bucket holds none.
	kv     *kvRecord
	rev    uint64
	kvTime int64 // when the bucket stored kv
	gen    uint64

	// Local knowledge from Stored. other is the request ID of a job entry,
	// or the job ID of a request entry.
	other    string
	localAt  int64 // when Stored last saw it; 0: never
	terminal bool
}

func (e *entry) empty() bool { return e.kv == nil && e.localAt == 0 }

// linked is the other ID of the pair, when known: the request a job entry
// belongs to, the job a request entry became.
func (e *entry) linked() string {
	if e.kv != nil && e.kv.link != "" {
		return e.kv.link
	}
	return e.other
}

// isTerminal reports whether a job entry is settled.
func (e *entry) isTerminal() bool { return e.terminal || (e.kv != nil && e.kv.terminal) }

const numShards = 64

// table is a sharded map of entries by ID: readers take one shard's read
// lock for a map lookup and get an immutable entry.
type table struct {
	shards [numShards]shard
}

type shard struct {
	mu sync.RWMutex
	m  map[string]*entry
	_  [32]byte // keep hot shards on separate cache lines
}

func (t *table) init() {
	for i := range t.shards {
		t.shards[i].m = map[string]*entry{}
	}
}

func (t *table) shard(id string) *shard {
	// FNV-1a, inline: no allocation on the lookup path.
	h := uint32(2166136261)
	for i := 0; i < len(id); i++ {
		h ^= uint32(id[i])
		h *= 16777619
	}
	return &t.shards[h%numShards]
}

func (t *table) get(id string) *entry {
	s := t.shard(id)
	s.mu.RLock()
	e := s.m[id]
	s.mu.RUnlock()
	return e
}

// update replaces the entry of id by f's result. f gets a copy of the
// current entry (a zero one when there is none) to modify and return; an
// empty result removes the entry.
func (t *table) update(id string, f func(*entry) *entry) {
	s := t.shard(id)
	s.mu.Lock()
	defer s.mu.Unlock()
	var n entry
	if old := s.m[id]; old != nil {
		n = *old
	}
	r := f(&n)
	if r == nil || r.empty() {
		delete(s.m, id)
		return
	}
	s.m[id] = r
}

// filter runs f on a copy of every entry, shard by shard, keeping what it
// returns (an empty result removes the entry).
func (t *table) filter(f func(*entry) *entry) {
	for i := range t.shards {
		s := &t.shards[i]
		s.mu.Lock()
		for id, old := range s.m {
			n := *old
			r := f(&n)
			switch {
			case r == nil || r.empty():
				delete(s.m, id)
			case *r != *old:
				s.m[id] = r
			}
		}
		s.mu.Unlock()
	}
}

// each calls f for every entry under the shard's read lock; f must not
// touch the table.
func (t *table) each(f func(id string, e *entry)) {
	for i := range t.shards {
		s := &t.shards[i]
		s.mu.RLock()
		for id, e := range s.m {
			f(id, e)
		}
		s.mu.RUnlock()
	}
}

func (t *table) len() int {
	n := 0
	for i := range t.shards {
		s := &t.shards[i]
		s.mu.RLock()
		n += len(s.m)
		s.mu.RUnlock()
	}
	return n
}
