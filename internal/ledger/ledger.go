package ledger

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/kreabus/kreabus/internal/retry"
	"github.com/kreabus/kreabus/pkg/events"
)

// Errors.
var (
	// ErrNotFound is returned by Request and Job for an ID the ledger does
	// not hold (never recorded, or expired).
	ErrNotFound = errors.New("ledger: not found")
	// ErrConflict is matched by the *ConflictError RecordSubmission and
	// PutRejection return when the request already has another outcome.
	ErrConflict = errors.New("ledger: request already recorded with another job")
	// ErrInvalidRecord is returned for a record whose IDs cannot be keys.
	ErrInvalidRecord = errors.New("ledger: invalid record")
	// ErrChanged is returned by PutRequestAt when the record is no longer
	// at the revision the caller read: another writer got there first.
	ErrChanged = errors.New("ledger: record changed meanwhile")
)

// ConflictError says which job a request is already recorded with.
type ConflictError struct {
	Existing Record
}

func (e *ConflictError) Error() string {
	if e.Existing.JobID == "" {
		return fmt.Sprintf("ledger: request %s is already recorded as %s", e.Existing.RequestID, e.Existing.Status)
	}
	return fmt.Sprintf("ledger: request %s is already recorded with job %s", e.Existing.RequestID, e.Existing.JobID)
}

// Is makes errors.Is(err, ErrConflict) true.
func (e *ConflictError) Is(target error) bool { return target == ErrConflict }

// markerTTL is how long the bucket keeps the markers JetStream leaves when
// the TTL removes a key; they are what tell watchers about expiries.
const markerTTL = 15 * time.Minute

// Ledger is the job ledger bucket. It is safe for concurrent use.
type Ledger struct {
	cfg Config
	js  jetstream.JetStream
	kv  jetstream.KeyValue
	log *slog.Logger
	// ttl is the bucket's own TTL when it has one, else cfg.TTL: how long
	// an entry lives.
	ttl time.Duration
}

// Option configures Open.
type Option func(*Ledger)

// WithLogger sets the logger of the ledger and of what it makes (Recorder,
// Owners, OpenJobs).
func WithLogger(log *slog.Logger) Option {
	return func(l *Ledger) {
		if log != nil {
			l.log = log
		}
	}
}

// Open binds to the ledger bucket, creating it when missing and cfg.Create
// allows. It retries transient failures (NATS or JetStream not up yet)
// until ctx ends, and fails at once when the bucket is missing and may not
// be created. An existing bucket is used as it is; a TTL differing from the
// setting is logged, not changed.
func Open(ctx context.Context, js jetstream.JetStream, cfg Config, opts ...Option) (*Ledger, error) {
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	l := &Ledger{cfg: cfg, js: js, log: slog.New(slog.DiscardHandler), ttl: cfg.TTL}
	for _, o := range opts {
		o(l)
	}
	err := retry.Do(ctx, retry.Reconnect, func(ctx context.Context) error {
		kv, err := l.bind(ctx)
		if errors.Is(err, jetstream.ErrBucketNotFound) || errors.Is(err, jetstream.ErrInvalidBucketName) {
			return retry.Permanent(err)
		}
		l.kv = kv
		return err
	}, func(err error, _ int, wait time.Duration) {
		l.log.Warn("waiting for JetStream to open the ledger bucket", "bucket", cfg.Bucket, "err", err, "retry_in", wait)
	})
	if err != nil {
		return nil, fmt.Errorf("ledger: open bucket %s: %w", cfg.Bucket, err)
	}
	if cfg.Create {
		l.ensureJobChanges(ctx)
	}
	if st, err := l.kv.Status(ctx); err == nil {
		if ttl := st.TTL(); ttl > 0 {
			l.ttl = ttl
			if ttl != cfg.TTL {
				l.log.Warn("ledger bucket has another TTL than configured; keeping the bucket's",
					"bucket", cfg.Bucket, "bucket_ttl", ttl, "configured_ttl", cfg.TTL)
			}
		} else {
			l.log.Warn("ledger bucket has no TTL: it grows without bound (disk and nats-server memory)",
				"bucket", cfg.Bucket, "configured_ttl", cfg.TTL)
		}
	}
	return l, nil
}

