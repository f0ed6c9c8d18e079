package submitterd

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/kreabus/kreabus/internal/ledger"
	"github.com/kreabus/kreabus/internal/program"
	"github.com/kreabus/kreabus/internal/reconciler"
	"github.com/kreabus/kreabus/internal/submitter"
)

// Settings is everything cmd/submitter reads: the submitter's own
// settings, the ledger's, the reconciler's, and those every program
// shares. Load it with config.Load, which starts from SetDefaults.
type Settings struct {
	Submitter  submitter.Config
	Ledger     ledger.Config
	Reconciler reconciler.Config
	program.Common
}

// SetDefaults gives new Settings their defaults (the Default* constants of
// each group's package).
func (s *Settings) SetDefaults() {
	s.Submitter.SetDefaults()
	s.Ledger.SetDefaults()
	s.Reconciler.SetDefaults()
	s.Common.SetDefaults()
}

// Validate fills the zero fields of the domain groups with their defaults,
// then checks every group and how they fit together; every problem is
// reported, joined.
func (s *Settings) Validate() error {
	s.Submitter.SetDefaults()
	s.Ledger.SetDefaults()
	s.Reconciler.SetDefaults()
	return errors.Join(
		s.Submitter.Validate(),
		s.Ledger.Validate(),
		s.Reconciler.Validate(),
		checkLedgerTTL(s.Ledger.TTL, s.Reconciler.JobMaxAge),
		s.Common.Validate(),
	)
}

// checkLedgerTTL: ledger entries must outlive the jobs the reconciler
// follows, or open jobs would expire before it could end them. It checks
// the setting at start and, once the bucket is open, the bucket's own TTL
// (an existing bucket keeps it).
func checkLedgerTTL(ttl, jobMaxAge time.Duration) error {
	if ttl <= jobMaxAge {
		return fmt.Errorf("KREABUS_LEDGER_TTL: %v must exceed KREABUS_JOB_MAX_AGE (%v)", ttl, jobMaxAge)
	}
	return nil
}

// Start starts the submitter program, for program.Main.
func (s *Settings) Start(log *slog.Logger) (program.Running, error) { return Start(*s, log) }
