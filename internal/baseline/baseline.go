// Package baseline is the obvious minimal webhook bridge, kept as the
// yardstick for kreabus' own: a net/http server that checks the token with
// events.Tokenizer, decodes the body with json.Unmarshal, publishes it with
// one synchronous JetStream publish per request (Nats-Msg-Id = job_id for
// terminal statuses) and answers 200 once the PubAck is in. It keeps the
// guarantees (200 means stored, a repeat is answered as a duplicate) and
// nothing else: no metrics, no in-flight limit, no batching.
package baseline

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kreabus/kreabus/pkg/events"
	"github.com/kreabus/kreabus/pkg/krea"
)

// Config configures a baseline bridge.
type Config struct {
	NATSURL string
	Secret  string
	// Replicas of KREA_JOBS when it has to be created (default 1).
	Replicas int
	// PublishTimeout bounds the wait for a PubAck (default 5 s).
	PublishTimeout time.Duration
}

// MaxBody is the largest webhook body accepted.
const MaxBody = 1 << 20

// Bridge is the baseline bridge; it is an http.Handler.
type Bridge struct {
	nc      *nats.Conn
	js      jetstream.JetStream
	tok     *events.Tokenizer
	timeout time.Duration
	mux     *http.ServeMux
}

// New connects to NATS, creates KREA_JOBS (file storage, 1 h duplicate
// window) when missing and returns the bridge.
func New(ctx context.Context, cfg Config) (*Bridge, error) {
	tok, err := events.NewTokenizer(cfg.Secret, "")
	if err != nil {
		return nil, err
	}
	if cfg.PublishTimeout <= 0 {
		cfg.PublishTimeout = 5 * time.Second
	}
	nc, err := nats.Connect(cfg.NATSURL, nats.Name("kreabus-baseline"), nats.MaxReconnects(-1))
	if err != nil {
		return nil, fmt.Errorf("baseline: nats connect: %w", err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, err
	}
	scfg := events.JobsStreamConfig(events.StreamOptions{Replicas: cfg.Replicas, Storage: jetstream.FileStorage})
	if _, err := events.EnsureStream(ctx, js, scfg); err != nil {
		nc.Close()
		return nil, err
	}
	b := &Bridge{nc: nc, js: js, tok: tok, timeout: cfg.PublishTimeout, mux: http.NewServeMux()}
	b.mux.HandleFunc("POST "+events.WebhookPathPrefix+"{token}", b.webhook)
	return b, nil
}

// Close closes the NATS connection.
func (b *Bridge) Close() { b.nc.Close() }

// ServeHTTP serves POST /webhooks/krea/{token}.
func (b *Bridge) ServeHTTP(w http.ResponseWriter, r *http.Request) { b.mux.ServeHTTP(w, r) }

type webhookBody struct {
	JobID  string      `json:"job_id"`
	Status krea.Status `json:"status"`
}

type answer struct {
	JobID     string      `json:"job_id"`
	Status    krea.Status `json:"status"`
	Duplicate bool        `json:"duplicate"`
}

func (b *Bridge) webhook(w http.ResponseWriter, r *http.Request) {
	requestID, err := b.tok.Verify(r.PathValue("token"))
	if err != nil {
		writeError(w, http.StatusUnauthorized, "invalid token")
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBody))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			writeError(w, http.StatusRequestEntityTooLarge, "body too large")
			return
		}
		writeError(w, http.StatusBadRequest, "cannot read body")
		return
	}
	var job webhookBody
	if err := json.Unmarshal(body, &job); err != nil {
		writeError(w, http.StatusBadRequest, "body is not a JSON job object")
		return
	}
	if !krea.ValidJobID(job.JobID) || !job.Status.Valid() {
		writeError(w, http.StatusBadRequest, "invalid job_id or status")
		return
	}
	msg := events.NewJobMsg(events.EventHeaders{
		JobID:     job.JobID,
		Status:    job.Status,
		RequestID: requestID,
		Source:    events.SourceWebhook,
	}, body)
	ctx, cancel := context.WithTimeout(r.Context(), b.timeout)
	ack, err := b.js.PublishMsg(ctx, msg)
	cancel()
	if err != nil {
		w.Header().Set("Retry-After", "1")
		writeError(w, http.StatusServiceUnavailable, "jetstream unavailable")
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(answer{JobID: job.JobID, Status: job.Status, Duplicate: ack.Duplicate})
}

func writeError(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(map[string]string{"error": msg})
}

// Serve serves the bridge on ln until ctx is done, then shuts down
// gracefully (in-flight requests finish).
func Serve(ctx context.Context, ln net.Listener, h http.Handler) error {
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		return err
	}
	if err := <-errc; !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
