package events

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Results bucket defaults.
const (
	// DefaultResultsBucket is the Object Store bucket the mirror copies
	// completed jobs' results into.
	DefaultResultsBucket = "KREA_RESULTS"
	// DefaultResultsTTL is how long a result is kept: as long as the job
	// events that point at it (DefaultJobsMaxAge).
	DefaultResultsTTL = DefaultJobsMaxAge
)

// ResultsOptions configure the results bucket.
type ResultsOptions struct {
	Bucket   string        // default DefaultResultsBucket
	TTL      time.Duration // default DefaultResultsTTL
	Replicas int           // default DefaultReplicas
	// Storage defaults to file storage.
	Storage jetstream.StorageType
}

func (o *ResultsOptions) setDefaults() {
	if o.Bucket == "" {
		o.Bucket = DefaultResultsBucket
	}
	if o.TTL <= 0 {
		o.TTL = DefaultResultsTTL
	}
	if o.Replicas <= 0 {
		o.Replicas = DefaultReplicas
	}
}

// ResultsStoreConfig is the configuration of the results bucket. Its TTL
// also ages out the chunks of an upload that never finished (a mirror
// killed mid-upload): they belong to no object and nothing reads them.
func ResultsStoreConfig(o ResultsOptions) jetstream.ObjectStoreConfig {
	o.setDefaults()
	return jetstream.ObjectStoreConfig{
		Bucket:      o.Bucket,
		Description: "kreabus: results of completed Krea jobs",
		TTL:         o.TTL,
		Storage:     o.Storage,
		Replicas:    o.Replicas,
	}
}

// EnsureResultsStore opens the results bucket, creating it when missing
// (an existing bucket is left as its operator configured it).
func EnsureResultsStore(ctx context.Context, js jetstream.JetStream, cfg jetstream.ObjectStoreConfig) (jetstream.ObjectStore, error) {
	obs, err := js.ObjectStore(ctx, cfg.Bucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		obs, err = js.CreateObjectStore(ctx, cfg)
		if errors.Is(err, jetstream.ErrBucketExists) || errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
			obs, err = js.ObjectStore(ctx, cfg.Bucket) // lost a race with another replica
		}
	}
	if err != nil {
		return nil, fmt.Errorf("events: object store %s: %w", cfg.Bucket, err)
	}
	return obs, nil
}

// Mirrored is the body of a krea.jobs.mirrored event: where the results of
// a completed job are in the Object Store, one entry per URL of the job's
// result, in the same order.
type Mirrored struct {
	JobID     string         `json:"job_id"`
	RequestID string         `json:"request_id,omitempty"`
	Objects   []ResultObject `json:"objects"`
}

// ResultObject is one result URL of a job: either the object it was copied
// to (Bucket, Name, Size, Digest, ContentType) or, when it could not be
// copied, Error.
type ResultObject struct {
	URL         string `json:"url"`
	Bucket      string `json:"bucket,omitempty"`
	Name        string `json:"name,omitempty"`
	Size        uint64 `json:"size"`
	Digest      string `json:"digest,omitempty"` // the Object Store's, "SHA-256=<base64url>"
	ContentType string `json:"content_type,omitempty"`
	Error       string `json:"error,omitempty"`
}

// OK reports whether the URL was copied.
func (o ResultObject) OK() bool { return o.Error == "" && o.Name != "" }

// MarshalJSON writes {"url","bucket","name","size","digest","content_type"}
// for a copied result and {"url","error"} for one that was not.
func (o ResultObject) MarshalJSON() ([]byte, error) {
	if o.Error != "" {
		return json.Marshal(struct {
			URL   string `json:"url"`
			Error string `json:"error"`
		}{o.URL, o.Error})
	}
	type plain ResultObject // no methods: no recursion
	return json.Marshal(plain(o))
}

// Objects returns the result objects of a krea.jobs.mirrored event, nil for
// any other event.
func (e *Event) Objects() []ResultObject {
	if e.Mirrored == nil {
		return nil
	}
	return e.Mirrored.Objects
}

