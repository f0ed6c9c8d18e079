package ledger

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/kreabus/kreabus/pkg/events"
)

// Errors.
var (
	// ErrNotFound is returned by Request and Job for an ID the ledger does
	// not hold (never recorded, or expired).
	ErrNotFound = errors.New("ledger: not found")
	// ErrConflict is matched by the *ConflictError PutRequest returns when
	// the request is already recorded with another job.
	ErrConflict = errors.New("ledger: request already recorded with another job")
	// ErrInvalidRecord is returned for a record whose IDs cannot be keys.
	ErrInvalidRecord = errors.New("ledger: invalid record")
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
	// ttl is the bucket's own TTL when it has one, else cfg.TTL: the
	// horizon after which views forget entries.
	ttl time.Duration
}

// Option configures Open.
type Option func(*Ledger)

// WithLogger sets the logger of the ledger, its Recorder and views.
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
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.setDefaults()
	l := &Ledger{cfg: cfg, js: js, log: slog.New(slog.DiscardHandler), ttl: cfg.TTL}
	for _, o := range opts {
		o(l)
	}
	backoff := 100 * time.Millisecond
	for {
		kv, err := l.bind(ctx)
		if err == nil {
			l.kv = kv
			break
		}
		if errors.Is(err, jetstream.ErrBucketNotFound) || errors.Is(err, jetstream.ErrInvalidBucketName) {
			return nil, fmt.Errorf("ledger: bucket %s: %w", cfg.Bucket, err)
		}
		l.log.Warn("waiting for JetStream to open the ledger bucket", "bucket", cfg.Bucket, "err", err)
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("ledger: open bucket %s: %w (last error: %v)", cfg.Bucket, ctx.Err(), err)
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
	if st, err := l.kv.Status(ctx); err == nil {
		if ttl := st.TTL(); ttl > 0 {
			l.ttl = ttl
			if ttl != cfg.TTL {
				l.log.Warn("ledger bucket has another TTL than configured; keeping the bucket's",
					"bucket", cfg.Bucket, "bucket_ttl", ttl, "configured_ttl", cfg.TTL)
			}
		} else {
			l.log.Warn("ledger bucket has no TTL: it grows without bound; views still forget entries after the configured TTL",
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
		Description:    "kreabus job ledger: req.<request_id> and job.<job_id>",
		History:        1,
		TTL:            l.cfg.TTL,
		Storage:        jetstream.FileStorage,
		Replicas:       l.cfg.Replicas,
		LimitMarkerTTL: min(markerTTL, l.cfg.TTL),
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
		l.log.Info("created ledger bucket", "bucket", l.cfg.Bucket, "ttl", l.cfg.TTL, "replicas", l.cfg.Replicas)
	}
	return kv, err
}

// Bucket returns the bucket name.
func (l *Ledger) Bucket() string { return l.cfg.Bucket }

// TTL returns how long entries live: the bucket's TTL, or the configured
// one when the bucket has none.
func (l *Ledger) TTL() time.Duration { return l.ttl }

// KeyValue returns the underlying bucket, for diagnostics and tests.
func (l *Ledger) KeyValue() jetstream.KeyValue { return l.kv }

// PutRejection records that a request was rejected, before its rejected
// event is published, so that a redelivery (a lost ack) re-publishes the
// rejection instead of calling the API again. rec needs RequestID; its
// Status, Terminal and JobID are set here. When the request is already
// recorded with a job, the error is a *ConflictError naming it: the request
// was submitted after all and must not be rejected. Recording the same
// rejection again is a no-op.
func (l *Ledger) PutRejection(ctx context.Context, rec Record) error {
	if !validID(rec.RequestID) {
		return fmt.Errorf("%w: request_id %q", ErrInvalidRecord, rec.RequestID)
	}
	now := time.Now().UTC()
	rec.JobID, rec.Status, rec.Terminal = "", events.StatusRejected, true
	rec.Source = events.SourceSubmitter
	rec.UpdatedAt = now
	if !hasMetadata(rec.Metadata) {
		rec.Metadata = nil
	}
	data, err := json.Marshal(rec)
	if err != nil {
		return fmt.Errorf("ledger: encode rejection record: %w", err)
	}
	key := RequestKey(rec.RequestID)
	if _, err = l.kv.Create(ctx, key, data); err == nil {
		return nil
	} else if !errors.Is(err, jetstream.ErrKeyExists) {
		return fmt.Errorf("ledger: put %s: %w", key, err)
	}
	have, err := l.Request(ctx, rec.RequestID)
	if err != nil {
		return fmt.Errorf("ledger: put %s: exists, but reading it failed: %w", key, err)
	}
	if have.JobID != "" {
		return &ConflictError{Existing: *have}
	}
	return nil
}

// PutRequest records that the API accepted request rec.RequestID as job
// rec.JobID. The submitter calls it right after the API answered and before
// it acknowledges the request message, so a redelivered request finds the
// record (Request) and is not paid twice.
//
// Empty SubmittedAt and UpdatedAt become now, an empty Status "submitted"
// and an empty Source "submitter". Recording the same pair again is a no-op;
// a request already recorded with another job is a *ConflictError
// (ErrConflict) and the first record stays.
func (l *Ledger) PutRequest(ctx context.Context, rec Record) error {
	if !validID(rec.RequestID) || !validID(rec.JobID) {
		return fmt.Errorf("%w: request_id %q, job_id %q", ErrInvalidRecord, rec.RequestID, rec.JobID)
	}
	now := time.Now().UTC()
	if rec.SubmittedAt.IsZero() {
		rec.SubmittedAt = now
	}
	if rec.UpdatedAt.IsZero() {
		rec.UpdatedAt = now
	}
	if rec.Status == "" {
		rec.Status = events.StatusSubmitted
	}
	if rec.Source == "" {
		rec.Source = events.SourceSubmitter
	}
	if !hasMetadata(rec.Metadata) {
		rec.Metadata = nil
	}
	data, err := json.Marshal(rec)
	if err != nil {
		return fmt.Errorf("ledger: encode request record: %w", err)
	}
	key := RequestKey(rec.RequestID)
	_, err = l.kv.Create(ctx, key, data)
	if err == nil {
		return nil
	}
	if !errors.Is(err, jetstream.ErrKeyExists) {
		return fmt.Errorf("ledger: put %s: %w", key, err)
	}
	have, gerr := l.Request(ctx, rec.RequestID)
	if gerr != nil {
		return fmt.Errorf("ledger: put %s: exists, but reading it failed: %w", key, gerr)
	}
	if have.JobID != rec.JobID {
		return &ConflictError{Existing: *have}
	}
	return nil
}

// Request returns the record of a request, or ErrNotFound.
func (l *Ledger) Request(ctx context.Context, requestID string) (*Record, error) {
	if !validID(requestID) {
		return nil, ErrNotFound
	}
	return l.record(ctx, RequestKey(requestID))
}

// Job returns the record of a job, or ErrNotFound.
func (l *Ledger) Job(ctx context.Context, jobID string) (*Record, error) {
	if !validID(jobID) {
		return nil, ErrNotFound
	}
	return l.record(ctx, JobKey(jobID))
}

func (l *Ledger) record(ctx context.Context, key string) (*Record, error) {
	rec, _, err := l.get(ctx, key)
	if err == nil && rec == nil {
		err = ErrNotFound
	}
	return rec, err
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
