package bridged

import (
	"context"
	"errors"
	"sync/atomic"
	"time"

	"github.com/kreabus/kreabus/internal/ledger"
	"github.com/kreabus/kreabus/internal/retry"
	"github.com/kreabus/kreabus/pkg/krea"
)

// errLedgerNotOpen answers lookups until the ledger bucket is open.
var errLedgerNotOpen = errors.New("ledger bucket not open yet")

// lateOwners is the ledger.Index of a Program: it answers once the ledger
// bucket is open, which may be after start when NATS is down. Until then a
// webhook gets 503 (and /readyz says not ready): without the ledger a
// foreign job cannot be told from ours. Opening reads no records, so it
// takes the same time whatever the bucket holds.
type lateOwners struct {
	o atomic.Pointer[ledger.Owners]
}

var _ ledger.Index = (*lateOwners)(nil)

func (l *lateOwners) Lookup(ctx context.Context, requestID, jobID string) (ledger.Ownership, error) {
	if o := l.o.Load(); o != nil {
		return o.Lookup(ctx, requestID, jobID)
	}
	return ledger.Ownership{}, errLedgerNotOpen
}

func (l *lateOwners) Stored(requestID, jobID string, status krea.Status, own ledger.Ownership) {
	if o := l.o.Load(); o != nil {
		o.Stored(requestID, jobID, status, own)
	}
}

// check is the "ledger" readiness check.
func (l *lateOwners) check(context.Context) error {
	if l.o.Load() == nil {
		return errLedgerNotOpen
	}
	return nil
}

// openLedger opens the ledger bucket (creating it when allowed), retrying
// until it succeeds or ctx ends.
func (p *Program) openLedger(ctx context.Context) {
	cfg := p.s.Common.Ledger(p.s.Ledger)
	cfg.ReadTimeout = p.s.Bridge.PublishTimeout
	_ = retry.Do(ctx, retry.Reconnect, func(ctx context.Context) error {
		led, err := ledger.Open(ctx, p.JetStream(), cfg, ledger.WithLogger(p.Log()))
		if err != nil {
			return err
		}
		owners := led.Owners(cfg.CacheSize)
		if err := owners.Follow(ctx); err != nil {
			// Every first webhook of a job reads the ledger then.
			p.Log().Warn("cannot follow job records; webhooks read the ledger", "err", err)
		}
		p.ledger.o.Store(owners)
		p.Log().Info("ledger open", "bucket", led.Bucket(), "cache", cfg.CacheSize)
		return nil
	}, func(err error, _ int, wait time.Duration) {
		p.Log().Warn("ledger unavailable; retrying", "err", err, "retry_in", wait)
	})
}