// ErrResultUnavailable is matched (errors.Is) by the error of OpenResult
// for a result the mirror could not copy, or whose object is gone (its
// TTL passed).
var ErrResultUnavailable = errors.New("events: result unavailable")

// ResultError is the error of OpenResult for a result it cannot open.
type ResultError struct {
	URL, Bucket, Name string
	Err               error // the mirror's error text, or the Object Store's
}

func (e *ResultError) Error() string {
	if e.Name == "" {
		return fmt.Sprintf("events: result %s was not mirrored: %v", e.URL, e.Err)
	}
	return fmt.Sprintf("events: result %s/%s: %v", e.Bucket, e.Name, e.Err)
}

// Unwrap returns ErrResultUnavailable and the cause.
func (e *ResultError) Unwrap() []error { return []error{ErrResultUnavailable, e.Err} }

// OpenResult opens a mirrored result for reading. The reader streams the
// object chunk by chunk (whatever its size, nothing is buffered whole) and
// its last Read fails with jetstream.ErrDigestMismatch if the bytes do not
// match the stored digest. Close it when done.
func OpenResult(ctx context.Context, js jetstream.JetStream, obj ResultObject) (io.ReadCloser, error) {
	if !obj.OK() {
		msg := obj.Error
		if msg == "" {
			msg = "no object name"
		}
		return nil, &ResultError{URL: obj.URL, Err: errors.New(msg)}
	}
	bucket := obj.Bucket
	if bucket == "" {
		bucket = DefaultResultsBucket
	}
	obs, err := js.ObjectStore(ctx, bucket)
	if err != nil {
		return nil, &ResultError{URL: obj.URL, Bucket: bucket, Name: obj.Name, Err: err}
	}
	r, err := obs.Get(ctx, obj.Name)
	if err != nil {
		return nil, &ResultError{URL: obj.URL, Bucket: bucket, Name: obj.Name, Err: err}
	}
	return r, nil
}

// maxExtLen bounds the extension kept in an object name.
const maxExtLen = 8

// ResultObjectName is the name of the object the n-th URL (0-based, in
// result.urls order) of a job's result is stored under:
// "<job_id>/<n><ext>", the extension taken from the URL's path when it is
// 1 to 8 letters or digits (".png", ".mp4"), lower-cased. It depends only
// on the job and the URL, so every replica and every redelivery picks the
// same name.
func ResultObjectName(jobID string, n int, rawURL string) string {
	return jobID + "/" + strconv.Itoa(n) + resultExt(rawURL)
}

// resultExt is the extension of the URL's path, or "".
func resultExt(rawURL string) string {
	p := rawURL
	if i := strings.IndexAny(p, "?#"); i >= 0 {
		p = p[:i]
	}
	if i := strings.Index(p, "://"); i >= 0 {
		p = p[i+3:]
		if j := strings.IndexByte(p, '/'); j >= 0 {
			p = p[j:]
		} else {
			p = ""
		}
	}
	ext := path.Ext(p)
	if len(ext) < 2 || len(ext) > maxExtLen+1 {
		return ""
	}
	b := []byte(strings.ToLower(ext))
	for _, c := range b[1:] {
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') {
			return ""
		}
	}
	return string(b)
}

// decodeMirrored decodes and checks a mirrored event's body.
func decodeMirrored(data []byte) (*Mirrored, error) {
	var m Mirrored
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&m); err != nil {
		return nil, err
	}
	if dec.More() {
		return nil, errors.New("trailing data after the body")
	}
	if m.JobID == "" {
		return nil, errors.New("no job_id")
	}
	if m.Objects == nil {
		return nil, errors.New("no objects list")
	}
	for i, o := range m.Objects {
		if o.URL == "" {
			return nil, fmt.Errorf("objects[%d]: no url", i)
		}
		if o.Error == "" && o.Name == "" {
			return nil, fmt.Errorf("objects[%d]: neither name nor error", i)
		}
	}
	return &m, nil
}
