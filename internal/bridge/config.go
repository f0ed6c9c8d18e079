package bridge

import (
	"errors"
	"fmt"
	"time"
)

// Defaults of the bridge settings.
const (
	DefaultListen  = ":8080"
	DefaultMaxBody = 1 << 20
	// DefaultPublishTimeout bounds the wait for the job's owner (a ledger
	// read) and the PubAck together. It is kept below the 5 s that webhook
	// senders commonly allow, so that while JetStream cannot store (an R3
	// leader election takes a few seconds) the sender gets a 503 with
	// Retry-After, and retries, instead of timing out not knowing.
	DefaultPublishTimeout = 3 * time.Second
	DefaultMaxInFlight    = 1024
	// DefaultMaxInFlightPerToken is how many webhooks of one token (one
	// request) are handled at once. Krea sends one webhook per job and
	// status, and a request has one job (rarely two), so a handful is
	// plenty; beyond it a slow or leaked token gets 429, nobody else.
	DefaultMaxInFlightPerToken = 8
	// DefaultBodyBudget is how many body bytes the webhooks in flight may
	// hold together: 32 MiB leaves room, inside the 128 MiB the k8s
	// manifests give the bridge, for the NATS connection's buffers, the
	// ledger cache and the garbage collector's headroom.
	DefaultBodyBudget = 32 << 20
	// DefaultMaxConns bounds open connections: each costs ~25 KB (a
	// goroutine and its buffers) even while idle.
	DefaultMaxConns          = 1024
	DefaultReadHeaderTimeout = 5 * time.Second
	DefaultReadTimeout       = 15 * time.Second
	DefaultWriteTimeout      = 30 * time.Second
	DefaultIdleTimeout       = 120 * time.Second
	DefaultMaxHeaderBytes    = 16 << 10
)

// Config holds the settings of the webhook bridge. Zero values mean the
// default: SetDefaults fills them from the Default* constants, then
// Validate checks the result. The env and flag tags name the settings
// for internal/config (the wiring in internal/bridged loads them).
type Config struct {
	Secret         string `env:"KREABUS_WEBHOOK_SECRET" flag:"webhook-secret" required:"true" secret:"true" usage:"secret of the webhook tokens (HMAC-SHA256 key)"`
	SecretPrevious string `env:"KREABUS_WEBHOOK_SECRET_PREVIOUS" flag:"webhook-secret-previous" secret:"true" usage:"previous secret, still accepted while rotating"`

	Listen         string        `env:"KREABUS_LISTEN" flag:"listen" usage:"webhook listen address"`
	MaxBody        int           `env:"KREABUS_MAX_BODY" flag:"max-body" usage:"largest webhook body, in bytes (413 beyond); lowered to what the NATS server takes (its max_payload less 8 KiB for headers)"`
	PublishTimeout time.Duration `env:"KREABUS_PUBLISH_TIMEOUT" flag:"publish-timeout" usage:"longest wait for the job's owner and the JetStream PubAck together (503 beyond); keep it below the webhook sender's timeout"`
	MaxInFlight    int           `env:"KREABUS_MAX_IN_FLIGHT" flag:"max-in-flight" usage:"webhooks handled at once (429 beyond)"`
	// MaxInFlightPerToken: the slot is taken after the token is verified
	// and before the body is read, so slow bodies on one token hold only
	// that token's slots.
	MaxInFlightPerToken int `env:"KREABUS_MAX_IN_FLIGHT_PER_TOKEN" flag:"max-in-flight-per-token" usage:"webhooks of one token (one request) handled at once (429 beyond, for that token only)"`
	BodyBudget          int `env:"KREABUS_BODY_BUDGET" flag:"body-budget" usage:"body bytes all webhooks in flight may hold together (429 beyond); bounds the bridge's memory"`
	MaxConns            int `env:"KREABUS_MAX_CONNS" flag:"max-conns" usage:"open webhook connections at most (closed at once beyond; idle keep-alive connections are closed when more than half are open)"`

	ReadHeaderTimeout time.Duration `env:"KREABUS_READ_HEADER_TIMEOUT" flag:"read-header-timeout" usage:"time to read a request's headers"`
	ReadTimeout       time.Duration `env:"KREABUS_READ_TIMEOUT" flag:"read-timeout" usage:"time to read a whole request"`
	WriteTimeout      time.Duration `env:"KREABUS_WRITE_TIMEOUT" flag:"write-timeout" usage:"time from the end of the headers to the end of the answer"`
	IdleTimeout       time.Duration `env:"KREABUS_IDLE_TIMEOUT" flag:"idle-timeout" usage:"keep-alive idle time"`
	MaxHeaderBytes    int           `env:"KREABUS_MAX_HEADER_BYTES" flag:"max-header-bytes" usage:"largest request header block"`
}

// SetDefaults fills the zero fields from the Default* constants.
func (c *Config) SetDefaults() {
	if c.Listen == "" {
		c.Listen = DefaultListen
	}
	if c.MaxBody <= 0 {
		c.MaxBody = DefaultMaxBody
	}
	if c.PublishTimeout <= 0 {
		c.PublishTimeout = DefaultPublishTimeout
	}
	if c.MaxInFlight <= 0 {
		c.MaxInFlight = DefaultMaxInFlight
	}
	if c.MaxInFlightPerToken <= 0 {
		c.MaxInFlightPerToken = DefaultMaxInFlightPerToken
	}
	if c.BodyBudget <= 0 {
		c.BodyBudget = DefaultBodyBudget
	}
	if c.MaxConns <= 0 {
		c.MaxConns = DefaultMaxConns
	}
	if c.ReadHeaderTimeout <= 0 {
		c.ReadHeaderTimeout = DefaultReadHeaderTimeout
	}
	if c.ReadTimeout <= 0 {
		c.ReadTimeout = DefaultReadTimeout
	}
	if c.WriteTimeout <= 0 {
		c.WriteTimeout = DefaultWriteTimeout
	}
	if c.IdleTimeout <= 0 {
		c.IdleTimeout = DefaultIdleTimeout
	}
	if c.MaxHeaderBytes <= 0 {
		c.MaxHeaderBytes = DefaultMaxHeaderBytes
	}
}

// ErrNoSecret is the error of a Config without KREABUS_WEBHOOK_SECRET.
var ErrNoSecret = errors.New("KREABUS_WEBHOOK_SECRET is required but not set")

// Validate checks the settings, after SetDefaults; every problem is
// reported, joined.
func (c *Config) Validate() error {
	var errs []error
	if c.Secret == "" {
		errs = append(errs, ErrNoSecret)
	}
	if c.WriteTimeout <= c.PublishTimeout {
		errs = append(errs, fmt.Errorf("KREABUS_WRITE_TIMEOUT (%v) must be longer than KREABUS_PUBLISH_TIMEOUT (%v)", c.WriteTimeout, c.PublishTimeout))
	}
	if c.BodyBudget <= c.MaxBody {
		errs = append(errs, fmt.Errorf("KREABUS_BODY_BUDGET (%d) must be larger than KREABUS_MAX_BODY (%d): the largest webhook could never be taken", c.BodyBudget, c.MaxBody))
	}
	return errors.Join(errs...)
}
