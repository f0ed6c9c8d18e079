// Package program is the lifecycle every kreabus command shares: load and
// validate the settings, build the logger, start, run until a signal or a
// failure, shut down within a bound, and map the outcome to an exit code.
// Base (base.go) is what every running program holds: the NATS connection,
// the admin server, its background parts and the first of them to fail.
//
// Settings follow one convention, in every group (a domain package's
// Config, natsconn's, admin's, logging's, Common) and in every program's
// Settings:
//
//   - the defaults are the package's exported Default* constants, and
//     nowhere else (no default struct tags);
//   - SetDefaults fills the zero fields from them: config.Load calls it on
//     a new struct before reading the file, the environment and the flags,
//     so the loaded values start from the defaults;
//   - Validate checks, after the defaults, and returns every problem,
//     joined (errors.Join), each naming its setting.
//
// A domain group (bridge, submitter, mirror, ledger, reconciler) reads a
// zero value as its default, so a program's Validate calls its SetDefaults
// again before its Validate, as the domain constructors do. The shared
// groups have settings whose zero value is a setting of its own
// (KREABUS_ADMIN_LISTEN empty turns the admin server off,
// KREABUS_CREATE_STREAMS false), so theirs run on a new struct only.
package program

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/kreabus/kreabus/internal/admin"
	"github.com/kreabus/kreabus/internal/config"
	"github.com/kreabus/kreabus/internal/ledger"
	"github.com/kreabus/kreabus/internal/logging"
	"github.com/kreabus/kreabus/internal/natsconn"
)

// Exit codes of Main.
const (
	ExitOK     = 0
	ExitFailed = 1
	ExitConfig = 2 // a setting is missing or malformed
)

// DefaultShutdownTimeout is KREABUS_SHUTDOWN_TIMEOUT's default, the same
// for every program: within the 30 s Kubernetes gives a pod to stop, with
// room for the NATS drain.
const DefaultShutdownTimeout = 20 * time.Second

// Common holds the settings every program reads besides its own: the NATS
// connection, the streams, the admin listener, logging and the bound of a
// graceful stop. Programs embed it in their Settings.
type Common struct {
	NATS    natsconn.Config
	Streams natsconn.StreamsConfig
	Admin   admin.Config
	Log     logging.Config

	ShutdownTimeout time.Duration `env:"KREABUS_SHUTDOWN_TIMEOUT" flag:"shutdown-timeout" usage:"how long a graceful stop (SIGTERM) waits for the work in hand (webhooks, API calls, copies) to finish and NATS to drain"`
}

// Ledger is l as the program opens it: the ledger bucket is created when
// KREABUS_CREATE_STREAMS allows, with KREABUS_STREAM_REPLICAS replicas
// unless its own setting says otherwise.
func (c *Common) Ledger(l ledger.Config) ledger.Config {
	l.Create = c.Streams.CreateStreams
	if l.Replicas == 0 {
		l.Replicas = c.Streams.Replicas
	}
	return l
}

// SetDefaults gives a new Common its defaults.
func (c *Common) SetDefaults() {
	c.NATS.SetDefaults()
	c.Streams.SetDefaults()
	c.Admin.SetDefaults()
	c.Log.SetDefaults()
	if c.ShutdownTimeout == 0 {
		c.ShutdownTimeout = DefaultShutdownTimeout
	}
}

// Validate checks the shared settings; every problem is reported, joined.
func (c *Common) Validate() error {
	var errs []error
	if err := c.NATS.Validate(); err != nil {
		errs = append(errs, err)
	}
	if c.ShutdownTimeout <= 0 {
		errs = append(errs, fmt.Errorf("KREABUS_SHUTDOWN_TIMEOUT: %v is not positive", c.ShutdownTimeout))
	}
	return errors.Join(errs...)
}

// Shared returns c: a program's Settings gets it by embedding Common.
func (c *Common) Shared() *Common { return c }

// Settings is what Main needs of a program's settings struct (a pointer
// to it), which embeds Common and is loaded with config.Load.
type Settings interface {
	config.Defaulter
	Validate() error
	Shared() *Common
	// Start starts the program the settings describe.
	Start(log *slog.Logger) (Running, error)
}

// Running is a started program.
type Running interface {
	// Failed delivers the error of a part that stopped by itself.
	Failed() <-chan error
	// Shutdown stops the program in order within ctx.
	Shutdown(ctx context.Context) error
	// ShutdownTimeout bounds Shutdown: KREABUS_SHUTDOWN_TIMEOUT, plus
	// what the program needs beyond it.
	ShutdownTimeout() time.Duration
}

// Run runs a started program until ctx ends (the signal) or a part fails,
// then shuts it down within its ShutdownTimeout.
func Run(ctx context.Context, p Running) error {
	var failed error
	select {
	case <-ctx.Done():
	case failed = <-p.Failed():
	}
	sctx, cancel := context.WithTimeout(context.Background(), p.ShutdownTimeout())
	defer cancel()
	return errors.Join(failed, p.Shutdown(sctx))
}

// adminStopTimeout bounds the admin server's shutdown: by then nothing
// depends on its probes any more.
const adminStopTimeout = time.Second

// Main loads s (a pointer to a new settings struct) from args, env and the
// optional YAML file, validates it, and runs the program it starts until
// ctx ends. A setting error is one line on stderr naming every setting at
// fault, and ExitConfig; a secret never appears in it.
func Main(ctx context.Context, name string, args []string, env func(string) (string, bool), stderr io.Writer, s Settings) int {
	if err := config.Load(s, name, args, env); err != nil {
		if errors.Is(err, config.ErrHelp) {
			return ExitOK
		}
		fmt.Fprintf(stderr, "%s: %v\n", name, err)
		return ExitConfig
	}
	if err := s.Validate(); err != nil {
		fmt.Fprintf(stderr, "%s: %s\n", name, oneLine(err))
		return ExitConfig
	}
	log, err := logging.New(s.Shared().Log, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", name, err)
		return ExitConfig
	}
	p, err := s.Start(log)
	if err == nil {
		err = Run(ctx, p)
	}
	if err != nil {
		log.Error(name+" failed", "err", err)
		return ExitFailed
	}
	return ExitOK
}

// oneLine writes joined errors on one line.
func oneLine(err error) string {
	return strings.ReplaceAll(err.Error(), "\n", "; ")
}
