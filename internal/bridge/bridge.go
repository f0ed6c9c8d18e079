// Package bridge is the kreabus webhook bridge: it receives Krea's POST
// /webhooks/krea/{token}, checks the token and the body, and publishes the
// job to krea.jobs.<status> on JetStream, answering 2xx only once the
// PubAck is in.
//
// Bridge is the HTTP part, given a NATS connection; Start, Run and Main wire
// it with the configuration, the NATS connection, the KREA_JOBS stream and
// the admin server, as cmd/bridge runs it.
//
// A webhook's way through the files:
//   - webhook.go: where it enters (Bridge.webhook, the handler, step by
//     step) and is answered;
//   - check.go, parse.go: where it is checked (token, headers, body);
//     limits.go and body.go bound what it may hold while it is;
//   - publish.go: where it is published (JetStream, Nats-Msg-Id
//     de-duplication, the PubAck before the 2xx).
package bridge

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/gorilla/mux"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/kreabus/kreabus/internal/ledger"
	"github.com/kreabus/kreabus/internal/logging"
	"github.com/kreabus/kreabus/pkg/events"
)

// Retry-After values, in seconds.
const (
	// RetryAfterUnavailable is sent with 503: NATS or JetStream is down or
	// slow; reconnection is attempted every half second.
	RetryAfterUnavailable = 2
	// RetryAfterBusy is sent with 429.
	RetryAfterBusy = 1
)

// WebhookRoute is the route of webhooks, in gorilla/mux syntax.
const WebhookRoute = events.WebhookPathPrefix + "{token}"

// Deps are what a Bridge works with.
type Deps struct {
	// Conn is the NATS connection events are published on. Required. The
	// bridge never closes it: its owner drains it after Shutdown.
	Conn *nats.Conn
	// Logger defaults to a logger that discards.
	Logger *slog.Logger
	// Registerer gets the bridge's metrics; nil keeps them private.
	Registerer prometheus.Registerer
	// Ledger, when not nil, is asked who owns a job before publishing; a
	// webhook it cannot answer for gets 503.
	Ledger ledger.Index
	// StreamMissing, when not nil, is called when JetStream answers that
	// no stream captures an event (KREA_JOBS deleted or not created yet),
	// so the owner can (re)create it. It must not block.
	StreamMissing func()
}

// Bridge serves webhooks. Create it with New, serve with Serve, stop with
// Shutdown.
type Bridge struct {
	cfg           Config
	nc            *nats.Conn
	js            jetstream.JetStream
	tok           *events.Tokenizer
	log           *slog.Logger
	ledger        ledger.Index
	streamMissing func()
	m             *metrics
	handler       http.Handler
	srv           *http.Server

	inFlight atomic.Int64
	bodies   byteBudget
	tokens   *tokenSlots
	conns    connLimit
	tooLarge atomic.Pointer[limitAnswer] // 413 for the current body limit
	idPrefix string
	idSeq    atomic.Uint64
	bufs     sync.Pool

	okStored, okDuplicate                                         prometheus.Counter
	aMethod, aNotFound, aBusy, aNoToken, aBadToken, aMediaType    *answer
	aEncoding, aUnreadable, aForbidden, aUnavailable              *answer
	aTokenBusy, aBytesBusy                                        *answer
	aParse                                                        map[error]*answer
	retryAfterUnavailable, retryAfterBusy, allowPost, contentJSON []string
	connClose                                                     []string
}

