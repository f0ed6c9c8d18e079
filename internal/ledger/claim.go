package ledger

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// PollKeyPrefix prefixes poll.<job_id>: a reconciler replica's claim on the
// polls of a job for a while, so that several replicas cost the Krea API
// one poll per job and round, not one each. A claim expires by itself (a
// per-key TTL), so a replica that dies only delays the next poll.
const PollKeyPrefix = "poll."

// MinClaimTTL is the shortest claim JetStream's per-key TTLs allow.
const MinClaimTTL = time.Second

// ClaimPoll claims the polls of jobID for holder during ttl (at least
// MinClaimTTL). It answers true when holder may poll: it made the claim,
// or already holds a live one. It answers false while another holder's
// claim lives. When the claim cannot be made or read (a server without
// per-key TTLs, NATS trouble) it answers true with the error: polling then
// goes on as without claims, where a second poll costs an API call but
// never a second event.
func (l *Ledger) ClaimPoll(ctx context.Context, jobID, holder string, ttl time.Duration) (bool, error) {
	if !ValidID(jobID) || holder == "" {
		return true, fmt.Errorf("%w: job_id %q, holder %q", ErrInvalidRecord, jobID, holder)
	}
	key := PollKeyPrefix + jobID
	ttl = max(ttl, MinClaimTTL)
	ok, err := l.claim(ctx, key, holder, ttl)
	if err == errClaimGone {
		// It expired between the two calls: claim it.
		if ok, err = l.claim(ctx, key, holder, ttl); err == errClaimGone {
			return false, nil // it came and went again: someone else is at it
		}
	}
	return ok, err
}

// errClaimGone: the claim that kept claim from creating the key was gone
// when it read it.
var errClaimGone = errors.New("ledger: claim gone")

// claim makes one try at ClaimPoll's claim.
func (l *Ledger) claim(ctx context.Context, key, holder string, ttl time.Duration) (bool, error) {
	_, err := l.kv.Create(ctx, key, []byte(holder), jetstream.KeyTTL(ttl))
	if err == nil {
		return true, nil
	}
	if !errors.Is(err, jetstream.ErrKeyExists) {
		return true, fmt.Errorf("ledger: claim %s: %w", key, err)
	}
	e, err := l.kv.Get(ctx, key)
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
		return false, errClaimGone
	case err != nil:
		return true, fmt.Errorf("ledger: read claim %s: %w", key, err)
	}
	return string(e.Value()) == holder, nil
}
