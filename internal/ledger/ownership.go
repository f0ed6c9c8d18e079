// Package ledger is kreabus' job ledger: a JetStream key-value bucket
// mapping requests to jobs and jobs to requests, with status, metadata and
// timestamps, plus an in-memory view of it fed by a watch.
package ledger

import (
	"encoding/json"

	"github.com/kreabus/kreabus/pkg/krea"
)

// Ownership is what the ledger knows about a (request, job) pair named by a
// webhook.
type Ownership struct {
	// Foreign is true when the ledger maps the job to another request, or
	// the request to another job: the webhook is not ours to accept (403).
	Foreign bool
	// Terminal is true when a terminal event of the job is already stored:
	// a terminal webhook is a duplicate, however late.
	Terminal bool
	// Metadata is the request's metadata (compact JSON), when known.
	Metadata json.RawMessage
}

// Index answers ownership questions from memory, without a round trip to
// JetStream, and learns from the events the caller stored. The bridge
// depends on this interface only; *View implements it.
type Index interface {
	Lookup(requestID, jobID string) Ownership
	Stored(requestID, jobID string, status krea.Status)
}