// New returns a Bridge with cfg (defaults applied) publishing on d.Conn.
func New(cfg Config, d Deps) (*Bridge, error) {
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if d.Conn == nil {
		return nil, errors.New("bridge: no NATS connection")
	}
	tok, err := events.NewTokenizer(cfg.Secret, cfg.SecretPrevious)
	if err != nil {
		return nil, err
	}
	// Every webhook's publish pipelines over the one connection; the
	// library resolves a future that gets no PubAck after PublishTimeout,
	// so abandoned futures never pile up.
	js, err := jetstream.New(d.Conn,
		jetstream.WithPublishAsyncTimeout(cfg.PublishTimeout),
		jetstream.WithPublishAsyncMaxPending(max(4*cfg.MaxInFlight, 256)),
	)
	if err != nil {
		return nil, err
	}
	log := d.Logger
	if log == nil {
		log = logging.Discard
	}
	reg := d.Registerer
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	m, err := newMetrics(reg)
	if err != nil {
		return nil, fmt.Errorf("bridge metrics: %w", err)
	}
	var prefix [4]byte
	_, _ = rand.Read(prefix[:])
	b := &Bridge{
		cfg:           cfg,
		nc:            d.Conn,
		js:            js,
		tok:           tok,
		log:           log,
		ledger:        d.Ledger,
		streamMissing: d.StreamMissing,
		m:             m,
		idPrefix:      hex.EncodeToString(prefix[:]) + "-",
		bufs: sync.Pool{New: func() any {
			b := make([]byte, 0, initialBufSize)
			return &b
		}},
		okStored:    m.webhooks.WithLabelValues(OutcomeStored, "200"),
		okDuplicate: m.webhooks.WithLabelValues(OutcomeDuplicate, "200"),

		aMethod:      m.answer(http.StatusMethodNotAllowed, OutcomeMethodNotAllowed, "method not allowed: POST only"),
		aNotFound:    m.answer(http.StatusNotFound, OutcomeNotFound, "not found"),
		aBusy:        m.answer(http.StatusTooManyRequests, OutcomeTooManyRequests, "too many webhooks in flight, retry later"),
		aNoToken:     m.answer(http.StatusUnauthorized, OutcomeUnauthorized, "missing webhook token"),
		aBadToken:    m.answer(http.StatusUnauthorized, OutcomeUnauthorized, "invalid webhook token"),
		aMediaType:   m.answer(http.StatusUnsupportedMediaType, OutcomeUnsupportedMediaType, "content type must be application/json"),
		aEncoding:    m.answer(http.StatusUnsupportedMediaType, OutcomeUnsupportedMediaType, "content encoding not supported"),
		aTokenBusy:   m.answer(http.StatusTooManyRequests, OutcomeTooManyRequests, "too many webhooks in flight for this token, retry later"),
		aBytesBusy:   m.answer(http.StatusTooManyRequests, OutcomeTooManyRequests, "too many webhook bytes in flight, retry later"),
		aUnreadable:  m.answer(http.StatusBadRequest, OutcomeBadRequest, "could not read the body"),
		aForbidden:   m.answer(http.StatusForbidden, OutcomeForbidden, "job belongs to another request"),
		aUnavailable: m.answer(http.StatusServiceUnavailable, OutcomeUnavailable, "event store unavailable, retry later"),
		aParse:       map[error]*answer{},

		retryAfterUnavailable: []string{strconv.Itoa(RetryAfterUnavailable)},
		retryAfterBusy:        []string{strconv.Itoa(RetryAfterBusy)},
		allowPost:             []string{http.MethodPost},
		contentJSON:           []string{"application/json"},
		connClose:             []string{"close"},
	}
	b.bodies.max = int64(cfg.BodyBudget)
	b.tokens = newTokenSlots(cfg.MaxInFlightPerToken)
	b.conns.max = int64(cfg.MaxConns)
	for _, e := range []error{ErrNotJSON, ErrNotObject, ErrJobIDMissing, ErrJobIDInvalid, ErrStatusMissing, ErrStatusInvalid, ErrFieldNotString, ErrFieldAmbiguous, ErrNotUTF8} {
		b.aParse[e] = m.answer(http.StatusBadRequest, OutcomeBadRequest, e.Error())
	}

	// SkipClean: an unclean path is an unknown path (404), not a redirect.
	r := mux.NewRouter().SkipClean(true)
	wh := http.HandlerFunc(b.serveWebhook)
	r.Handle(WebhookRoute, wh)
	// A URL without a token is a missing token (401), not an unknown path.
	r.Handle(events.WebhookPathPrefix, wh)
	r.Handle(strings.TrimSuffix(events.WebhookPathPrefix, "/"), wh)
	r.NotFoundHandler = http.HandlerFunc(b.serveNotFound)
	b.handler = http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		// The one hot path skips the router: mux's regexp matching cost
		// about 40% of the bridge's own CPU per webhook (BenchmarkHandler
		// profile). It takes only what the route matches to the letter: a
		// clean path, one non-empty token segment, nothing escaped.
		if tok, ok := strings.CutPrefix(req.URL.Path, events.WebhookPathPrefix); ok && tok != "" &&
			req.URL.RawPath == "" && strings.IndexByte(tok, '/') < 0 && tok != "." && tok != ".." {
			b.webhook(w, req, tok)
			return
		}
		r.ServeHTTP(w, req)
	})

	b.srv = &http.Server{
		Addr:              cfg.Listen,
		Handler:           b.handler,
		ReadHeaderTimeout: cfg.ReadHeaderTimeout,
		ReadTimeout:       cfg.ReadTimeout,
		WriteTimeout:      cfg.WriteTimeout,
		IdleTimeout:       cfg.IdleTimeout,
		MaxHeaderBytes:    cfg.MaxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		ConnState:         b.conns.hook,
	}
	m.register(reg, b)
	return b, nil
}

// Handler is the bridge's HTTP handler: POST /webhooks/krea/{token}; 405
// for other methods there, 404 elsewhere; JSON bodies throughout.
func (b *Bridge) Handler() http.Handler { return b.handler }

// Server is the hardened http.Server that Serve runs, for inspection.
func (b *Bridge) Server() *http.Server { return b.srv }

// Serve serves webhooks on ln until Shutdown, then returns nil.
func (b *Bridge) Serve(ln net.Listener) error {
	err := b.srv.Serve(ln)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// Shutdown stops accepting connections, lets in-flight webhooks finish
// (each is bounded by the publish timeout) and closes idle connections. If
// ctx ends first, the remaining connections are closed and ctx's error is
// returned.
func (b *Bridge) Shutdown(ctx context.Context) error {
	err := b.srv.Shutdown(ctx)
	if err != nil {
		_ = b.srv.Close()
	}
	return err
}

// InFlight is the number of webhooks being handled.
func (b *Bridge) InFlight() int { return int(b.inFlight.Load()) }

// BodyBytesInFlight is the number of body bytes the webhooks being
// handled hold (at most KREABUS_BODY_BUDGET).
func (b *Bridge) BodyBytesInFlight() int64 { return b.bodies.used.Load() }
