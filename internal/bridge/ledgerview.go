package bridge

import (
	"context"
	"errors"
	"sync/atomic"
	"time"

	"github.com/kreabus/kreabus/internal/ledger"
	"github.com/kreabus/kreabus/pkg/krea"
)

// lateView is the ledger.Index of a Program: empty until the ledger bucket
// is open and its View loaded, which may be long after start when NATS is
// down. Until then every lookup finds nothing; /readyz says not ready, so a
// load balancer sends no webhooks meanwhile, and the stream's duplicate
// window still de-duplicates.
type lateView struct {
	v atomic.Pointer[ledger.View]
}

var _ ledger.Index = (*lateView)(nil)

func (l *lateView) Lookup(requestID, jobID string) ledger.Ownership {
	if v := l.v.Load(); v != nil {
		return v.Lookup(requestID, jobID)
	}
	return ledger.Ownership{}
}

func (l *lateView) Stored(requestID, jobID string, status krea.Status) {
	if v := l.v.Load(); v != nil {
		v.Stored(requestID, jobID, status)
	}
}

// check is the "ledger" readiness check.
func (l *lateView) check(context.Context) error {
	v := l.v.Load()
	if v == nil {
		return errors.New("ledger bucket not open yet")
	}
	if !v.Ready() {
		return errors.New("ledger view loading")
	}
	return nil
}

// openLedger opens the ledger bucket (creating it when allowed), retrying
// until it succeeds or ctx ends, then follows it with a View.
func (p *Program) openLedger(ctx context.Context) {
	defer p.bg.Done()
	cfg := p.s.LedgerConfig
	cfg.Create = p.s.CreateStreams
	if cfg.Replicas == 0 {
		cfg.Replicas = p.s.StreamsConfig.Replicas
	}
	for {
		led, err := ledger.Open(ctx, p.js, cfg, ledger.WithLogger(p.log))
		if err == nil {
			p.ledger.v.Store(led.StartWatch(ctx))
			p.log.Info("ledger open", "bucket", led.Bucket())
			return
		}
		if ctx.Err() != nil {
			return
		}
		p.log.Warn("ledger unavailable; retrying", "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(2 * time.Second):
		}
	}
}
