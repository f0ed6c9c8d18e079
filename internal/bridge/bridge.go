// Package bridge is the kreabus webhook bridge: it receives Krea's POST
// /webhooks/krea/{token}, checks the token and the body, and publishes the
// job to krea.jobs.<status> on JetStream, answering 2xx only once the
// PubAck is in.
//
// Bridge is the HTTP part, given a NATS connection; Start, Run and Main wire
// it with the configuration, the NATS connection, the KREA_JOBS stream and
// the admin server, as cmd/bridge runs it.
package bridge

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/mux"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/kreabus/kreabus/internal/clip"
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

// Pool limits for body buffers.
const (
	initialBufSize = 4 << 10
	maxPooledBuf   = 64 << 10
)

// HeaderRoom is what the bridge keeps, under the NATS server's
// max_payload, for an event's headers (the request's metadata, up to
// 4 KiB, and the contract headers): a body larger than max_payload less
// HeaderRoom could never be stored, so it is refused with 413.
const HeaderRoom = 8 << 10

// limitAnswer is the 413 answer naming the body limit in force.
type limitAnswer struct {
	limit int
	a     *answer
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

// MaxBody is the body limit in force: KREABUS_MAX_BODY, lowered to what
// the NATS server takes (its max_payload less HeaderRoom) while connected
// to a server that takes less.
func (b *Bridge) MaxBody() int {
	limit := b.cfg.MaxBody
	if mp := b.nc.MaxPayload() - HeaderRoom; mp > 0 && mp < int64(limit) {
		limit = int(mp)
	}
	return limit
}

// tooLargeAnswer is the 413 answer for limit, made once per limit.
func (b *Bridge) tooLargeAnswer(limit int) *answer {
	if la := b.tooLarge.Load(); la != nil && la.limit == limit {
		return la.a
	}
	la := &limitAnswer{limit: limit, a: b.m.answer(http.StatusRequestEntityTooLarge, OutcomeTooLarge,
		"body larger than "+strconv.Itoa(limit)+" bytes")}
	b.tooLarge.Store(la)
	return la.a
}

func (b *Bridge) newRequestID() string {
	var buf [32]byte
	s := append(buf[:0], b.idPrefix...)
	s = strconv.AppendUint(s, b.idSeq.Add(1), 36)
	return string(s)
}

func (b *Bridge) serveNotFound(w http.ResponseWriter, r *http.Request) {
	rid := b.newRequestID()
	w.Header()["X-Request-Id"] = []string{rid}
	b.reject(w, r, rid, b.aNotFound)
}

func (b *Bridge) serveWebhook(w http.ResponseWriter, r *http.Request) {
	b.webhook(w, r, mux.Vars(r)["token"])
}

// webhook handles one webhook POSTed with token.
func (b *Bridge) webhook(w http.ResponseWriter, r *http.Request, token string) {
	rid := b.newRequestID()
	h := w.Header()
	h["X-Request-Id"] = []string{rid}
	if r.Method != http.MethodPost {
		h["Allow"] = b.allowPost
		b.reject(w, r, rid, b.aMethod)
		return
	}

	// Nothing is read or held before the token is verified; then the
	// token's slot, the global slot and the body's bytes are taken in
	// that order, each refused at once, so an offender meets its own
	// limit before it can take anyone else's share.
	if token == "" {
		b.reject(w, r, rid, b.aNoToken)
		return
	}
	requestID, err := b.tok.Verify(token)
	if err != nil {
		// Log at most the request ID part of the token, never the MAC.
		b.reject(w, r, rid, b.aBadToken, slog.String("token_request_id", tokenRequestID(token)))
		return
	}
	// No Content-Type at all is let through to the body check: Krea does
	// not document the header, and a JSON body proves itself below.
	if ct := r.Header.Get("Content-Type"); ct != "" && !isJSONContentType(ct) {
		b.reject(w, r, rid, b.aMediaType, slog.String("request_id", requestID),
			slog.String("content_type", clip.String(r.Header.Get("Content-Type"), 64)))
		return
	}
	if ce := r.Header.Get("Content-Encoding"); ce != "" && !strings.EqualFold(ce, "identity") {
		b.reject(w, r, rid, b.aEncoding, slog.String("request_id", requestID),
			slog.String("content_encoding", clip.String(ce, 64)))
		return
	}
	maxBody := b.MaxBody()
	if r.ContentLength > int64(maxBody) {
		b.reject(w, r, rid, b.tooLargeAnswer(maxBody), slog.String("request_id", requestID),
			slog.Int64("content_length", r.ContentLength))
		return
	}

	if !b.tokens.acquire(requestID) {
		b.shed(h)
		b.reject(w, r, rid, b.aTokenBusy, slog.String("request_id", requestID))
		return
	}
	defer b.tokens.release(requestID)
	n := b.inFlight.Add(1)
	defer b.inFlight.Add(-1)
	if n > int64(b.cfg.MaxInFlight) {
		b.shed(h)
		b.reject(w, r, rid, b.aBusy, slog.String("request_id", requestID))
		return
	}

	bp := b.bufs.Get().(*[]byte)
	defer b.putBuf(bp)
	var held int64 // body bytes taken from the budget
	defer func() { b.bodies.give(held) }()
	body, err := b.readBody(w, r, bp, maxBody, &held)
	if err != nil {
		a := b.aUnreadable
		var mbe *http.MaxBytesError
		switch {
		case errors.Is(err, errBodyBudget):
			b.shed(h)
			a = b.aBytesBusy
		case errors.As(err, &mbe):
			a = b.tooLargeAnswer(maxBody)
		}
		b.reject(w, r, rid, a, slog.String("request_id", requestID), slog.String("err", err.Error()))
		return
	}

	wh, err := ParseWebhook(body)
	if err != nil {
		a := b.aParse[err]
		if a == nil {
			a = b.aParse[ErrNotJSON]
		}
		b.reject(w, r, rid, a, slog.String("request_id", requestID), slog.Int("body_bytes", len(body)))
		return
	}

	// One deadline for the owner lookup and the PubAck together: the
	// sender's answer comes within PublishTimeout of the body's end. A
	// lookup answered from memory (most) takes no time, and the library
	// bounds the PubAck by PublishTimeout without a context of ours; a
	// lookup that read the ledger (its reads bounded by the same
	// timeout) leaves the PubAck what is left of it.
	ctx := r.Context()
	var own ledger.Ownership
	if b.ledger != nil {
		lstart := time.Now()
		own, err = b.ledger.Lookup(ctx, requestID, wh.JobID)
		if !own.Cached {
			var cancel context.CancelFunc
			ctx, cancel = context.WithDeadline(ctx, lstart.Add(b.cfg.PublishTimeout))
			defer cancel()
		}
		b.m.lookup.Observe(time.Since(lstart).Seconds())
		if own.Cached {
			b.m.fromCache.Inc()
		} else {
			b.m.fromLedger.Inc()
		}
		if err != nil {
			// Without the ledger a foreign job cannot be told from ours:
			// storing it could hand another request's result out.
			h["Retry-After"] = b.retryAfterUnavailable
			b.reject(w, r, rid, b.aUnavailable, slog.String("request_id", requestID),
				slog.String("job_id", wh.JobID), slog.String("status", string(wh.Status)), slog.String("err", "ledger: "+err.Error()))
			return
		}
		if own.Foreign {
			b.reject(w, r, rid, b.aForbidden, slog.String("request_id", requestID),
				slog.String("job_id", wh.JobID), slog.String("status", string(wh.Status)))
			return
		}
		if own.Terminal && wh.Status.IsTerminal() {
			// A terminal event of this job is stored already: however late,
			// this is a repeat, and publishing it again would be refused.
			b.m.duplicates.Inc()
			b.okDuplicate.Inc()
			b.writeOK(w, bp, wh, true)
			return
		}
	}

	hdr := events.EventHeaders{
		JobID:     wh.JobID,
		Status:    wh.Status,
		RequestID: requestID,
		Source:    events.SourceWebhook,
		Metadata:  own.Metadata,
		ExtraJob:  own.Extra,
	}
	if tp := r.Header.Get("Traceparent"); tp != "" && events.ValidTraceParent(tp) {
		hdr.TraceParent = tp
	}
	ack, err := b.publish(ctx, events.NewJobMsg(hdr, body))
	if errors.Is(err, nats.ErrMaxPayload) {
		// The server's max_payload shrank under the limit read above (a
		// reconnect to another server): permanent for this body, not a 503.
		b.reject(w, r, rid, b.tooLargeAnswer(b.MaxBody()), slog.String("request_id", requestID),
			slog.String("job_id", wh.JobID), slog.Int("body_bytes", len(body)))
		return
	}
	if err != nil {
		h["Retry-After"] = b.retryAfterUnavailable
		b.reject(w, r, rid, b.aUnavailable, slog.String("request_id", requestID),
			slog.String("job_id", wh.JobID), slog.String("status", string(wh.Status)), slog.String("err", err.Error()))
		return
	}
	if b.ledger != nil {
		b.ledger.Stored(requestID, wh.JobID, wh.Status, own)
	}
	if own.Extra && !ack.Duplicate {
		b.m.extraJobs.Inc()
		b.log.Warn("stored a webhook of a second job of its request (Krea was paid twice)",
			slog.String("req_id", rid), slog.String("request_id", requestID),
			slog.String("job_id", wh.JobID), slog.String("status", string(wh.Status)))
	}
	if ack.Duplicate {
		b.m.duplicates.Inc()
		b.okDuplicate.Inc()
	} else {
		b.okStored.Inc()
	}
	if b.log.Enabled(r.Context(), slog.LevelDebug) {
		b.log.LogAttrs(r.Context(), slog.LevelDebug, "webhook stored", slog.String("req_id", rid),
			slog.String("request_id", requestID), slog.String("job_id", wh.JobID),
			slog.String("status", string(wh.Status)), slog.Bool("duplicate", ack.Duplicate),
			slog.Uint64("seq", ack.Sequence))
	}
	// The body is published (copied into the connection's buffers): its
	// buffer now holds the answer.
	b.writeOK(w, bp, wh, ack.Duplicate)
}

// errBodyBudget: the body would take the webhooks in flight past
// KREABUS_BODY_BUDGET.
var errBodyBudget = errors.New("body budget exhausted")

// shed prepares a 429 answer to a webhook whose body is not read: the
// connection is closed after it, rather than the server reading the rest
// of the body (up to 256 KiB, for as long as the sender dawdles) to keep
// it alive: under overload, connections are freed.
func (b *Bridge) shed(h http.Header) {
	h["Retry-After"] = b.retryAfterBusy
	h["Connection"] = b.connClose
}

// readBody reads the body into *bp, at most limit bytes: the limit is
// enforced while reading, so a large body is never buffered whole. Every
// byte of buffer it uses is first taken from the body budget and added to
// *held (the caller gives it back); errBodyBudget when the budget has no
// room.
func (b *Bridge) readBody(w http.ResponseWriter, r *http.Request, bp *[]byte, limit int, held *int64) ([]byte, error) {
	buf := (*bp)[:0]
	if cl := int(r.ContentLength); cl >= cap(buf) {
		if !b.bodies.take(int64(cl) + 1) {
			return nil, errBodyBudget
		}
		*held += int64(cl) + 1
		buf = make([]byte, 0, cl+1) // room for the read that sees EOF
	} else {
		if cl >= 0 {
			// A known length smaller than a pooled buffer (grown by an
			// earlier large body) takes only what it needs from the
			// budget, and from the buffer.
			buf = buf[: 0 : cl+1]
		}
		if !b.bodies.take(int64(cap(buf))) {
			return nil, errBodyBudget
		}
		*held += int64(cap(buf))
	}
	rd := http.MaxBytesReader(w, r.Body, int64(limit))
	for {
		if len(buf) == cap(buf) {
			// Unknown length (chunked): grow by doubling, never past
			// the limit (and the byte that sees EOF or the excess).
			grow := min(max(cap(buf), initialBufSize), limit+1-cap(buf))
			if grow <= 0 {
				grow = 1
			}
			if !b.bodies.take(int64(grow)) {
				keepBuf(bp, buf)
				return nil, errBodyBudget
			}
			*held += int64(grow)
			nb := make([]byte, len(buf), cap(buf)+grow)
			copy(nb, buf)
			buf = nb
		}
		n, err := rd.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err == io.EOF {
			break
		}
		if err != nil {
			keepBuf(bp, buf)
			return nil, err
		}
	}
	keepBuf(bp, buf)
	return buf, nil
}

// keepBuf keeps buf for the pool when it is a larger buffer than *bp; a
// pooled buffer cut down to a small body's length stays whole.
func keepBuf(bp *[]byte, buf []byte) {
	if cap(buf) > cap(*bp) {
		*bp = buf
	}
}

func (b *Bridge) putBuf(bp *[]byte) {
	if cap(*bp) > maxPooledBuf {
		return
	}
	*bp = (*bp)[:0]
	b.bufs.Put(bp)
}

// writeOK answers 200 {"job_id":..,"status":..,"duplicate":..}, building
// the body in the request's (now unused) body buffer.
func (b *Bridge) writeOK(w http.ResponseWriter, bp *[]byte, wh Webhook, dup bool) {
	// job_id is a canonical UUID and status [a-z0-9-]: nothing to escape.
	out := append((*bp)[:0], `{"job_id":"`...)
	out = append(out, wh.JobID...)
	out = append(out, `","status":"`...)
	out = append(out, wh.Status...)
	out = append(out, `","duplicate":`...)
	out = strconv.AppendBool(out, dup)
	out = append(out, "}\n"...)
	*bp = out
	w.Header()["Content-Type"] = b.contentJSON
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(out)
}

// reject writes a fixed error answer, counts it and logs one line.
func (b *Bridge) reject(w http.ResponseWriter, r *http.Request, rid string, a *answer, attrs ...slog.Attr) {
	a.counter.Inc()
	w.Header()["Content-Type"] = b.contentJSON
	w.WriteHeader(a.code)
	_, _ = w.Write(a.body)

	level := slog.LevelWarn
	switch a.code {
	case http.StatusNotFound:
		level = slog.LevelDebug // scanners; not worth a line each
	case http.StatusServiceUnavailable:
		level = slog.LevelError
	}
	ctx := r.Context()
	if !b.log.Enabled(ctx, level) {
		return
	}
	all := make([]slog.Attr, 0, 6+len(attrs))
	all = append(all,
		slog.String("req_id", rid),
		slog.Int("code", a.code),
		slog.String("outcome", a.outcome),
		slog.String("reason", a.msg),
		slog.String("method", r.Method),
		slog.String("remote", r.RemoteAddr),
	)
	all = append(all, attrs...)
	b.log.LogAttrs(ctx, level, "webhook rejected", all...)
}

// tokenRequestID is the request ID part of a token that failed to verify,
// for the log: only when it is well formed, never the MAC.
func tokenRequestID(token string) string {
	dot := strings.LastIndexByte(token, '.')
	if dot <= 0 {
		return ""
	}
	if id := token[:dot]; events.ValidRequestID(id) {
		return id
	}
	return ""
}

// isJSONContentType accepts application/json and application/*+json, with
// parameters (charset).
func isJSONContentType(ct string) bool {
	if ct == "" {
		return false
	}
	if strings.IndexByte(ct, ';') >= 0 {
		mt, _, err := mime.ParseMediaType(ct)
		if err != nil {
			return false
		}
		ct = mt
	} else {
		ct = strings.TrimSpace(ct)
	}
	if strings.EqualFold(ct, "application/json") {
		return true
	}
	const app, suffix = "application/", "+json"
	if len(ct) > len(app)+len(suffix) && strings.EqualFold(ct[:len(app)], app) &&
		strings.EqualFold(ct[len(ct)-len(suffix):], suffix) {
		sub := ct[len(app) : len(ct)-len(suffix)]
		return !strings.ContainsAny(sub, "/ \t")
	}
	return false
}

// Publish errors.
var (
	errDisconnected   = errors.New("NATS is not connected")
	errPublishTimeout = errors.New("no PubAck within the publish timeout")
)

// Retrying "no responders" (JetStream momentarily without the stream: a
// leader election, a server still recovering) within the publish timeout.
const (
	noStreamRetries   = 2
	noStreamRetryWait = 200 * time.Millisecond
)

// noLibraryRetry turns off the library's own retry of "no responders":
// that retry re-sends the message from its Data later, while the bridge
// recycles body buffers as soon as a publish returns. Retries are done
// here instead, synchronously.
var noLibraryRetry = []jetstream.PublishOpt{jetstream.WithRetryAttempts(0)}

// publish sends m with an asynchronous JetStream publish, so many webhooks'
// publishes pipeline over the one connection, and waits for the PubAck at
// most PublishTimeout and never past ctx. The library resolves a future
// that got no PubAck within PublishTimeout (WithPublishAsyncTimeout), which
// bounds the first attempt without a timer of our own; the rare retries
// after "no responders" are bounded by what is left of the budget.
func (b *Bridge) publish(ctx context.Context, m *nats.Msg) (*jetstream.PubAck, error) {
	start := time.Now()
	defer func() { b.m.publish.Observe(time.Since(start).Seconds()) }()
	var budget <-chan time.Time // nil, so never ready, on the first attempt
	for attempt := 0; ; attempt++ {
		if !b.nc.IsConnected() {
			// Publishing now would only fill the reconnect buffer.
			return nil, errDisconnected
		}
		paf, err := b.js.PublishMsgAsync(m, noLibraryRetry...)
		if err != nil {
			return nil, err
		}
		select {
		case ack := <-paf.Ok():
			return ack, nil
		case err := <-paf.Err():
			if errors.Is(err, jetstream.ErrAsyncPublishTimeout) {
				return nil, errPublishTimeout
			}
			if !errors.Is(err, jetstream.ErrNoStreamResponse) {
				return nil, err
			}
			if b.streamMissing != nil {
				b.streamMissing()
			}
			left := b.cfg.PublishTimeout - time.Since(start)
			if attempt >= noStreamRetries || left <= noStreamRetryWait {
				return nil, err
			}
			if budget == nil {
				t := time.NewTimer(left)
				defer t.Stop()
				budget = t.C
			}
		case <-ctx.Done():
			return nil, ctxErr(ctx)
		case <-budget:
			return nil, errPublishTimeout
		}
		wait := time.NewTimer(noStreamRetryWait)
		select {
		case <-wait.C:
		case <-ctx.Done():
			wait.Stop()
			return nil, ctxErr(ctx)
		case <-budget:
			wait.Stop()
			return nil, errPublishTimeout
		}
	}
}

// ctxErr is the error of the webhook's context: its deadline is the
// publish timeout.
func ctxErr(ctx context.Context) error {
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return errPublishTimeout
	}
	return ctx.Err()
}
