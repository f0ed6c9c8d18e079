// Package mirror copies the results of completed Krea jobs into a
// JetStream Object Store bucket and announces them on krea.jobs.mirrored,
// so consumers read images and videos over NATS instead of HTTP.
//
// For each krea.jobs.completed event it copies every result URL to the
// object "<job_id>/<n><ext>", streaming (memory stays bounded whatever the
// size), then publishes exactly one krea.jobs.mirrored event listing each
// object or, for a URL that could not be copied after retries, its error;
// only then is the completed event acknowledged. An object exists in the
// bucket only once all its bytes are stored (the Object Store writes its
// metadata last), so a mirror killed mid-upload leaves nothing that looks
// complete; the event is delivered again and the copy starts over. A
// redelivered event whose objects are complete downloads nothing.
package mirror

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/kreabus/kreabus/internal/retry"
	"github.com/kreabus/kreabus/pkg/events"
	"github.com/kreabus/kreabus/pkg/krea"
)

// Mirror handles completed job events. Create it with New.
type Mirror struct {
	cfg   Config
	js    jetstream.JetStream
	obs   jetstream.ObjectStore
	store jetstream.Stream // the bucket's stream, to check objects' chunks
	fetch *Fetcher
	log   *slog.Logger
	m     *metrics
}

// New returns a Mirror writing to obs. Zero fields of cfg take their
// defaults. reg, when not nil, gets the mirror's metrics (shared by the
// mirrors of one process).
func New(cfg Config, js jetstream.JetStream, obs jetstream.ObjectStore, log *slog.Logger, reg prometheus.Registerer) (*Mirror, error) {
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	m, err := newMetrics(reg)
	if err != nil {
		return nil, err
	}
	st, err := js.Stream(context.Background(), "OBJ_"+cfg.Bucket)
	if err != nil {
		return nil, fmt.Errorf("mirror: stream of bucket %s: %w", cfg.Bucket, err)
	}
	return &Mirror{
		cfg:   cfg,
		js:    js,
		obs:   obs,
		store: st,
		fetch: NewFetcher(FetchConfig{
			Policy: cfg.policy, MaxBytes: cfg.MaxBytes, Timeout: cfg.Timeout,
			IdleTimeout: cfg.IdleTimeout, RootCAs: cfg.rootCAs,
		}),
		log: log,
		m:   m,
	}, nil
}

// Close releases the fetcher's idle connections.
func (mr *Mirror) Close() { mr.fetch.Close() }

// Handle is the events.JobHandler of krea.jobs.completed: it mirrors the
// job's results and publishes its mirrored event. An error means the
// store or the bus failed (the event is delivered again later); a result
// that cannot be fetched is no error, but an entry in the event.
func (mr *Mirror) Handle(ctx context.Context, ev *events.Event) error {
	if ev.Status != krea.StatusCompleted {
		return nil
	}
	jobID := ev.JobID
	if jobID == "" {
		jobID = ev.Job.JobID
	}
	if !validJobID(jobID) {
		mr.m.jobs.WithLabelValues("invalid").Inc()
		return events.Terminate(fmt.Errorf("mirror: job_id %q cannot name objects", jobID))
	}
	var urls []string
	if ev.Job.Result != nil {
		urls = ev.Job.Result.URLs
	}

	// Keep the event ours while copying: a large video can take longer
	// than the ack wait, and another replica must not start it over.
	stop := mr.keepAlive(ctx)
	defer stop()

	start := time.Now()
	body := events.Mirrored{JobID: jobID, RequestID: ev.RequestID, Objects: make([]events.ResultObject, len(urls))}
	failed := 0
	for i, u := range urls {
		obj, err := mr.copy(ctx, ev, jobID, i, u)
		if err != nil {
			mr.m.jobs.WithLabelValues("retry").Inc()
			return err
		}
		if !obj.OK() {
			failed++
		}
		body.Objects[i] = obj
	}
	data, err := json.Marshal(body)
	if err != nil {
		return err // cannot happen: strings and numbers
	}
	msg := events.NewJobMsg(events.EventHeaders{
		JobID: jobID, Status: events.StatusMirrored, RequestID: ev.RequestID, Source: events.SourceMirror,
		Metadata: ev.Metadata, ExtraJob: ev.ExtraJob, TraceParent: ev.TraceParent,
	}, data)
	ack, err := mr.js.PublishMsg(ctx, msg, jetstream.WithExpectStream(events.StreamJobs))
	if err != nil {
		mr.m.jobs.WithLabelValues("retry").Inc()
		return fmt.Errorf("mirror: publish %s: %w", msg.Subject, err)
	}
	outcome := "mirrored"
	if failed > 0 {
		outcome = "partial"
	}
	if ack.Duplicate {
		outcome = "duplicate"
	}
	mr.m.jobs.WithLabelValues(outcome).Inc()
	mr.m.jobSeconds.Observe(time.Since(start).Seconds())
	mr.log.Info("job mirrored", "job_id", jobID, "request_id", ev.RequestID, "objects", len(urls),
		"failed", failed, "duplicate", ack.Duplicate, "took", time.Since(start).Round(time.Millisecond).String())
	return nil
}

