package submitter

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"
)

// Defaults of the settings: SetDefaults fills a Config's zero fields from
// them, for the programs (before loading the settings) and for a Config
// built in code.
const (
	DefaultAPIURL          = "https://api.krea.ai"
	DefaultConcurrency     = 16
	DefaultMaxDeliveries   = 10
	DefaultRetryBackoffMin = time.Second
	DefaultRetryBackoffMax = 5 * time.Minute
	DefaultPauseBackoffMin = 10 * time.Second
	DefaultPauseBackoffMax = 5 * time.Minute
	DefaultConsumer        = "kreabus-submitter"
	DefaultAPITimeout      = 30 * time.Second
	// DefaultShutdownTimeout is the stop bound of a Config built in code;
	// programs set ShutdownTimeout from KREABUS_SHUTDOWN_TIMEOUT.
	DefaultShutdownTimeout = 25 * time.Second
	// DefaultUncertainSettle is how long after an uncertain call's timeout
	// Krea's job listing is trusted to show the job the call made, if any;
	// it is also how often an uncertain request is checked again.
	DefaultUncertainSettle = 30 * time.Second
	// DefaultUncertainWait is how long after an uncertain call the request
	// waits for a webhook while jobs nobody owns were made around it.
	DefaultUncertainWait = time.Hour
	// DefaultUncertainAction is what happens then.
	DefaultUncertainAction = UncertainActionReject
	// MaxConcurrency bounds KREABUS_SUBMIT_CONCURRENCY.
	MaxConcurrency = 4096
)

// Internal tuning.
const (
	// ackWaitMargin is added to the API timeout for the consumer's AckWait:
	// room for the ledger lookup and write, the event and the ack.
	ackWaitMargin = 60 * time.Second
	// The consumer's MaxAckPending: requests waiting out a retry delay
	// count as pending, so it is far above the concurrency.
	minMaxAckPending     = 1024
	maxAckPendingPerSlot = 16
	// handPerSlot: requests held (API call, then ledger, event, ack) per
	// API slot.
	handPerSlot = 2
	// maxRetryAfterHonoured caps a Retry-After used as a redelivery delay.
	maxRetryAfterHonoured = time.Hour
	// Bounds of what a rejected event carries.
	maxRejectionErrorBytes = 8 << 10
	maxReasonLen           = 1024
	// ledgerAttempts bounds the tries of the ledger write after a success.
	ledgerAttempts = 5
	// Retries of an event publication (JetStream unavailable).
	publishRetryMin        = 100 * time.Millisecond
	publishRetryMax        = 5 * time.Second
	defaultPublishPatience = 2 * time.Minute
	// defaultOpTimeout bounds one JetStream operation.
	defaultOpTimeout = 10 * time.Second
	// maxCallMargin bounds what is added to the API timeout for how long
	// after its intent a call may still be running.
	maxCallMargin = 5 * time.Second
)

