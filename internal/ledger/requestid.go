package ledger

import (
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
	// DecodeRequest leaves an absent request_id empty, and returns an
	// invalid one as given: both are replaced by the derived ID.
	if req, _ := events.DecodeRequest(data); req != nil && events.ValidRequestID(req.RequestID) {
		return req.RequestID
	}
	return DerivedRequestID(stream, seq, stored)
}

// DerivedRequestID is a request ID for a request that has none (or an
// unusable one): a UUID named by the message's stream, sequence and
// timestamp, the same on every redelivery and unique across a stream that
// is deleted and created again.
func DerivedRequestID(stream string, seq uint64, stored time.Time) string {
	name := stream + "/" + strconv.FormatUint(seq, 10) + "/" + strconv.FormatInt(stored.UnixNano(), 10)
	return uuid.NewSHA1(requestIDSpace, []byte(name)).String()
}
