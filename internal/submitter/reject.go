package submitter

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"strings"

	"github.com/kreabus/kreabus/internal/clip"
	"github.com/kreabus/kreabus/internal/ledger"
	"github.com/kreabus/kreabus/pkg/events"
	"github.com/kreabus/kreabus/pkg/krea"
)

// reject publishes the request's krea.jobs.rejected event and acks it.
func (s *Submitter) reject(ctx context.Context, d *delivery, kind, reason string, apiErr *krea.APIError) {
	reason = clip.String(reason, maxReasonLen)
	body := events.Rejection{RequestID: d.id, Path: d.path, Reason: reason, Kind: kind}
	if apiErr != nil {
		body.HTTPStatus = apiErr.StatusCode
		body.Error = errorBody(apiErr.Body)
		body.Replacement = apiErr.Replacement
	}
	data, err := json.Marshal(body)
	if err != nil { // cannot happen: Error is valid JSON
		data, _ = json.Marshal(events.Rejection{RequestID: d.id, Reason: reason, Kind: kind})
	}
	{
		// Record the rejection first, so a redelivery after a lost ack,
		// or the same request ID published again, re-publishes it instead
		// of calling the API (and maybe paying): one request ID, one
		// outcome.
		lctx, cancel := context.WithTimeout(ctx, defaultOpTimeout)
		err := s.ledger.PutRejection(lctx, ledger.Record{RequestID: d.id, Path: d.path, Metadata: d.metadata, Reason: reason, Rejection: data})
		cancel()
		var conflict *ledger.ConflictError
		switch {
		case errors.As(err, &conflict):
			s.republish(ctx, d, &conflict.Existing) // submitted after all
			return
		case err != nil:
			s.m.ledgerErrs.Inc()
			d.log.Error("could not record the rejection; request handed back", "err", err, "reason", reason)
			s.nak(d, s.backoff(d.n))
			return
		}
	}
	s.publishRejection(ctx, d, kind, reason, data)
}

// republishRejection publishes again the rejection the ledger holds for a
// redelivered request, and acks it: the API is not called.
func (s *Submitter) republishRejection(ctx context.Context, d *delivery, rec *ledger.Record) {
	s.m.republished.Inc()
	d.log.Info("request already rejected (ledger); event published again, API not called")
	s.publishRejection(ctx, d, "", rec.Reason, rec.Rejection)
}

// publishRejection publishes a krea.jobs.rejected event and acks the
// request; kind, when not empty, counts it as a new rejection.
func (s *Submitter) publishRejection(ctx context.Context, d *delivery, kind, reason string, data []byte) {
	msg := events.NewJobMsg(events.EventHeaders{
		Status:      events.StatusRejected,
		RequestID:   d.id,
		Source:      events.SourceSubmitter,
		Metadata:    d.metadata,
		Reason:      reason,
		TraceParent: d.traceParent,
	}, data)
	if err := s.publish(ctx, d, msg, defaultPublishPatience); err != nil {
		d.log.Error("could not publish the rejected event; request handed back", "err", err, "reason", reason)
		s.nak(d, s.backoff(d.n))
		return
	}
	if kind != "" {
		s.m.rejections.WithLabelValues(kind).Inc()
		d.log.Warn("request rejected", "kind", kind, "reason", reason, "path", d.path)
	}
	s.ack(ctx, d)
}

// errorBody returns an API error body as JSON: itself when it is JSON, else
// as a string; nil when empty or too large.
func errorBody(b []byte) json.RawMessage {
	b = bytes.TrimSpace(b)
	if len(b) == 0 || len(b) > maxRejectionErrorBytes {
		return nil
	}
	if json.Valid(b) {
		var buf bytes.Buffer
		if json.Compact(&buf, b) == nil {
			return buf.Bytes()
		}
	}
	s, _ := json.Marshal(string(b))
	return s
}

func modelUnavailableReason(e *krea.APIError) string {
	var b strings.Builder
	b.WriteString("model unavailable (410)")
	msg := e.Message
	if msg == "" || msg == e.Code {
		msg = e.Reason
	}
	if msg != "" {
		b.WriteString(": ")
		b.WriteString(msg)
	}
	if e.Replacement != "" {
		b.WriteString("; replacement: ")
		b.WriteString(e.Replacement)
	}
	if e.SunsetDate != "" {
		b.WriteString("; sunset: ")
		b.WriteString(e.SunsetDate)
	}
	if e.MigrationURL != "" {
		b.WriteString("; migration: ")
		b.WriteString(e.MigrationURL)
	}
	return b.String()
}