// Config holds the submitter's settings. The env and flag tags name them
// for internal/config (the wiring in internal/submitterd loads them:
// flags > environment > YAML file > defaults).
type Config struct {
	APIToken string `env:"KREA_API_TOKEN" flag:"krea-api-token" required:"true" secret:"true" usage:"Krea API token, sent as Authorization: Bearer"`
	APIURL   string `env:"KREA_API_URL" flag:"krea-api-url" usage:"Krea API base URL"`

	PublicURL             string `env:"KREABUS_PUBLIC_URL" flag:"public-url" required:"true" usage:"public base URL of the bridge; webhook URLs are <public-url>/webhooks/krea/<token>"`
	WebhookSecret         string `env:"KREABUS_WEBHOOK_SECRET" flag:"webhook-secret" required:"true" secret:"true" usage:"secret that signs webhook tokens"`
	WebhookSecretPrevious string `env:"KREABUS_WEBHOOK_SECRET_PREVIOUS" flag:"webhook-secret-previous" secret:"true" usage:"previous webhook secret, still accepted during a rotation"`

	Concurrency   int     `env:"KREABUS_SUBMIT_CONCURRENCY" flag:"submit-concurrency" usage:"Krea API calls in flight at most"`
	Rate          float64 `env:"KREABUS_SUBMIT_RATE" flag:"submit-rate" usage:"Krea API calls per second at most (0 = no limit)"`
	MaxDeliveries int     `env:"KREABUS_MAX_DELIVERIES" flag:"max-deliveries" usage:"API calls of a request that certainly made no job before it is rejected (out of retries); pauses and uncertain waits cost none"`

	RetryBackoffMin time.Duration `env:"KREABUS_RETRY_BACKOFF_MIN" flag:"retry-backoff-min" usage:"first redelivery delay after a retryable failure (doubles per delivery; each delay drawn from the upper half, as events.Backoff)"`
	RetryBackoffMax time.Duration `env:"KREABUS_RETRY_BACKOFF_MAX" flag:"retry-backoff-max" usage:"longest redelivery delay after a retryable failure"`
	PauseBackoffMin time.Duration `env:"KREABUS_PAUSE_BACKOFF_MIN" flag:"pause-backoff-min" usage:"first pause of the requests consumer (submission and polling) after a Krea account error (401/402/403); the next call then probes the account"`
	PauseBackoffMax time.Duration `env:"KREABUS_PAUSE_BACKOFF_MAX" flag:"pause-backoff-max" usage:"longest pause while account errors go on (each failed probe doubles it)"`

	Consumer        string        `env:"KREABUS_CONSUMER" flag:"consumer" usage:"durable consumer name on KREA_REQUESTS"`
	APITimeout      time.Duration `env:"KREABUS_API_TIMEOUT" flag:"api-timeout" usage:"bound of one Krea API call"`
	AckWait         time.Duration `env:"KREABUS_ACK_WAIT" flag:"ack-wait" usage:"how long a request held by a submitter that stopped answering stays with it before another takes it over (0: KREABUS_API_TIMEOUT + 1m)"`
	UncertainSettle time.Duration `env:"KREABUS_UNCERTAIN_SETTLE" flag:"uncertain-settle" usage:"after an uncertain call (timeout, lost answer, 5xx) and its API timeout, how long until Krea's job listing is trusted to show a job it made; also how often such a request is checked again"`
	UncertainWait   time.Duration `env:"KREABUS_UNCERTAIN_WAIT" flag:"uncertain-wait" usage:"how long after an uncertain call its request waits for a webhook while jobs nobody owns were made around it"`
	UncertainAction string        `env:"KREABUS_UNCERTAIN_ACTION" flag:"uncertain-action" usage:"what an uncertain request becomes after KREABUS_UNCERTAIN_WAIT: reject (never pay twice) or resend (never go without)"`

	// ShutdownTimeout is how long a graceful stop waits for calls in
	// flight to publish their events. Not a setting of its own: programs
	// set it from KREABUS_SHUTDOWN_TIMEOUT.
	ShutdownTimeout time.Duration

	// Create lets Run create the durable consumer when missing. Not a
	// setting of its own: programs set it from KREABUS_CREATE_STREAMS.
	Create bool
}

// SetDefaults fills the zero fields from the Default* constants.
func (c *Config) SetDefaults() {
	if c.APIURL == "" {
		c.APIURL = DefaultAPIURL
	}
	if c.Concurrency == 0 {
		c.Concurrency = DefaultConcurrency
	}
	if c.MaxDeliveries == 0 {
		c.MaxDeliveries = DefaultMaxDeliveries
	}
	if c.RetryBackoffMin == 0 {
		c.RetryBackoffMin = DefaultRetryBackoffMin
	}
	if c.RetryBackoffMax == 0 {
		c.RetryBackoffMax = max(DefaultRetryBackoffMax, c.RetryBackoffMin)
	}
	if c.PauseBackoffMin == 0 {
		c.PauseBackoffMin = DefaultPauseBackoffMin
	}
	if c.PauseBackoffMax == 0 {
		c.PauseBackoffMax = max(DefaultPauseBackoffMax, c.PauseBackoffMin)
	}
	if c.Consumer == "" {
		c.Consumer = DefaultConsumer
	}
	if c.APITimeout == 0 {
		c.APITimeout = DefaultAPITimeout
	}
	if c.ShutdownTimeout == 0 {
		c.ShutdownTimeout = DefaultShutdownTimeout
	}
	if c.UncertainSettle == 0 {
		c.UncertainSettle = DefaultUncertainSettle
	}
	if c.UncertainWait == 0 {
		c.UncertainWait = DefaultUncertainWait
	}
	if c.UncertainAction == "" {
		c.UncertainAction = DefaultUncertainAction
	}
}

