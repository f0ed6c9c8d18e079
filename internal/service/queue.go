package service

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/kreabus/kreabus/internal/ledger"
	"github.com/kreabus/kreabus/pkg/events"
)

// queued is a request found waiting in KREA_REQUESTS.
type queued struct {
	seq      uint64
	path     string
	metadata json.RawMessage
}

// findQueued looks for requestID among the messages waiting in
// KREA_REQUESTS, oldest first, reading at most cfg.QueueScan of them (a
// work queue takes no second consumer, and JetStream has no lookup by
// message ID, so each is one direct read). nil, nil: not there.
func (s *Service) findQueued(ctx context.Context, requestID string) (*queued, error) {
	st, err := s.d.JS.Stream(ctx, events.StreamRequests)
	if err != nil {
		return nil, errorf(events.CodeUnavailable, "stream %s: %v", events.StreamRequests, err)
	}
	state := st.CachedInfo().State
	if state.Msgs == 0 {
		return nil, nil
	}
	seq := state.FirstSeq
	for n := 0; n < s.cfg.QueueScan && seq <= state.LastSeq; n++ {
		m, err := st.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(events.RequestsSubjects))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return nil, nil // nothing at or after seq
		}
		if err != nil {
			return nil, errorf(events.CodeUnavailable, "reading %s: %v", events.StreamRequests, err)
		}
		if q := match(m, requestID); q != nil {
			return q, nil
		}
		seq = m.Sequence + 1
	}
	if seq <= state.LastSeq {
		return nil, errorf(events.CodeNotFound,
			"kreabus does not know request %s: not in the ledger, nor among the %d oldest requests waiting in %s",
			requestID, s.cfg.QueueScan, events.StreamRequests)
	}
	return nil, nil
}

// match returns the request of m when it is requestID's.
func match(m *jetstream.RawStreamMsg, requestID string) *queued {
	// The ID the submitter gives the request when it takes it: its
	// request_id, or one derived from its place in the stream.
	if ledger.QueuedRequestID(m.Data, events.StreamRequests, m.Sequence, m.Time) != requestID {
		return nil
	}
	var peek struct {
		Path     string          `json:"path"`
		Metadata json.RawMessage `json:"metadata"`
	}
	_ = json.Unmarshal(m.Data, &peek)
	q := &queued{seq: m.Sequence, path: peek.Path}
	if len(peek.Metadata) > 0 && peek.Metadata[0] == '{' && len(peek.Metadata) <= events.MaxMetadataSize {
		q.metadata = peek.Metadata
	}
	return q
}

// dequeue deletes a cancelled request's message, so it is never delivered
// (past the duplicate window a delivery would publish its rejected event
// again). A failure is harmless: the submitter finds the request rejected
// in the ledger and acks it without calling the API.
func (s *Service) dequeue(ctx context.Context, seq uint64) {
	st, err := s.d.JS.Stream(ctx, events.StreamRequests)
	if err == nil {
		err = st.DeleteMsg(ctx, seq)
	}
	if err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
		s.log.Info("cannot delete a cancelled request from the queue; the submitter will ack it unsent", "seq", seq, "err", fmt.Sprint(err))
	}
}
