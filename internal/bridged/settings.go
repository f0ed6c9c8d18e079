package bridged

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/kreabus/kreabus/internal/bridge"
	"github.com/kreabus/kreabus/internal/ledger"
	"github.com/kreabus/kreabus/internal/program"
)

// Settings is everything cmd/bridge reads: the bridge's own settings, the
// ledger's, and those every program shares. Load it with config.Load,
// which starts from SetDefaults.
type Settings struct {
	Bridge bridge.Config
	// DrainDelay keeps serving after /readyz turned 503 on SIGTERM, so load
	// balancers that poll readiness stop sending before the listener closes
	// (Kubernetes: a few seconds; counts within the shutdown timeout).
	DrainDelay time.Duration `env:"KREABUS_DRAIN_DELAY" flag:"drain-delay" usage:"on SIGTERM, keep serving this long after /readyz turns 503 before closing the listener"`
	Ledger     ledger.Config
	program.Common
}

// SetDefaults gives new Settings their defaults (the Default* constants of
// each group's package). DrainDelay's is 0: no delay.
func (s *Settings) SetDefaults() {
	s.Bridge.SetDefaults()
	s.Ledger.SetDefaults()
	s.Common.SetDefaults()
}

// Validate fills the zero fields of the domain groups with their defaults,
// then checks every group; every problem is reported, joined.
func (s *Settings) Validate() error {
	s.Bridge.SetDefaults()
	s.Ledger.SetDefaults()
	errs := []error{s.Bridge.Validate(), s.Ledger.Validate(), s.Common.Validate()}
	if s.DrainDelay < 0 {
		errs = append(errs, fmt.Errorf("KREABUS_DRAIN_DELAY: %v is negative", s.DrainDelay))
	}
	return errors.Join(errs...)
}

// Start starts the bridge program, for program.Main.
func (s *Settings) Start(log *slog.Logger) (program.Running, error) { return Start(*s, log) }