// keepAlive tells JetStream the event is in progress every third of the
// ack wait until stop is called.
func (mr *Mirror) keepAlive(ctx context.Context) (stop func()) {
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		t := time.NewTicker(mr.cfg.AckWait / 3)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-ctx.Done():
				return
			case <-t.C:
				if err := events.InProgress(ctx); err != nil && !errors.Is(err, events.ErrNotHandling) {
					mr.log.Debug("in-progress ack", "err", err)
				}
			}
		}
	}()
	return func() { close(done); <-finished }
}

// copy mirrors the n-th result URL of a job. It returns the object, or an
// entry with the error that made the URL fail for good; an error return
// is a failure of the store (or ctx ended).
func (mr *Mirror) copy(ctx context.Context, ev *events.Event, jobID string, n int, rawURL string) (events.ResultObject, error) {
	name := events.ResultObjectName(jobID, n, rawURL)
	if obj, ok, err := mr.existing(ctx, name, rawURL); err != nil || ok {
		if ok {
			mr.m.objects.WithLabelValues("existing").Inc()
		}
		return obj, err
	}
	attempts := 0
	var obj events.ResultObject
	err := retry.Do(ctx, mr.retry(), func(ctx context.Context) error {
		attempts++
		var err error
		obj, err = mr.download(ctx, ev, jobID, name, rawURL)
		var fe *FetchError
		if err != nil && (!errors.As(err, &fe) || !fe.Retryable || attempts >= mr.cfg.Attempts) {
			return retry.Permanent(err)
		}
		return err
	}, func(err error, attempt int, wait time.Duration) {
		mr.m.retries.Inc()
		mr.log.Info("result download failed; retrying", "job_id", jobID, "object", name, "attempt", attempt, "retry_in", wait.String(), "err", err.Error())
	})
	var fe *FetchError
	switch {
	case err == nil:
		mr.m.objects.WithLabelValues("stored").Inc()
		mr.m.bytes.Add(float64(obj.Size))
		return obj, nil
	case !errors.As(err, &fe) || ctx.Err() != nil:
		return events.ResultObject{}, err // the store, or shutting down
	}
	mr.m.objects.WithLabelValues("error").Inc()
	mr.log.Warn("result not mirrored", "job_id", jobID, "object", name, "attempts", attempts, "err", fe.Error())
	return events.ResultObject{URL: rawURL, Error: fe.Error()}, nil
}

// retry is the pace of a download's attempts: RetryBackoff doubling up to
// MaxRetryBackoff, jittered so that replicas do not retry in step.
func (mr *Mirror) retry() events.Backoff {
	return events.Backoff{Min: mr.cfg.RetryBackoff, Max: max(MaxRetryBackoff, mr.cfg.RetryBackoff)}
}

