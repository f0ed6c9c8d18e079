package ledger

import (
	"bytes"
	"encoding/json"
	"strconv"
	"time"

	"github.com/google/uuid"

	"github.com/kreabus/kreabus/pkg/events"
)

// requestIDSpace namespaces derived request IDs.
var requestIDSpace = uuid.MustParse("6f1d2a8e-52a7-4d4c-9a43-6b1e2a3d9c10")

// QueuedRequestID is the request ID of the request stored at seq of stream
// at stored, with body data: its own request_id when that is usable, else
// one derived from the message's place in the stream. The submitter keys
// the ledger and names the request's events by it, and the service finds
// a queued request by it, so both must read it the same way.
func QueuedRequestID(data []byte, stream string, seq uint64, stored time.Time) string {
	req, _ := events.DecodeRequest(data)
	if req == nil {
		return DerivedRequestID(stream, seq, stored)
	}
	// DecodeRequest fills a missing request_id with a random one, which
	// would differ on each redelivery and defeat the ledger.
	var peek struct {
		RequestID json.RawMessage `json:"request_id"`
	}
	_ = json.Unmarshal(data, &peek)
	var given string
	givenOK := json.Unmarshal(peek.RequestID, &given) == nil
	switch {
	case len(peek.RequestID) == 0 || bytes.Equal(peek.RequestID, []byte("null")) || (givenOK && given == ""):
		return DerivedRequestID(stream, seq, stored)
	case events.ValidRequestID(req.RequestID):
		return req.RequestID
	default:
		return DerivedRequestID(stream, seq, stored) // the given one cannot name a key or a message ID
	}
}

// DerivedRequestID is a request ID for a request that has none (or an
// unusable one): a UUID named by the message's stream, sequence and
// timestamp, the same on every redelivery and unique across a stream that
// is deleted and created again.
func DerivedRequestID(stream string, seq uint64, stored time.Time) string {
	name := stream + "/" + strconv.FormatUint(seq, 10) + "/" + strconv.FormatInt(stored.UnixNano(), 10)
	return uuid.NewSHA1(requestIDSpace, []byte(name)).String()
}
