package bridge

import (
	"errors"
	"fmt"
	"time"

	"github.com/kreabus/kreabus/internal/admin"
	"github.com/kreabus/kreabus/internal/ledger"
	"github.com/kreabus/kreabus/internal/logging"
	"github.com/kreabus/kreabus/internal/natsconn"
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
	DefaultShutdownTimeout   = 10 * time.Second
)

// Config holds the settings of the webhook bridge. Zero values mean the
// default. The tags are read by internal/config.
type Config struct {
	Secret         string `env:"KREABUS_WEBHOOK_SECRET" flag:"webhook-secret" required:"true" secret:"true" usage:"secret of the webhook tokens (HMAC-SHA256 key)"`
	SecretPrevious string `env:"KREABUS_WEBHOOK_SECRET_PREVIOUS" flag:"webhook-secret-previous" secret:"true" usage:"previous secret, still accepted while rotating"`

	Listen         string        `env:"KREABUS_LISTEN" flag:"listen" default:":8080" usage:"webhook listen address"`
	MaxBody        int           `env:"KREABUS_MAX_BODY" flag:"max-body" default:"1048576" usage:"largest webhook body, in bytes (413 beyond); lowered to what the NATS server takes (its max_payload less 8 KiB for headers)"`
	PublishTimeout time.Duration `env:"KREABUS_PUBLISH_TIMEOUT" flag:"publish-timeout" default:"3s" usage:"longest wait for the job's owner and the JetStream PubAck together (503 beyond); keep it below the webhook sender's timeout"`
	MaxInFlight    int           `env:"KREABUS_MAX_IN_FLIGHT" flag:"max-in-flight" default:"1024" usage:"webhooks handled at once (429 beyond)"`
	// MaxInFlightPerToken: the slot is taken after the token is verified
	// and before the body is read, so slow bodies on one token hold only
	// that token's slots.
	MaxInFlightPerToken int `env:"KREABUS_MAX_IN_FLIGHT_PER_TOKEN" flag:"max-in-flight-per-token" default:"8" usage:"webhooks of one token (one request) handled at once (429 beyond, for that token only)"`
	BodyBudget          int `env:"KREABUS_BODY_BUDGET" flag:"body-budget" default:"33554432" usage:"body bytes all webhooks in flight may hold together (429 beyond); bounds the bridge's memory"`
	MaxConns            int `env:"KREABUS_MAX_CONNS" flag:"max-conns" default:"1024" usage:"open webhook connections at most (closed at once beyond; idle keep-alive connections are closed when more than half are open)"`

	ReadHeaderTimeout time.Duration `env:"KREABUS_READ_HEADER_TIMEOUT" flag:"read-header-timeout" default:"5s" usage:"time to read a request's headers"`
	ReadTimeout       time.Duration `env:"KREABUS_READ_TIMEOUT" flag:"read-timeout" default:"15s" usage:"time to read a whole request"`
	WriteTimeout      time.Duration `env:"KREABUS_WRITE_TIMEOUT" flag:"write-timeout" default:"30s" usage:"time from the end of the headers to the end of the answer"`
	IdleTimeout       time.Duration `env:"KREABUS_IDLE_TIMEOUT" flag:"idle-timeout" default:"120s" usage:"keep-alive idle time"`
	MaxHeaderBytes    int           `env:"KREABUS_MAX_HEADER_BYTES" flag:"max-header-bytes" default:"16384" usage:"largest request header block"`
	ShutdownTimeout   time.Duration `env:"KREABUS_SHUTDOWN_TIMEOUT" flag:"shutdown-timeout" default:"10s" usage:"time to finish in-flight webhooks and drain NATS on SIGTERM"`
	// DrainDelay keeps serving after /readyz turned 503 on SIGTERM, so load
	// balancers that poll readiness stop sending before the listener closes
	// (Kubernetes: a few seconds; counts within ShutdownTimeout).
	DrainDelay time.Duration `env:"KREABUS_DRAIN_DELAY" flag:"drain-delay" default:"0s" usage:"on SIGTERM, keep serving this long after /readyz turns 503 before closing the listener"`
}

func (c *Config) setDefaults() {
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
	if c.ShutdownTimeout <= 0 {
		c.ShutdownTimeout = DefaultShutdownTimeout
	}
}

// ErrNoSecret is the error of a Config without KREABUS_WEBHOOK_SECRET.
var ErrNoSecret = errors.New("KREABUS_WEBHOOK_SECRET is required but not set")

// Validate checks the settings, after defaults are applied.
func (c *Config) Validate() error {
	c.setDefaults()
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

// Aliases give the embedded groups of Settings distinct field names: they
// are all called Config in their packages.
type (
	NATSConfig    = natsconn.Config
	StreamsConfig = natsconn.StreamsConfig
	AdminConfig   = admin.Config
	LogConfig     = logging.Config
	LedgerConfig  = ledger.Config
)

// Settings is everything cmd/bridge reads: the bridge's own settings, the
// NATS connection, the streams, the admin listener and logging. Load it
// with config.Load.
type Settings struct {
	Config
	LedgerConfig
	NATSConfig
	StreamsConfig
	AdminConfig
	LogConfig
}

// Validate checks every group.
func (s *Settings) Validate() error {
	if err := s.Config.Validate(); err != nil {
		return err
	}
	if err := s.LedgerConfig.Validate(); err != nil {
		return err
	}
	return s.NATSConfig.Validate()
}

// Logging is the logging group, for internal/program.
func (s *Settings) Logging() logging.Config { return s.LogConfig }