// Validate checks the settings, after SetDefaults; every problem is
// reported, joined, each naming its setting. Secrets never appear in it.
func (c *Config) Validate() error {
	var errs []error
	bad := func(name, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: "+format, append([]any{name}, args...)...))
	}
	if c.APIToken == "" {
		bad("KREA_API_TOKEN", "required but not set")
	} else if strings.ContainsFunc(c.APIToken, func(r rune) bool { return r <= ' ' || r == 0x7f }) {
		bad("KREA_API_TOKEN", "contains white space or control characters")
	}
	if err := checkBaseURL(c.APIURL); err != nil {
		bad("KREA_API_URL", "%v", err)
	}
	if c.PublicURL == "" {
		bad("KREABUS_PUBLIC_URL", "required but not set")
	} else if err := checkBaseURL(c.PublicURL); err != nil {
		bad("KREABUS_PUBLIC_URL", "%v", err)
	}
	if c.WebhookSecret == "" {
		bad("KREABUS_WEBHOOK_SECRET", "required but not set")
	}
	if c.Concurrency < 1 || c.Concurrency > MaxConcurrency {
		bad("KREABUS_SUBMIT_CONCURRENCY", "%d is outside 1..%d", c.Concurrency, MaxConcurrency)
	}
	if c.Rate < 0 {
		bad("KREABUS_SUBMIT_RATE", "%v is negative", c.Rate)
	}
	if c.MaxDeliveries < 1 {
		bad("KREABUS_MAX_DELIVERIES", "%d is less than 1", c.MaxDeliveries)
	}
	if c.RetryBackoffMin <= 0 {
		bad("KREABUS_RETRY_BACKOFF_MIN", "must be positive")
	}
	if c.RetryBackoffMax < c.RetryBackoffMin {
		bad("KREABUS_RETRY_BACKOFF_MAX", "%v is below KREABUS_RETRY_BACKOFF_MIN %v", c.RetryBackoffMax, c.RetryBackoffMin)
	}
	if c.PauseBackoffMin <= 0 {
		bad("KREABUS_PAUSE_BACKOFF_MIN", "must be positive")
	}
	if c.PauseBackoffMax < c.PauseBackoffMin {
		bad("KREABUS_PAUSE_BACKOFF_MAX", "%v is below KREABUS_PAUSE_BACKOFF_MIN %v", c.PauseBackoffMax, c.PauseBackoffMin)
	}
	if !validConsumerName(c.Consumer) {
		bad("KREABUS_CONSUMER", "%q is not a valid durable name", c.Consumer)
	}
	if c.APITimeout <= 0 {
		bad("KREABUS_API_TIMEOUT", "must be positive")
	}
	if c.ShutdownTimeout <= 0 {
		bad("KREABUS_SHUTDOWN_TIMEOUT", "must be positive")
	}
	if c.AckWait < 0 || (c.AckWait > 0 && c.AckWait < time.Second) {
		bad("KREABUS_ACK_WAIT", "%v: want 0 (derived) or at least 1s", c.AckWait)
	}
	if c.UncertainSettle <= 0 {
		bad("KREABUS_UNCERTAIN_SETTLE", "must be positive")
	}
	if c.UncertainWait <= 0 {
		bad("KREABUS_UNCERTAIN_WAIT", "must be positive")
	}
	if c.UncertainAction != UncertainActionReject && c.UncertainAction != UncertainActionResend {
		bad("KREABUS_UNCERTAIN_ACTION", "%q is neither %s nor %s", c.UncertainAction, UncertainActionReject, UncertainActionResend)
	}
	return errors.Join(errs...)
}

// checkBaseURL accepts an absolute http(s) URL without user info, query or
// fragment.
func checkBaseURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return errors.New("not a URL")
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return fmt.Errorf("must be an absolute http or https URL, got %q", raw)
	}
	if u.Host == "" {
		return fmt.Errorf("%q has no host", raw)
	}
	if u.User != nil || u.RawQuery != "" || u.Fragment != "" || u.ForceQuery {
		return fmt.Errorf("%q must not have user info, query or fragment", raw)
	}
	return nil
}

// validConsumerName reports whether name can be a JetStream durable name.
func validConsumerName(name string) bool {
	if name == "" || len(name) > 255 {
		return false
	}
	return !strings.ContainsFunc(name, func(r rune) bool {
		return r <= ' ' || r == 0x7f || r == '.' || r == '*' || r == '>' || r == '/' || r == '\\'
	})
}

// ackWait is the consumer's AckWait: by default longer than one API call
// plus the ledger write and the event publication that follow it. A
// request whose handling takes longer is kept alive by InProgress beats,
// so a shorter setting only makes a dead submitter's requests come back
// sooner.
func (c *Config) ackWait() time.Duration {
	if c.AckWait > 0 {
		return c.AckWait
	}
	return c.APITimeout + ackWaitMargin
}

// maxAckPending bounds unacknowledged requests on the consumer. Requests
// waiting out a retry delay count too, so it is far above the concurrency.
func (c *Config) maxAckPending() int {
	return max(minMaxAckPending, maxAckPendingPerSlot*c.Concurrency)
}
