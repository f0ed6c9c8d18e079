package mirror

import (
	"crypto/x509"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/kreabus/kreabus/pkg/events"
)

// Defaults of the mirror settings.
const (
	DefaultBucket = events.DefaultResultsBucket
	DefaultTTL    = events.DefaultResultsTTL
	// DefaultMaxBytes is the largest result copied: 1 GiB, room for long
	// videos.
	DefaultMaxBytes = 1 << 30
	// DefaultAllowHosts is where Krea serves results.
	DefaultAllowHosts  = "gen.krea.ai"
	DefaultTimeout     = 10 * time.Minute
	DefaultIdleTimeout = 30 * time.Second
	DefaultAttempts    = 5
	DefaultConcurrency = 4
	// DefaultConsumer is the durable consumer on KREA_JOBS every mirror
	// replica shares, so each completed job goes to one of them.
	DefaultConsumer = "kreabus-mirror"
	DefaultAckWait  = 30 * time.Second
	// DefaultRetryBackoff is the wait before a download's second attempt;
	// it doubles for each further attempt, up to MaxRetryBackoff.
	DefaultRetryBackoff = 500 * time.Millisecond
	MaxRetryBackoff     = 10 * time.Second
)

// Config holds the mirror's settings. Zero values mean the default:
// SetDefaults fills them from the Default* constants, then Validate checks
// the result. The env and flag tags name the settings for internal/config
// (the wiring in internal/mirrord loads them).
type Config struct {
	Bucket       string        `env:"KREABUS_RESULTS_BUCKET" flag:"results-bucket" usage:"JetStream Object Store bucket the results of completed jobs are copied into"`
	TTL          time.Duration `env:"KREABUS_RESULTS_TTL" flag:"results-ttl" usage:"how long the results bucket keeps an object (when the mirror creates it)"`
	Replicas     int           `env:"KREABUS_RESULTS_REPLICAS" flag:"results-replicas" usage:"replicas of the results bucket when created (0: as KREABUS_STREAM_REPLICAS)"`
	MaxBytes     int64         `env:"KREABUS_RESULTS_MAX_BYTES" flag:"results-max-bytes" usage:"largest result copied, in bytes; a larger one is reported as an error in its mirrored event"`
	AllowHosts   string        `env:"KREABUS_RESULTS_ALLOW_HOSTS" flag:"results-allow-hosts" usage:"hosts results may be fetched from, comma separated (*.example.com: its subdomains)"`
	AllowPrivate bool          `env:"KREABUS_RESULTS_ALLOW_PRIVATE" flag:"results-allow-private" usage:"also fetch over http and from loopback and private addresses (local runs and tests; link-local and metadata addresses stay refused)"`
	Timeout      time.Duration `env:"KREABUS_RESULTS_TIMEOUT" flag:"results-timeout" usage:"bound of one download attempt of a result"`
	IdleTimeout  time.Duration `env:"KREABUS_RESULTS_IDLE_TIMEOUT" flag:"results-idle-timeout" usage:"longest wait for a download's answer or its next byte"`
	Attempts     int           `env:"KREABUS_RESULTS_ATTEMPTS" flag:"results-attempts" usage:"download attempts of a result on a 5xx answer or a network error (none after a 4xx) before its error is reported"`

	Concurrency int           `env:"KREABUS_MIRROR_CONCURRENCY" flag:"mirror-concurrency" usage:"completed jobs one mirror copies at once"`
	Consumer    string        `env:"KREABUS_MIRROR_CONSUMER" flag:"mirror-consumer" usage:"durable consumer on KREA_JOBS the mirror replicas share"`
	AckWait     time.Duration `env:"KREABUS_MIRROR_ACK_WAIT" flag:"mirror-ack-wait" usage:"how long a job held by a mirror that stopped answering stays with it before another replica takes it over"`

	// RetryBackoff is the wait before a download's second attempt
	// (default DefaultRetryBackoff); not a setting, tests shorten it.
	RetryBackoff time.Duration
	// policy is built by Validate; tests add to it, and to rootCAs.
	policy  Policy
	rootCAs *x509.CertPool
}