// existing returns the object already stored under name from rawURL, if
// it is complete: its metadata is there and so are all its chunks. A
// redelivered event then downloads nothing.
func (mr *Mirror) existing(ctx context.Context, name, rawURL string) (events.ResultObject, bool, error) {
	info, err := mr.obs.GetInfo(ctx, name)
	if errors.Is(err, jetstream.ErrObjectNotFound) {
		return events.ResultObject{}, false, nil
	}
	if err != nil {
		return events.ResultObject{}, false, fmt.Errorf("mirror: object %s: %w", name, err)
	}
	if info.Headers.Get(events.HeaderSourceURL) != rawURL {
		return events.ResultObject{}, false, nil
	}
	if info.Chunks > 0 {
		// The metadata is written after the chunks; a chunk publish that
		// failed after it (and the purge that follows) would leave an
		// object that lacks bytes. Count them.
		subj := fmt.Sprintf("$O.%s.C.%s", mr.cfg.Bucket, info.NUID)
		si, err := mr.store.Info(ctx, jetstream.WithSubjectFilter(subj))
		if err != nil {
			return events.ResultObject{}, false, fmt.Errorf("mirror: chunks of %s: %w", name, err)
		}
		if si.State.Subjects[subj] != uint64(info.Chunks) {
			mr.log.Warn("incomplete object found; copying again", "object", name, "chunks", si.State.Subjects[subj], "want", info.Chunks)
			return events.ResultObject{}, false, nil
		}
	}
	return objectOf(info, rawURL), true, nil
}

func objectOf(info *jetstream.ObjectInfo, rawURL string) events.ResultObject {
	return events.ResultObject{
		URL: rawURL, Bucket: info.Bucket, Name: info.Name, Size: info.Size, Digest: info.Digest,
		ContentType: info.Headers.Get(events.HeaderContentType),
	}
}

// download makes one attempt at copying rawURL into the object name. A
// *FetchError is the download's fault; any other error the store's.
func (mr *Mirror) download(ctx context.Context, ev *events.Event, jobID, name, rawURL string) (events.ResultObject, error) {
	start := time.Now()
	d, err := mr.fetch.Open(ctx, rawURL)
	if err != nil {
		return events.ResultObject{}, err
	}
	defer d.Body.Close()
	h := nats.Header{}
	h.Set(events.HeaderContentType, d.ContentType)
	h.Set(events.HeaderSourceURL, rawURL)
	h.Set(events.HeaderJobID, jobID)
	if ev.RequestID != "" {
		h.Set(events.HeaderRequestID, ev.RequestID)
	}
	chunk := chunkSizeFor(mr.js.Conn().MaxPayload())
	ahead := newPrefetch(d.Body, chunk)
	defer ahead.Close() // before the body's Close (defers run last first)
	src := &readErr{r: ahead}
	info, err := mr.obs.Put(ctx, jetstream.ObjectMeta{
		Name:        name,
		Description: "result of Krea job " + jobID,
		Headers:     h,
		Opts:        &jetstream.ObjectMetaOptions{ChunkSize: uint32(chunk)},
	}, src)
	if err != nil {
		if src.err != nil {
			return events.ResultObject{}, src.err // Put gave up because the download did
		}
		return events.ResultObject{}, fmt.Errorf("mirror: store %s: %w", name, err)
	}
	if d.Length >= 0 && int64(info.Size) != d.Length {
		// Cannot pass the HTTP client unnoticed; kept as a last guard.
		return events.ResultObject{}, &FetchError{URL: rawURL, Retryable: true,
			Err: fmt.Errorf("got %d bytes, Content-Length said %d", info.Size, d.Length)}
	}
	mr.m.downloadSeconds.Observe(time.Since(start).Seconds())
	return objectOf(info, rawURL), nil
}

// readErr remembers the error its reader returned, so a failed Put can
// tell a download that failed from a store that did.
type readErr struct {
	r   io.Reader
	err error
}

// Read fills p whole (or reaches the end): the Object Store makes one
// chunk of every Read, and a socket hands out whatever arrived, so without
// this a result would be stored in many small chunks, each a message.
func (r *readErr) Read(p []byte) (int, error) {
	n, err := io.ReadFull(r.r, p)
	if err == io.ErrUnexpectedEOF {
		err = io.EOF // a short last chunk
	}
	if err != nil && err != io.EOF {
		var fe *FetchError
		if errors.As(err, &fe) {
			r.err = fe
		} else {
			r.err = &FetchError{Retryable: true, Err: err}
		}
	}
	return n, err
}

// validJobID accepts what can prefix an object name safely: 1 to 64
// letters, digits, '-' or '_' (Krea's job IDs are UUIDs), as request IDs.
func validJobID(s string) bool { return events.ValidRequestID(s) }
