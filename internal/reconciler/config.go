package reconciler

import (
	"errors"
	"fmt"
	"time"
)

// Defaults.
const (
	// DefaultWebhookGrace is how long a job may go without a terminal event
	// before it is polled.
	DefaultWebhookGrace = 5 * time.Minute
	// DefaultMaxBackoff caps the wait between two polls of one job.
	DefaultMaxBackoff = 5 * time.Minute
	// DefaultRate is the poll rate (GET /jobs/{id} per second, all jobs
	// together), well within Krea's limits.
	DefaultRate = 5.0
	// DefaultConcurrency is how many polls may be in flight at once.
	DefaultConcurrency = 4
	// DefaultJobMaxAge is how long a job may stay non-terminal before
	// kreabus declares it failed. Krea fails external-provider jobs by
	// itself after about 2 hours.
	DefaultJobMaxAge = 3 * time.Hour
	// DefaultInterval is how often the ledger is scanned for jobs due.
	DefaultInterval = 10 * time.Second
	// DefaultPublishTimeout bounds one publish to JetStream.
	DefaultPublishTimeout = 10 * time.Second
	// MinBackoff is the shortest wait between two polls of one job.
	MinBackoff = 100 * time.Millisecond
)

// Config holds the reconciler settings.
type Config struct {
	WebhookGrace time.Duration `env:"KREABUS_WEBHOOK_GRACE" flag:"webhook-grace" usage:"how long to wait for a job's terminal webhook before polling the job"`
	MaxBackoff   time.Duration `env:"KREABUS_POLL_MAX_BACKOFF" flag:"poll-max-backoff" usage:"longest wait between two polls of one job (the wait starts at the webhook grace and doubles)"`
	Rate         float64       `env:"KREABUS_POLL_RATE" flag:"poll-rate" usage:"GET /jobs/{id} calls per second, all jobs together (per replica)"`
	Concurrency  int           `env:"KREABUS_POLL_CONCURRENCY" flag:"poll-concurrency" usage:"polls in flight at once"`
	JobMaxAge    time.Duration `env:"KREABUS_JOB_MAX_AGE" flag:"job-max-age" usage:"a job still not terminal this long after submission ends in krea.jobs.failed"`
	Interval     time.Duration `env:"KREABUS_POLL_INTERVAL" flag:"poll-interval" usage:"how often the ledger is scanned for jobs due for a poll"`

	// PublishTimeout bounds one publish (default DefaultPublishTimeout).
	PublishTimeout time.Duration
}

// SetDefaults fills the zero fields from the Default* constants.
func (c *Config) SetDefaults() {
	if c.WebhookGrace == 0 {
		c.WebhookGrace = DefaultWebhookGrace
	}
	if c.MaxBackoff == 0 {
		c.MaxBackoff = DefaultMaxBackoff
	}
	if c.Rate == 0 {
		c.Rate = DefaultRate
	}
	if c.Concurrency == 0 {
		c.Concurrency = DefaultConcurrency
	}
	if c.JobMaxAge == 0 {
		c.JobMaxAge = DefaultJobMaxAge
	}
	if c.Interval == 0 {
		c.Interval = DefaultInterval
	}
	if c.PublishTimeout == 0 {
		c.PublishTimeout = DefaultPublishTimeout
	}
}

// Validate checks the settings, after SetDefaults; every problem is
// reported, joined.
func (c *Config) Validate() error {
	var errs []error
	check := func(ok bool, format string, args ...any) {
		if !ok {
			errs = append(errs, fmt.Errorf(format, args...))
		}
	}
	check(c.WebhookGrace > 0, "KREABUS_WEBHOOK_GRACE: must be positive, got %v", c.WebhookGrace)
	check(c.MaxBackoff >= MinBackoff, "KREABUS_POLL_MAX_BACKOFF: at least %v, got %v", MinBackoff, c.MaxBackoff)
	check(c.Rate > 0, "KREABUS_POLL_RATE: must be positive, got %v", c.Rate)
	check(c.Concurrency > 0, "KREABUS_POLL_CONCURRENCY: must be positive, got %d", c.Concurrency)
	check(c.JobMaxAge > c.WebhookGrace, "KREABUS_JOB_MAX_AGE: must exceed KREABUS_WEBHOOK_GRACE (%v), got %v", c.WebhookGrace, c.JobMaxAge)
	check(c.Interval > 0, "KREABUS_POLL_INTERVAL: must be positive, got %v", c.Interval)
	check(c.PublishTimeout > 0, "publish timeout must be positive, got %v", c.PublishTimeout)
	return errors.Join(errs...)
}
