// Package natsconn connects kreabus programs to NATS with the standard
// connection settings (NATS_URL, NATS_CREDS, NATS_NKEY, NATS_CA, NATS_CERT,
// NATS_KEY), reconnecting forever, and ensures the kreabus streams.
package natsconn

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/kreabus/kreabus/internal/promreg"
	"github.com/kreabus/kreabus/internal/retry"
	"github.com/kreabus/kreabus/pkg/events"
)

// Connection defaults.
const (
	// DefaultURL is where NATS is looked for when NATS_URL is not set.
	DefaultURL = nats.DefaultURL
	// ReconnectWait and ReconnectJitter space reconnection attempts so a
	// fleet of replicas does not hammer a restarting server in lockstep.
	ReconnectWait      = 500 * time.Millisecond
	ReconnectJitter    = 250 * time.Millisecond
	ReconnectJitterTLS = time.Second
	// ReconnectBufSize is what the client buffers while disconnected; the
	// services never rely on it (they wait for acks), so keep it modest.
	ReconnectBufSize = 8 << 20
)

// Config holds the NATS connection settings.
type Config struct {
	URL   string `env:"NATS_URL" flag:"nats-url" usage:"NATS server URLs, comma separated"`
	Creds string `env:"NATS_CREDS" flag:"nats-creds" usage:"NATS credentials (JWT) file"`
	NKey  string `env:"NATS_NKEY" flag:"nats-nkey" usage:"NATS nkey seed file"`
	CA    string `env:"NATS_CA" flag:"nats-ca" usage:"CA certificate file to verify the NATS server"`
	Cert  string `env:"NATS_CERT" flag:"nats-cert" usage:"client certificate file for NATS mutual TLS"`
	Key   string `env:"NATS_KEY" flag:"nats-key" usage:"client key file for NATS mutual TLS"`
	// Name tells replicas apart in the server's connection list (e.g. the
	// pod name); empty means the program's name.
	Name string `env:"KREABUS_NATS_NAME" flag:"nats-name" usage:"NATS connection name shown by the server (default: kreabus-bridge, kreabus-submitter or kreabus-mirror)"`
}

// SetDefaults gives a new Config its defaults. An empty URL set later is
// an error, not the default.
func (c *Config) SetDefaults() {
	if c.URL == "" {
		c.URL = DefaultURL
	}
}

// Validate checks the settings for consistency; every problem is
// reported, joined.
func (c *Config) Validate() error {
	var errs []error
	if c.URL == "" {
		errs = append(errs, errors.New("NATS_URL is empty"))
	}
	if (c.Cert == "") != (c.Key == "") {
		errs = append(errs, errors.New("NATS_CERT and NATS_KEY go together"))
	}
	if c.Creds != "" && c.NKey != "" {
		errs = append(errs, errors.New("NATS_CREDS and NATS_NKEY are exclusive"))
	}
	return errors.Join(errs...)
}

// Stream defaults: those of package events, and creation on.
const (
	DefaultStreamReplicas  = events.DefaultReplicas
	DefaultJobsMaxAge      = events.DefaultJobsMaxAge
	DefaultDuplicateWindow = events.DefaultDuplicateWindow
	// DefaultCreateStreams: programs create what they need when missing.
	DefaultCreateStreams = true
)

// StreamsConfig holds the settings of the kreabus streams.
type StreamsConfig struct {
	Replicas        int           `env:"KREABUS_STREAM_REPLICAS" flag:"stream-replicas" usage:"replicas of created streams (3 on a JetStream cluster)"`
	JobsMaxAge      time.Duration `env:"KREABUS_JOBS_MAX_AGE" flag:"jobs-max-age" usage:"how long KREA_JOBS keeps events"`
	DuplicateWindow time.Duration `env:"KREABUS_DUPLICATE_WINDOW" flag:"duplicate-window" usage:"KREA_JOBS de-duplication window"`
	CreateStreams   bool          `env:"KREABUS_CREATE_STREAMS" flag:"create-streams" usage:"create missing streams and buckets at start-up (off for locked-down accounts)"`
}

// SetDefaults gives a new StreamsConfig its defaults. Call it on a new
// value only: CreateStreams false is a setting, not a missing value.
// Zero numbers set later mean the defaults of package events.
func (c *StreamsConfig) SetDefaults() {
	if c.Replicas == 0 {
		c.Replicas = DefaultStreamReplicas
	}
	if c.JobsMaxAge == 0 {
		c.JobsMaxAge = DefaultJobsMaxAge
	}
	if c.DuplicateWindow == 0 {
		c.DuplicateWindow = DefaultDuplicateWindow
	}
	c.CreateStreams = DefaultCreateStreams
}

// Options converts the settings for package events.
func (c *StreamsConfig) Options() events.StreamOptions {
	return events.StreamOptions{Replicas: c.Replicas, JobsMaxAge: c.JobsMaxAge, DuplicateWindow: c.DuplicateWindow}
}

