// Package mirrord is cmd/mirror's wiring: its settings (settings.go), its
// NATS connection, KREA_JOBS and the results bucket, the consumer of
// krea.jobs.completed, the admin server with its readiness check, and the
// order of start and stop (program.go). What the mirror does with a
// completed job is package mirror.
package mirrord

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/kreabus/kreabus/internal/mirror"
	"github.com/kreabus/kreabus/internal/program"
	"github.com/kreabus/kreabus/internal/retry"
	"github.com/kreabus/kreabus/pkg/events"
)

// Program is cmd/mirror running: its NATS connection, the results bucket,
// the consumer of krea.jobs.completed and the admin server. Start it,
// then Shutdown it.
type Program struct {
	*program.Base
	s Settings

	mu       sync.Mutex
	mirror   *mirror.Mirror
	consumer *events.ConsumeContext
	setupErr error // why the mirror is not consuming yet
}

// Start validates s, connects to NATS (returning at once if NATS is down:
// the program reports not ready and recovers by itself), starts the admin
// server, and in the background ensures KREA_JOBS and the results bucket
// (unless KREABUS_CREATE_STREAMS is off) and starts consuming.
func Start(s Settings, log *slog.Logger) (*Program, error) {
	if err := s.Validate(); err != nil {
		return nil, err
	}
	base, err := program.Open("mirror", &s.Common, log)
	if err != nil {
		return nil, err
	}
	p := &Program{Base: base, s: s, setupErr: errors.New("starting")}
	p.Admin().AddCheck("mirror", p.checkReady)
	if err := p.StartAdmin(&s.Common); err != nil {
		p.Close()
		return nil, err
	}
	p.Go(p.setup)
	p.Log().Info("mirror started", "bucket", s.Mirror.Bucket, "allow_hosts", s.Mirror.AllowHosts, "allow_private", s.Mirror.AllowPrivate,
		"max_bytes", s.Mirror.MaxBytes, "concurrency", s.Mirror.Concurrency, "admin", p.AdminAddr())
	return p, nil
}

// setupBackoff paces the attempts to set the mirror up.
var setupBackoff = events.Backoff{Min: 200 * time.Millisecond, Max: 5 * time.Second}

// setup ensures the stream and the bucket and starts the consumer,
// retrying until it succeeds or ctx ends.
func (p *Program) setup(ctx context.Context) {
	_ = retry.Do(ctx, setupBackoff, func(ctx context.Context) error {
		err := p.trySetup(ctx)
		if err != nil && ctx.Err() == nil {
			p.mu.Lock()
			p.setupErr = err
			p.mu.Unlock()
		}
		return err
	}, func(err error, _ int, wait time.Duration) {
		p.Log().Warn("mirror not consuming yet", "err", err, "retry_in", wait.String())
	})
}

func (p *Program) trySetup(ctx context.Context) error {
	actx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	cfg := events.ResultsStoreConfig(p.s.ResultsOptions())
	var obs jetstream.ObjectStore
	var err error
	if p.s.Streams.CreateStreams {
		// A KREA_JOBS made by an older release lacks its RePublish, which
		// the mirror's user may not add: usable all the same (the bridge
		// and the submitter log the command that adds it).
		if _, err = events.EnsureStream(actx, p.JetStream(), events.JobsStreamConfig(p.s.Streams.Options())); err != nil && !errors.Is(err, events.ErrNoRePublish) {
			return err
		}
		obs, err = events.EnsureResultsStore(actx, p.JetStream(), cfg)
	} else {
		obs, err = p.JetStream().ObjectStore(actx, cfg.Bucket)
	}
	if err != nil {
		return fmt.Errorf("results bucket %s: %w", cfg.Bucket, err)
	}
	mr, err := mirror.New(p.s.Mirror, p.JetStream(), obs, p.Log(), p.Admin().Registry())
	if err != nil {
		return err
	}
	ccfg, err := events.JobsConsumerConfig(p.s.Mirror.Consumer,
		events.WithStatuses(events.StatusCompleted), events.WithAckWait(p.s.Mirror.AckWait))
	if err != nil {
		mr.Close()
		return err
	}
	cons, err := p.JetStream().CreateOrUpdateConsumer(actx, events.StreamJobs, ccfg)
	if err != nil {
		mr.Close()
		return fmt.Errorf("consumer %q on %s: %w", p.s.Mirror.Consumer, events.StreamJobs, err)
	}
	c, err := events.ConsumeJobs(p.Conn(), cons, mr.Handle,
		events.WithConcurrency(p.s.Mirror.Concurrency),
		events.WithErrorHandler(func(err error) { p.Log().Warn("mirror consumer", "err", err) }),
	)
	if err != nil {
		mr.Close()
		return err
	}
	p.mu.Lock()
	p.mirror, p.consumer, p.setupErr = mr, c, nil
	p.mu.Unlock()
	p.Log().Info("mirror consuming", "stream", events.StreamJobs, "consumer", p.s.Mirror.Consumer, "bucket", cfg.Bucket)
	p.Go(func(ctx context.Context) {
		select {
		case <-c.Closed():
			if ctx.Err() == nil { // not our Shutdown: the consumer was deleted
				p.Fail(fmt.Errorf("consumer %s on %s stopped", p.s.Mirror.Consumer, events.StreamJobs))
			}
		case <-ctx.Done():
		}
	})
	return nil
}

// checkReady is the readiness check: consuming, and NATS connected.
func (p *Program) checkReady(context.Context) error {
	p.mu.Lock()
	err := p.setupErr
	p.mu.Unlock()
	if err != nil {
		return err
	}
	if !p.Conn().IsConnected() {
		return errors.New("nats not connected")
	}
	return nil
}

// Shutdown stops the program in order: /readyz turns 503, no new job is
// taken, the copies in flight finish (or, when ctx ends first, are
// abandoned: their events are delivered again), the NATS connection
// drains and the admin server stops.
func (p *Program) Shutdown(ctx context.Context) error {
	p.Admin().SetDraining()
	// The set-up ends first, so no consumer starts after the one read
	// here; the watcher of that consumer ends with it.
	_ = p.StopParts(context.Background()) // the parts only wait for ctx
	p.mu.Lock()
	c, mr := p.consumer, p.mirror
	p.mu.Unlock()
	var errs []error
	// Leave the drain at least a second of the budget.
	cctx := ctx
	if dl, ok := ctx.Deadline(); ok && time.Until(dl) > 2*time.Second {
		var cancel context.CancelFunc
		cctx, cancel = context.WithDeadline(ctx, dl.Add(-time.Second))
		defer cancel()
	}
	if c != nil {
		c.Drain()
		select {
		case <-c.Closed():
		case <-cctx.Done():
			c.Stop()
			errs = append(errs, fmt.Errorf("copies in flight: %w", cctx.Err()))
		}
	}
	if mr != nil {
		mr.Close()
	}
	return p.Finish(ctx, errs)
}

// ShutdownTimeout bounds Shutdown: KREABUS_SHUTDOWN_TIMEOUT.
func (p *Program) ShutdownTimeout() time.Duration { return p.s.ShutdownTimeout }

// Main is cmd/mirror: it loads the settings from args (without the
// program name), env (os.LookupEnv when nil) and the optional YAML file,
// and runs until ctx ends. A setting error is one line on stderr naming
// the setting, and program.ExitConfig.
func Main(ctx context.Context, args []string, env func(string) (string, bool), stderr io.Writer) int {
	return program.Main(ctx, "mirror", args, env, stderr, &Settings{})
}
