// Package program is the lifecycle every kreabus command shares: load and
// validate the settings, build the logger, start, run until a signal or a
// failure, shut down within a bound, and map the outcome to an exit code.
package program

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/kreabus/kreabus/internal/admin"
	"github.com/kreabus/kreabus/internal/config"
	"github.com/kreabus/kreabus/internal/logging"
	"github.com/kreabus/kreabus/internal/natsconn"
)

// Exit codes of Main.
const (
	ExitOK     = 0
	ExitFailed = 1
	ExitConfig = 2 // a setting is missing or malformed
)

// Settings is a program's settings struct, loaded with config.Load.
type Settings interface {
	Validate() error
	Logging() logging.Config
}

// Running is a started program.
type Running interface {
	// Failed delivers the error of a part that stopped by itself.
	Failed() <-chan error
	// Shutdown stops the program in order within ctx.
	Shutdown(ctx context.Context) error
}

// Run runs a started program until ctx ends (the signal) or a part fails,
// then shuts it down within shutdownTimeout.
func Run(ctx context.Context, p Running, shutdownTimeout time.Duration) error {
	var failed error
	select {
	case <-ctx.Done():
	case failed = <-p.Failed():
	}
	sctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	return errors.Join(failed, p.Shutdown(sctx))
}

// adminStopTimeout bounds the admin server's shutdown: by then nothing
// depends on its probes any more.
const adminStopTimeout = time.Second

// Finish is the end of every program's Shutdown, once its own parts have
// stopped: the NATS connection drains (bounded by ctx; closed is its
// closed handler's channel), the admin server stops, and errs, with what
// went wrong here, are joined. "<name> stopped" is logged when nothing did.
func Finish(ctx context.Context, name string, log *slog.Logger, nc *nats.Conn, closed <-chan struct{}, adm *admin.Server, errs []error) error {
	if err := natsconn.Drain(ctx, nc, closed); err != nil {
		errs = append(errs, err)
	}
	actx, cancel := context.WithTimeout(context.Background(), adminStopTimeout)
	defer cancel()
	if err := adm.Shutdown(actx); err != nil {
		errs = append(errs, fmt.Errorf("admin server: %w", err))
	}
	err := errors.Join(errs...)
	if err == nil {
		log.Info(name + " stopped")
	}
	return err
}

// Main loads s (a pointer to the settings) from args, env and the optional
// YAML file, and runs the program start returns until ctx ends. A setting
// error is one line on stderr naming the setting, and ExitConfig; a secret
// never appears in it.
func Main(ctx context.Context, name string, args []string, env func(string) (string, bool), stderr io.Writer,
	s Settings, start func(*slog.Logger) (Running, error), shutdownTimeout func() time.Duration) int {
	if err := config.Load(s, name, args, env); err != nil {
		if errors.Is(err, config.ErrHelp) {
			return ExitOK
		}
		fmt.Fprintf(stderr, "%s: %v\n", name, err)
		return ExitConfig
	}
	if err := s.Validate(); err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", name, firstError(err))
		return ExitConfig
	}
	log, err := logging.New(s.Logging(), stderr)
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", name, err)
		return ExitConfig
	}
	p, err := start(log)
	if err == nil {
		err = Run(ctx, p, shutdownTimeout())
	}
	if err != nil {
		log.Error(name+" failed", "err", err)
		return ExitFailed
	}
	return ExitOK
}

// firstError keeps the first of joined errors: start-up names one setting.
func firstError(err error) error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		if errs := j.Unwrap(); len(errs) > 0 {
			return errs[0]
		}
	}
	return err
}