// SetDefaults fills the zero fields from the Default* constants.
func (c *Config) SetDefaults() {
	if c.Bucket == "" {
		c.Bucket = DefaultBucket
	}
	if c.TTL == 0 {
		c.TTL = DefaultTTL
	}
	if strings.TrimSpace(c.AllowHosts) == "" {
		c.AllowHosts = DefaultAllowHosts
	}
	if c.MaxBytes == 0 {
		c.MaxBytes = DefaultMaxBytes
	}
	if c.Timeout == 0 {
		c.Timeout = DefaultTimeout
	}
	if c.IdleTimeout == 0 {
		c.IdleTimeout = DefaultIdleTimeout
	}
	if c.Attempts == 0 {
		c.Attempts = DefaultAttempts
	}
	if c.Concurrency == 0 {
		c.Concurrency = DefaultConcurrency
	}
	if c.Consumer == "" {
		c.Consumer = DefaultConsumer
	}
	if c.AckWait == 0 {
		c.AckWait = DefaultAckWait
	}
	if c.RetryBackoff <= 0 {
		c.RetryBackoff = DefaultRetryBackoff
	}
}

// Validate checks the settings, after SetDefaults; every problem is
// reported, joined. It also builds the fetch policy the settings describe.
func (c *Config) Validate() error {
	var errs []error
	if !bucketName(c.Bucket) {
		errs = append(errs, fmt.Errorf("KREABUS_RESULTS_BUCKET: %q is not a valid bucket name ([A-Za-z0-9_-]{1,64})", c.Bucket))
	}
	if c.TTL < time.Second {
		errs = append(errs, fmt.Errorf("KREABUS_RESULTS_TTL: %v is shorter than 1s", c.TTL))
	}
	if c.Replicas < 0 || c.Replicas > 5 {
		errs = append(errs, fmt.Errorf("KREABUS_RESULTS_REPLICAS: %d is not 0 to 5", c.Replicas))
	}
	if c.MaxBytes < 1 {
		errs = append(errs, fmt.Errorf("KREABUS_RESULTS_MAX_BYTES: %d is not positive", c.MaxBytes))
	}
	hosts, err := ParseHostList(c.AllowHosts)
	switch {
	case err != nil:
		errs = append(errs, fmt.Errorf("KREABUS_RESULTS_ALLOW_HOSTS: %w", err))
	case hosts.Empty():
		errs = append(errs, errors.New("KREABUS_RESULTS_ALLOW_HOSTS: no host: the mirror could copy nothing"))
	}
	if c.Timeout < time.Second {
		errs = append(errs, fmt.Errorf("KREABUS_RESULTS_TIMEOUT: %v is shorter than 1s", c.Timeout))
	}
	if c.IdleTimeout <= 0 || c.IdleTimeout > c.Timeout {
		errs = append(errs, fmt.Errorf("KREABUS_RESULTS_IDLE_TIMEOUT: %v must be positive and at most KREABUS_RESULTS_TIMEOUT", c.IdleTimeout))
	}
	if c.Attempts < 1 {
		errs = append(errs, fmt.Errorf("KREABUS_RESULTS_ATTEMPTS: %d is less than 1", c.Attempts))
	}
	if c.Concurrency < 1 {
		errs = append(errs, fmt.Errorf("KREABUS_MIRROR_CONCURRENCY: %d is less than 1", c.Concurrency))
	}
	if !bucketName(c.Consumer) {
		errs = append(errs, fmt.Errorf("KREABUS_MIRROR_CONSUMER: %q is not a valid consumer name ([A-Za-z0-9_-]{1,64})", c.Consumer))
	}
	if c.AckWait < time.Second {
		errs = append(errs, fmt.Errorf("KREABUS_MIRROR_ACK_WAIT: %v is shorter than 1s", c.AckWait))
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	c.policy.Hosts = hosts
	c.policy.AllowPrivate = c.AllowPrivate
	return nil
}

// bucketName reports whether s is usable as a bucket or consumer name: 1
// to 64 letters, digits, '_' or '-', the alphabet and length of request
// IDs.
func bucketName(s string) bool { return events.ValidRequestID(s) }