// Connect dials NATS. It returns once connected, or at once with a live but
// disconnected *nats.Conn when the server is down (RetryOnFailedConnect):
// the programs start, report not ready, and recover by themselves. name is
// the connection name shown by the server unless cfg.Name overrides it.
// reg, when not nil, gets the kreabus_nats_connected gauge.
func Connect(cfg Config, name string, log *slog.Logger, reg prometheus.Registerer, extra ...nats.Option) (*nats.Conn, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Name != "" {
		name = cfg.Name
	}
	opts := []nats.Option{
		nats.Name(name),
		nats.MaxReconnects(-1),
		nats.RetryOnFailedConnect(true),
		nats.ReconnectWait(ReconnectWait),
		nats.ReconnectJitter(ReconnectJitter, ReconnectJitterTLS),
		nats.ReconnectBufSize(ReconnectBufSize),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil { // nil: we closed the connection ourselves
				log.Warn("nats disconnected", "err", err)
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			log.Info("nats reconnected", "server", nc.ConnectedUrlRedacted())
		}),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			log.Warn("nats async error", "err", err)
		}),
	}
	if cfg.Creds != "" {
		opts = append(opts, nats.UserCredentials(cfg.Creds))
	}
	if cfg.NKey != "" {
		o, err := nats.NkeyOptionFromSeed(cfg.NKey)
		if err != nil {
			return nil, fmt.Errorf("NATS_NKEY: %w", err)
		}
		opts = append(opts, o)
	}
	if cfg.CA != "" {
		opts = append(opts, nats.RootCAs(cfg.CA))
	}
	if cfg.Cert != "" {
		opts = append(opts, nats.ClientCert(cfg.Cert, cfg.Key))
	}
	opts = append(opts, extra...)
	nc, err := nats.Connect(cfg.URL, opts...)
	if err != nil {
		return nil, fmt.Errorf("nats connect: %w", err)
	}
	if reg != nil {
		g := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "kreabus_nats_connected",
			Help: "1 while the NATS connection is up.",
		}, func() float64 {
			if nc.IsConnected() {
				return 1
			}
			return 0
		})
		if _, err := promreg.Register(reg, g); err != nil {
			nc.Close()
			return nil, err
		}
	}
	return nc, nil
}

// streamsBackoff paces SetUpStreams' attempts while JetStream is down.
var streamsBackoff = events.Backoff{Min: 200 * time.Millisecond, Max: 5 * time.Second}

// SetUpStreams ensures each stream with events.EnsureStream (created when
// missing, checked when present), retrying with internal/retry until
// JetStream answers or ctx ends, so a program can start before its NATS
// server does. A stream that lacks only its RePublish, which this user may
// not add, is usable: that is logged with the command that adds it. An
// incompatible stream (events.ErrIncompatibleStream) is returned at once.
func SetUpStreams(ctx context.Context, js jetstream.JetStream, log *slog.Logger, cfgs ...jetstream.StreamConfig) error {
	err := retry.Do(ctx, streamsBackoff, func(ctx context.Context) error {
		for _, c := range cfgs {
			_, err := events.EnsureStream(ctx, js, c)
			switch {
			case errors.Is(err, events.ErrNoRePublish):
				// Usable as it is; only its followers wait. The shipped
				// permissions let no program reconfigure KREA_JOBS: the
				// operator adds it once.
				log.Warn("stream lacks its RePublish and this user may not add it: core subscribers of its follow subjects hear nothing until an operator adds it",
					"stream", c.Name, "source", c.RePublish.Source, "destination", c.RePublish.Destination,
					"fix", "nats stream edit "+c.Name+" --republish-source '"+c.RePublish.Source+"' --republish-destination '"+c.RePublish.Destination+"'",
					"err", err)
			case errors.Is(err, events.ErrIncompatibleStream):
				return retry.Permanent(err)
			case err != nil:
				return err
			}
		}
		return nil
	}, func(err error, _ int, wait time.Duration) {
		log.Warn("waiting for JetStream to ensure streams", "err", err, "retry_in", wait.String())
	})
	if err != nil && ctx.Err() != nil {
		return fmt.Errorf("ensure streams: %w", err)
	}
	return err
}

// CheckStreams reports whether every named stream exists, for readiness.
func CheckStreams(ctx context.Context, nc *nats.Conn, js jetstream.JetStream, names ...string) error {
	if !nc.IsConnected() {
		return errors.New("nats not connected")
	}
	for _, n := range names {
		if _, err := js.Stream(ctx, n); err != nil {
			return fmt.Errorf("stream %s: %w", n, err)
		}
	}
	return nil
}

// Drain drains nc (pending publishes flushed, subscriptions ended) and
// waits until closed is closed (the connection's ClosedHandler closes it),
// closing the connection outright when ctx ends first.
func Drain(ctx context.Context, nc *nats.Conn, closed <-chan struct{}) error {
	if err := nc.Drain(); err != nil && !errors.Is(err, nats.ErrConnectionClosed) && !errors.Is(err, nats.ErrConnectionReconnecting) {
		nc.Close()
	}
	select {
	case <-closed:
		return nil
	case <-ctx.Done():
		nc.Close()
		return fmt.Errorf("nats drain: %w", ctx.Err())
	}
}

// StreamsCheck is a program's readiness check of its streams: an error
// its stream set-up recorded (a stream there but unusable) until cleared,
// otherwise CheckStreams. The zero value is ready to use.
type StreamsCheck struct {
	mu  sync.Mutex
	err error
}

// Set records why the streams are unusable; nil clears it.
func (c *StreamsCheck) Set(err error) {
	c.mu.Lock()
	c.err = err
	c.mu.Unlock()
}

// Check is the recorded error, or CheckStreams of the named streams.
func (c *StreamsCheck) Check(ctx context.Context, nc *nats.Conn, js jetstream.JetStream, names ...string) error {
	c.mu.Lock()
	err := c.err
	c.mu.Unlock()
	if err != nil {
		return err
	}
	return CheckStreams(ctx, nc, js, names...)
}
