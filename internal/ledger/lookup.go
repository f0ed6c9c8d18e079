package ledger

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/nats-io/nats.go"

	"github.com/kreabus/kreabus/pkg/krea"
)

// Ownership is what the ledger knows about a (request, job) pair named by a
// webhook.
type Ownership struct {
	// Foreign is true when the ledger gives the job to another request:
	// the webhook is not ours to accept (403).
	Foreign bool
	// Terminal is true when a terminal event of the job is already stored:
	// a terminal webhook is a duplicate, however late.
	Terminal bool
	// Extra is true when the job is a second (paid) job of its request: the
	// request is recorded with another job, or was rejected. Its events
	// are stored all the same, marked Kreabus-Extra-Job.
	Extra bool
	// Metadata is the request's metadata (compact JSON), when known; nil
	// when Foreign. The slice is shared: do not modify it.
	Metadata json.RawMessage
	// Cached is true when the answer came from memory, without a ledger
	// read.
	Cached bool
}

// Index answers ownership questions for the bridge and learns from the
// events it stored. *Owners implements it.
type Index interface {
	// Lookup says what the ledger knows about a webhook for jobID that
	// came with a token for requestID. An error means the ledger could not
	// be read: the caller cannot tell a foreign job and must not store.
	// ctx bounds the reads; without a deadline, the ledger's ReadTimeout
	// does.
	Lookup(ctx context.Context, requestID, jobID string) (Ownership, error)
	// Stored tells the index that an event of jobID with status, answering
	// requestID, was stored, with the ownership Lookup gave.
	Stored(requestID, jobID string, status krea.Status, own Ownership)
}

// DefaultCacheSize is how many jobs an Owners keeps in memory.
const DefaultCacheSize = 32768

// Owners answers Lookup from memory when it can and from the bucket
// otherwise, reading job.<job_id> and, only when the bucket holds no such
// job, req.<request_id>. Nothing is loaded at start and nothing grows with
// the bucket: what it keeps is a bounded cache of jobs, filled by Follow
// with every job record written while it runs (so the webhook of a job
// submitted minutes ago needs no read) and by reads of terminal jobs
// (whose owner and state never change again, so repeats need no read).
type Owners struct {
	l     *Ledger
	cache *jobCache
}

var _ Index = (*Owners)(nil)

// Owners returns an Index on the bucket with a cache of size jobs
// (DefaultCacheSize when size is 0, none when negative).
func (l *Ledger) Owners(size int) *Owners {
	if size == 0 {
		size = DefaultCacheSize
	}
	return &Owners{l: l, cache: newJobCache(size)}
}

// Lookup implements Index.
func (o *Owners) Lookup(ctx context.Context, requestID, jobID string) (Ownership, error) {
	if f, ok := o.cache.get(jobID); ok {
		own := f.ownership(requestID)
		own.Cached = true
		return own, nil
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, o.l.cfg.ReadTimeout)
		defer cancel()
	}
	jr, err := o.l.Job(ctx, jobID)
	switch {
	case err == nil:
		f := jobFacts{owner: jr.RequestID, terminal: jr.Terminal, extra: jr.Extra, metadata: jr.Metadata}
		if jr.Terminal {
			o.cache.put(jobID, f)
		}
		return f.ownership(requestID), nil
	case !errors.Is(err, ErrNotFound):
		return Ownership{}, err
	}
	// A job the ledger does not hold: the answer to a call whose outcome
	// was unknown, an extra job, or a job of a program that calls Krea
	// itself. The request's record tells which.
	rr, err := o.l.Request(ctx, requestID)
	switch {
	case err == nil:
		return Ownership{Extra: isExtra(rr, jobID), Metadata: rr.Metadata}, nil
	case errors.Is(err, ErrNotFound):
		return Ownership{}, nil
	}
	return Ownership{}, err
}

// Stored implements Index: a terminal job is settled for good, so its
// answer is cached.
func (o *Owners) Stored(requestID, jobID string, status krea.Status, own Ownership) {
	if !status.IsTerminal() || own.Foreign || jobID == "" {
		return
	}
	// The cache copies what it keeps: the IDs may be slices of a
	// request's buffers.
	o.cache.put(jobID, jobFacts{owner: requestID, terminal: true, extra: own.Extra, metadata: own.Metadata})
}

// Follow keeps the cache fed with every job record the bucket stores from
// now on (JobChangesSubject, the bucket's RePublish), until ctx ends. A
// republished record is the whole record as stored, so the latest one is
// the truth whatever came before; what could make an entry stale is a
// message missed, so the cache is emptied whenever the connection is lost
// or comes back, and when the subscription drops messages. Without the
// RePublish (a bucket no program could update) nothing arrives and every
// first webhook of a job reads the ledger.
func (o *Owners) Follow(ctx context.Context) error {
	if o.cache.off() {
		return nil
	}
	nc := o.l.js.Conn()
	status := nc.StatusChanged(nats.DISCONNECTED, nats.RECONNECTING, nats.CONNECTED)
	var dropped int
	sub, err := nc.Subscribe(JobChangesSubject(o.l.cfg.Bucket), func(m *nats.Msg) {
		if d, _ := m.Sub.Dropped(); d != dropped {
			dropped = d
			o.cache.clear()
		}
		o.apply(m)
	})
	if err != nil {
		nc.RemoveStatusListener(status)
		return fmt.Errorf("ledger: follow job records: %w", err)
	}
	go func() {
		defer nc.RemoveStatusListener(status)
		for {
			select {
			case <-ctx.Done():
				_ = sub.Unsubscribe()
				return
			case <-status:
				o.cache.clear()
			}
		}
	}()
	return nil
}

// apply folds one republished job record into the cache.
func (o *Owners) apply(m *nats.Msg) {
	i := strings.LastIndexByte(m.Subject, '.')
	id := m.Subject[i+1:]
	if i < 0 || !ValidID(id) {
		return
	}
	if m.Header.Get("KV-Operation") != "" || m.Header.Get("Nats-Marker-Reason") != "" || len(m.Data) == 0 {
		// Deleted, purged, or expired (the server's marker).
		o.cache.remove(id)
		return
	}
	f, err := readJobFacts(m.Data)
	if err != nil || f.owner == "" {
		return
	}
	o.cache.put(id, f)
}