func (l *Ledger) bind(ctx context.Context) (jetstream.KeyValue, error) {
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	kv, err := l.js.KeyValue(cctx, l.cfg.Bucket)
	if err == nil || !errors.Is(err, jetstream.ErrBucketNotFound) || !l.cfg.Create {
		return kv, err
	}
	kcfg := jetstream.KeyValueConfig{
		Bucket:         l.cfg.Bucket,
		Description:    "kreabus job ledger: req.<request_id>, job.<job_id>, open.<job_id>, poll.<job_id>",
		History:        1,
		TTL:            l.cfg.TTL,
		Storage:        jetstream.FileStorage,
		Replicas:       l.cfg.replicas(),
		LimitMarkerTTL: min(markerTTL, l.cfg.TTL),
		RePublish:      l.jobChanges(),
	}
	kv, err = l.js.CreateKeyValue(cctx, kcfg)
	if errors.Is(err, jetstream.ErrLimitMarkerTTLNotSupported) {
		// Older servers: expiries are then only noticed locally.
		kcfg.LimitMarkerTTL = 0
		kv, err = l.js.CreateKeyValue(cctx, kcfg)
	}
	if errors.Is(err, jetstream.ErrBucketExists) || errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
		kv, err = l.js.KeyValue(cctx, l.cfg.Bucket) // another replica won the race
	}
	if err == nil {
		l.log.Info("created ledger bucket", "bucket", l.cfg.Bucket, "ttl", l.cfg.TTL, "replicas", l.cfg.replicas())
	}
	return kv, err
}

// JobChangesSubject is where the bucket's stream republishes every job
// record it stores (stream RePublish), for Owners.Follow: a job's record
// reaches every bridge as it is written, without a consumer and without
// history. The last token is the job ID.
func JobChangesSubject(bucket string) string { return "kreabus.ledger." + bucket + ".job.>" }

func (l *Ledger) jobChanges() *jetstream.RePublish {
	return &jetstream.RePublish{
		Source:      "$KV." + l.cfg.Bucket + "." + JobKeyPrefix + ">",
		Destination: JobChangesSubject(l.cfg.Bucket),
	}
}

// ensureJobChanges adds the job-record RePublish to a bucket created
// without it (by an older release, or by hand). Without it, bridges read
// the ledger for every webhook: slower, never wrong. A user without the
// right to update the stream (the bridge's, in config/nats-server.conf)
// leaves that to the submitter.
func (l *Ledger) ensureJobChanges(ctx context.Context) {
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	st, err := l.js.Stream(cctx, "KV_"+l.cfg.Bucket)
	if err != nil {
		return
	}
	cfg := st.CachedInfo().Config
	if cfg.RePublish != nil {
		return
	}
	cfg.RePublish = l.jobChanges()
	if _, err := l.js.UpdateStream(cctx, cfg); err != nil {
		l.log.Info("cannot add the job-record RePublish to the ledger bucket; bridges will read the ledger for every webhook until a program allowed to update it (the submitter) does",
			"bucket", l.cfg.Bucket, "err", err)
		return
	}
	l.log.Info("ledger bucket now republishes job records", "bucket", l.cfg.Bucket, "subject", JobChangesSubject(l.cfg.Bucket))
}

// Bucket returns the bucket name.
func (l *Ledger) Bucket() string { return l.cfg.Bucket }

// TTL returns how long entries live: the bucket's TTL, or the configured
// one when the bucket has none.
func (l *Ledger) TTL() time.Duration { return l.ttl }

// KeyValue returns the underlying bucket, for diagnostics and tests.
func (l *Ledger) KeyValue() jetstream.KeyValue { return l.kv }

// Request returns the record of a request, or ErrNotFound.
func (l *Ledger) Request(ctx context.Context, requestID string) (*Record, error) {
	rec, _, err := l.RequestAt(ctx, requestID)
	return rec, err
}

// RequestAt returns the record of a request and its revision, or
// ErrNotFound. The revision is what PutRequestAt checks.
func (l *Ledger) RequestAt(ctx context.Context, requestID string) (*Record, uint64, error) {
	if !ValidID(requestID) {
		return nil, 0, ErrNotFound
	}
	return l.record(ctx, RequestKey(requestID))
}

// Job returns the record of a job, or ErrNotFound.
func (l *Ledger) Job(ctx context.Context, jobID string) (*Record, error) {
	if !ValidID(jobID) {
		return nil, ErrNotFound
	}
	rec, _, err := l.record(ctx, JobKey(jobID))
	return rec, err
}

func (l *Ledger) record(ctx context.Context, key string) (*Record, uint64, error) {
	rec, rev, err := l.get(ctx, key)
	if err == nil && rec == nil {
		err = ErrNotFound
	}
	return rec, rev, err
}

// get reads a record and its revision. A value that does not decode is
// returned as a nil record with its revision and no error, so writers can
// overwrite it.
func (l *Ledger) get(ctx context.Context, key string) (*Record, uint64, error) {
	e, err := l.kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, 0, ErrNotFound
	}
	if err != nil {
		return nil, 0, fmt.Errorf("ledger: get %s: %w", key, err)
	}
	var rec Record
	if err := json.Unmarshal(e.Value(), &rec); err != nil {
		l.log.Warn("ledger entry does not decode; treating it as absent", "key", key, "err", err)
		return nil, e.Revision(), nil
	}
	return &rec, e.Revision(), nil
}

