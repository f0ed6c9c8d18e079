package ledger

import (
	"errors"
	"fmt"
	"time"

	"github.com/kreabus/kreabus/pkg/events"
)

// Defaults.
const (
	// DefaultBucket is the name of the ledger's key-value bucket.
	DefaultBucket = "KREABUS_LEDGER"
	// DefaultTTL bounds the ledger: a key not written for this long is
	// removed. It must outlive the reconciler's maximum job age and the
	// KREA_JOBS duplicate window for the guarantees to hold.
	DefaultTTL = 7 * 24 * time.Hour
	// DefaultReplicas is the replica count of a created bucket when
	// Replicas is 0 (programs set it from KREABUS_STREAM_REPLICAS first).
	DefaultReplicas = 1
	// DefaultWorkers is how many events the Recorder applies at once.
	DefaultWorkers = 8
	// DefaultAckWait is how long the server waits for the Recorder to
	// acknowledge an event before it redelivers it.
	DefaultAckWait = 30 * time.Second
	// DefaultReadTimeout bounds an Owners lookup's key reads.
	DefaultReadTimeout = 5 * time.Second
	// MinTTL is the shortest TTL accepted (JetStream's limit markers need
	// at least a second).
	MinTTL = time.Second
	// ConsumerName is the Recorder's durable consumer on KREA_JOBS. Every
	// replica uses the same one, so they share the work.
	ConsumerName = "kreabus-ledger"
)

// Config holds the ledger settings. Create is not a setting of its own: the
// program sets it from natsconn.StreamsConfig.CreateStreams
// (KREABUS_CREATE_STREAMS), which covers buckets and consumers too.
type Config struct {
	Bucket   string        `env:"KREABUS_LEDGER_BUCKET" flag:"ledger-bucket" usage:"JetStream key-value bucket of the job ledger"`
	Replicas int           `env:"KREABUS_LEDGER_REPLICAS" flag:"ledger-replicas" usage:"replicas of the ledger bucket when created (0: as KREABUS_STREAM_REPLICAS)"`
	TTL      time.Duration `env:"KREABUS_LEDGER_TTL" flag:"ledger-ttl" usage:"how long a ledger entry is kept after its last write (bounds the ledger; must exceed KREABUS_JOB_MAX_AGE)"`
	Workers  int           `env:"KREABUS_LEDGER_WORKERS" flag:"ledger-workers" usage:"job events the ledger recorder applies concurrently"`
	// CacheSize bounds the bridge's cache of settled jobs.
	CacheSize int `env:"KREABUS_LEDGER_CACHE" flag:"ledger-cache" usage:"jobs the bridge keeps in memory (recorded while it runs, or settled) to answer webhooks without a ledger read (-1: none)"`

	// Create lets Open create the bucket and the Recorder create its
	// durable consumer when missing.
	Create bool
	// AckWait is the Recorder consumer's ack wait (default DefaultAckWait).
	AckWait time.Duration
	// ReadTimeout bounds the key reads of an Owners lookup whose context
	// has no deadline (default DefaultReadTimeout). The deadline is made
	// only when a read is needed: most lookups are answered from memory,
	// and a timer per webhook would cost more than the answer.
	ReadTimeout time.Duration
}

// SetDefaults fills the zero fields from the Default* constants. Replicas
// stays 0 (created with DefaultReplicas): the programs read 0 as "as
// KREABUS_STREAM_REPLICAS".
func (c *Config) SetDefaults() {
	if c.Bucket == "" {
		c.Bucket = DefaultBucket
	}
	if c.TTL == 0 {
		c.TTL = DefaultTTL
	}
	if c.Workers <= 0 {
		c.Workers = DefaultWorkers
	}
	if c.CacheSize == 0 {
		c.CacheSize = DefaultCacheSize
	}
	if c.AckWait <= 0 {
		c.AckWait = DefaultAckWait
	}
	if c.ReadTimeout <= 0 {
		c.ReadTimeout = DefaultReadTimeout
	}
}

// Validate checks the settings, after SetDefaults; every problem is
// reported, joined.
func (c *Config) Validate() error {
	var errs []error
	if !events.ValidRequestID(c.Bucket) {
		errs = append(errs, fmt.Errorf("KREABUS_LEDGER_BUCKET: %q is not a valid bucket name ([A-Za-z0-9_-]{1,64})", c.Bucket))
	}
	if c.TTL < MinTTL {
		errs = append(errs, fmt.Errorf("KREABUS_LEDGER_TTL: %v is shorter than %v", c.TTL, MinTTL))
	}
	if c.Replicas > 5 {
		errs = append(errs, errors.New("KREABUS_LEDGER_REPLICAS: at most 5"))
	}
	return errors.Join(errs...)
}

// replicas is the replica count of a created bucket.
func (c *Config) replicas() int {
	if c.Replicas <= 0 {
		return DefaultReplicas
	}
	return c.Replicas
}
