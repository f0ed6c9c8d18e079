package bridge

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/gorilla/mux"
	"github.com/nats-io/nats.go"

	"github.com/kreabus/kreabus/internal/clip"
	"github.com/kreabus/kreabus/internal/ledger"
	"github.com/kreabus/kreabus/pkg/events"
)

// Where a webhook enters: the route's handler takes it through its checks
// (check.go, limits.go, body.go, parse.go), the ledger's owner lookup and
// the publication (publish.go), and answers.

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

// shed prepares a 429 answer to a webhook whose body is not read: the
// connection is closed after it, rather than the server reading the rest
// of the body (up to 256 KiB, for as long as the sender dawdles) to keep
// it alive: under overload, connections are freed.
func (b *Bridge) shed(h http.Header) {
	h["Retry-After"] = b.retryAfterBusy
	h["Connection"] = b.connClose
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