// put writes rec under key if the key is still at revision rev (0: absent).
func (l *Ledger) put(ctx context.Context, key string, rec *Record, rev uint64) (uint64, error) {
	if !hasMetadata(rec.Metadata) {
		rec.Metadata = nil
	}
	if rec.UpdatedAt.IsZero() {
		rec.UpdatedAt = time.Now().UTC()
	}
	data, err := json.Marshal(rec)
	if err != nil {
		return 0, fmt.Errorf("ledger: encode %s: %w", key, err)
	}
	if rev == 0 {
		rev, err = l.kv.Create(ctx, key, data)
	} else {
		rev, err = l.kv.Update(ctx, key, data, rev)
	}
	if errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
		return 0, ErrChanged
	}
	if err != nil {
		return 0, fmt.Errorf("ledger: put %s: %w", key, err)
	}
	return rev, nil
}

// maxCASAttempts bounds the read-modify-write retries of one update.
const maxCASAttempts = 16

// update is a revision-checked read-modify-write of key: f gets the current
// record (nil when absent) and returns the record to write, or nil to write
// nothing. It returns what the key holds afterwards.
func (l *Ledger) update(ctx context.Context, key string, f func(cur *Record) (*Record, error)) (*Record, error) {
	for range maxCASAttempts {
		cur, rev, err := l.get(ctx, key)
		if err != nil && !errors.Is(err, ErrNotFound) {
			return nil, err
		}
		next, err := f(cur)
		if err != nil || next == nil {
			return cur, err
		}
		next.UpdatedAt = time.Now().UTC()
		_, err = l.put(ctx, key, next, rev)
		if err == nil {
			return next, nil
		}
		if !errors.Is(err, ErrChanged) {
			return nil, err
		}
		// Lost a race with another writer: read again.
	}
	return nil, fmt.Errorf("ledger: write %s: too many concurrent updates", key)
}

// PutRequestAt writes rec as the request's record if the record is still at
// revision rev (0: absent), and returns the new revision. ErrChanged says
// another writer got there first: read again and decide again. The
// submitter moves a request through its lifecycle this way (intent,
// retrying, uncertain), so two deliveries of one request can never both
// send it.
func (l *Ledger) PutRequestAt(ctx context.Context, rec Record, rev uint64) (uint64, error) {
	if !ValidID(rec.RequestID) {
		return 0, fmt.Errorf("%w: request_id %q", ErrInvalidRecord, rec.RequestID)
	}
	if rec.Source == "" {
		rec.Source = events.SourceSubmitter
	}
	rec.UpdatedAt = time.Now().UTC()
	return l.put(ctx, RequestKey(rec.RequestID), &rec, rev)
}

// isExtra reports whether job jobID, made for the request whose record is
// req, is beyond the request's one outcome: the request is recorded with
// another job, or was rejected.
func isExtra(req *Record, jobID string) bool {
	if req == nil {
		return false
	}
	if req.JobID != "" {
		return req.JobID != jobID
	}
	return req.Status == events.StatusRejected
}

