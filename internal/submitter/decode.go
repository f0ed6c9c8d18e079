package submitter

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/kreabus/kreabus/internal/clip"
	"github.com/kreabus/kreabus/internal/ledger"
	"github.com/kreabus/kreabus/pkg/events"
)

// decode parses and validates the request. For an invalid request the
// returned delivery has no req, and reason says what is wrong.
func (s *Submitter) decode(msg jetstream.Msg, md *jetstream.MsgMetadata) (d *delivery, reason string) {
	d = &delivery{
		msg:         msg,
		n:           md.NumDelivered,
		traceParent: msg.Headers().Get(events.HeaderTraceParent),
		lastBeat:    time.Now(),
	}
	data := msg.Data()
	req, err := events.DecodeRequest(data)
	d.id = ledger.QueuedRequestID(data, md.Stream, md.Sequence.Stream, md.Timestamp)
	if req != nil && req.RequestID == "" {
		// A request without an ID is named by the derived one, the same on
		// every redelivery.
		req.RequestID = d.id
	}
	var peek struct {
		RequestID json.RawMessage `json:"request_id"`
		Path      json.RawMessage `json:"path"`
		Metadata  json.RawMessage `json:"metadata"`
	}
	_ = json.Unmarshal(data, &peek)
	var given string
	givenOK := json.Unmarshal(peek.RequestID, &given) == nil
	var path string
	if json.Unmarshal(peek.Path, &path) == nil {
		d.path = clip.String(path, 256)
	}
	d.metadata = usableMetadata(peek.Metadata)
	d.log = s.log.With("request_id", d.id, "delivery", d.n, "stream_seq", md.Sequence.Stream)
	if err != nil {
		reason := err.Error()
		var re *events.RequestError
		if errors.As(err, &re) && re.Field == "request_id" && givenOK {
			reason = fmt.Sprintf("request_id %q: %s (rejected as %s)", clip.String(given, 80), re.Reason, d.id)
		}
		return d, "invalid request: " + reason
	}
	d.req = req
	d.path = req.Path
	d.metadata = req.Metadata
	return d, ""
}

// usableMetadata returns raw compacted when it is a JSON object within the
// size limit, else nil.
func usableMetadata(raw json.RawMessage) json.RawMessage {
	raw = bytes.TrimSpace(raw)
	if len(raw) < 2 || raw[0] != '{' {
		return nil
	}
	var buf bytes.Buffer
	if json.Compact(&buf, raw) != nil || buf.Len() > events.MaxMetadataSize {
		return nil
	}
	return buf.Bytes()
}
