package mirrord

import (
	"errors"
	"log/slog"

	"github.com/kreabus/kreabus/internal/mirror"
	"github.com/kreabus/kreabus/internal/program"
	"github.com/kreabus/kreabus/pkg/events"
)

// Settings is everything cmd/mirror reads: the mirror's own settings and
// those every program shares. Load it with config.Load, which starts from
// SetDefaults.
type Settings struct {
	Mirror mirror.Config
	program.Common
}

// SetDefaults gives new Settings their defaults (the Default* constants of
// each group's package).
func (s *Settings) SetDefaults() {
	s.Mirror.SetDefaults()
	s.Common.SetDefaults()
}

// Validate fills the zero fields of the mirror's group with their
// defaults, then checks every group; every problem is reported, joined.
func (s *Settings) Validate() error {
	s.Mirror.SetDefaults()
	return errors.Join(s.Mirror.Validate(), s.Common.Validate())
}

// Start starts the mirror program, for program.Main.
func (s *Settings) Start(log *slog.Logger) (program.Running, error) { return Start(*s, log) }

// ResultsOptions is the results bucket's configuration.
func (s *Settings) ResultsOptions() events.ResultsOptions {
	r := s.Mirror.Replicas
	if r <= 0 {
		r = s.Streams.Replicas
	}
	return events.ResultsOptions{Bucket: s.Mirror.Bucket, TTL: s.Mirror.TTL, Replicas: r}
}