// RecordSubmission records that Krea accepted request rec.RequestID as job
// rec.JobID: job.<job_id> first (so the bridge knows the job's owner from
// this moment), open.<job_id> (so the reconciler follows it), then the
// request record, moved to submitted whatever attempt state it was in.
// Recording the same pair again is a no-op. When the request already has
// its outcome (another job, or a rejection), the job is recorded as extra
// and the error is a *ConflictError (matching ErrConflict) naming that
// outcome: the new job is a second, paid job of the request.
//
// Empty SubmittedAt becomes now; Status is set to submitted.
func (l *Ledger) RecordSubmission(ctx context.Context, rec Record) error {
	if !ValidID(rec.RequestID) || !ValidID(rec.JobID) {
		return fmt.Errorf("%w: request_id %q, job_id %q", ErrInvalidRecord, rec.RequestID, rec.JobID)
	}
	now := time.Now().UTC()
	if rec.SubmittedAt.IsZero() {
		rec.SubmittedAt = now
	}
	if rec.Source == "" {
		rec.Source = events.SourceSubmitter
	}
	rec.Status, rec.Terminal, rec.Reason, rec.Rejection = events.StatusSubmitted, false, "", nil
	if !hasMetadata(rec.Metadata) {
		rec.Metadata = nil
	}
	// The request's record decides whether this job is its one job or an
	// extra one; read it first so the job record says so from the start.
	req, _, err := l.RequestAt(ctx, rec.RequestID)
	if err != nil && !errors.Is(err, ErrNotFound) {
		return err
	}
	extra := isExtra(req, rec.JobID)
	job := rec
	job.Attempt, job.IntentAt, job.Extra = 0, time.Time{}, extra
	stored, err := l.update(ctx, JobKey(rec.JobID), func(cur *Record) (*Record, error) {
		if cur != nil {
			return nil, nil // the Recorder or a webhook was first: it knows
		}
		return &job, nil
	})
	if err != nil {
		return err
	}
	if stored != nil && !stored.Terminal {
		if err := l.PutOpen(ctx, *stored); err != nil {
			return err
		}
	}
	if extra {
		return &ConflictError{Existing: *req}
	}
	var conflict *Record
	_, err = l.update(ctx, RequestKey(rec.RequestID), func(cur *Record) (*Record, error) {
		conflict = nil
		switch {
		case cur == nil:
			r := rec
			r.Attempt = max(r.Attempt, 1)
			return &r, nil
		case cur.JobID == rec.JobID:
			return nil, nil
		case isExtra(cur, rec.JobID):
			conflict = cur
			return nil, nil
		}
		r := *cur
		r.JobID, r.Status, r.SubmittedAt, r.Source = rec.JobID, events.StatusSubmitted, rec.SubmittedAt, rec.Source
		if !hasMetadata(r.Metadata) {
			r.Metadata = rec.Metadata
		}
		if r.Path == "" {
			r.Path = rec.Path
		}
		return &r, nil
	})
	if err != nil {
		return err
	}
	if conflict != nil {
		// Settled by someone else between the two reads: this job is extra.
		if _, err := l.update(ctx, JobKey(rec.JobID), func(cur *Record) (*Record, error) {
			if cur == nil || cur.Extra {
				return nil, nil
			}
			r := *cur
			r.Extra = true
			return &r, nil
		}); err != nil {
			return err
		}
		return &ConflictError{Existing: *conflict}
	}
	return nil
}

// PutRejection records that a request was rejected, before its rejected
// event is published, so that a redelivery (a lost ack) re-publishes the
// rejection instead of calling the API again. rec needs RequestID; its
// Status, Terminal and JobID are set here. When the request is already
// recorded with a job, the error is a *ConflictError naming it: the request
// was submitted after all and must not be rejected. Recording a request
// already rejected is a no-op.
func (l *Ledger) PutRejection(ctx context.Context, rec Record) error {
	if !ValidID(rec.RequestID) {
		return fmt.Errorf("%w: request_id %q", ErrInvalidRecord, rec.RequestID)
	}
	rec.JobID, rec.Status, rec.Terminal = "", events.StatusRejected, true
	rec.Source = events.SourceSubmitter
	var conflict *Record
	_, err := l.update(ctx, RequestKey(rec.RequestID), func(cur *Record) (*Record, error) {
		conflict = nil
		switch {
		case cur == nil:
			r := rec
			return &r, nil
		case cur.JobID != "":
			conflict = cur
			return nil, nil
		case cur.Status == events.StatusRejected:
			return nil, nil
		}
		r := rec
		r.Attempt, r.IntentAt, r.SubmittedAt = cur.Attempt, cur.IntentAt, cur.SubmittedAt
		if r.Path == "" {
			r.Path = cur.Path
		}
		if !hasMetadata(r.Metadata) {
			r.Metadata = cur.Metadata
		}
		return &r, nil
	})
	if err != nil {
		return err
	}
	if conflict != nil {
		return &ConflictError{Existing: *conflict}
	}
	return nil
}

// LinkEvidence records what an event of job jobID carrying requestID's
// token proves: the request made that job. A request record still without
// a job (sending, retrying or uncertain) becomes submitted with it; this
// is how a webhook settles a call whose answer was lost. It reports
// whether the job is extra: the request has another job already, or was
// rejected. A request the ledger does not hold is left alone.
func (l *Ledger) LinkEvidence(ctx context.Context, requestID, jobID string, at time.Time, source events.Source) (extra bool, err error) {
	if !ValidID(requestID) || !ValidID(jobID) {
		return false, nil
	}
	_, err = l.update(ctx, RequestKey(requestID), func(cur *Record) (*Record, error) {
		extra = false
		switch {
		case cur == nil || cur.JobID == jobID:
			return nil, nil
		case isExtra(cur, jobID):
			extra = true
			return nil, nil
		}
		r := *cur
		r.JobID, r.Status, r.Source = jobID, events.StatusSubmitted, source
		if r.SubmittedAt.IsZero() {
			r.SubmittedAt = at.UTC()
		}
		return &r, nil
	})
	return extra, err
}
