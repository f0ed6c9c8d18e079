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

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kreabus/kreabus/internal/admin"
	"github.com/kreabus/kreabus/internal/logging"
	"github.com/kreabus/kreabus/internal/mirror"
	"github.com/kreabus/kreabus/internal/natsconn"
	"github.com/kreabus/kreabus/internal/program"
	"github.com/kreabus/kreabus/internal/retry"
	"github.com/kreabus/kreabus/pkg/events"
)

// connectionName is the mirror's NATS connection name.
const connectionName = "kreabus-mirror"

// Program is cmd/mirror running: its NATS connection, the results bucket,
// the consumer of krea.jobs.completed and the admin server. Start it,
// then Shutdown it.
type Program struct {
	s      Settings
	log    *slog.Logger
	nc     *nats.Conn
	js     jetstream.JetStream
	admin  *admin.Server
	closed chan struct{} // the NATS connection is closed
	failed chan error
	stop   context.CancelFunc
	bg     sync.WaitGroup

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
	if log == nil {
		log = logging.Discard
	}
	p := &Program{
		s:        s,
		log:      log,
		admin:    admin.New(log),
		closed:   make(chan struct{}),
		failed:   make(chan error, 1),
		setupErr: errors.New("starting"),
	}
	var err error
	p.nc, err = natsconn.Connect(s.NATS, connectionName, log, p.admin.Registry(),
		nats.ClosedHandler(func(*nats.Conn) { close(p.closed) }))
	if err != nil {
		return nil, err
	}
	if p.js, err = jetstream.New(p.nc); err != nil {
		p.nc.Close()
		return nil, err
	}
	p.admin.AddCheck("mirror", p.checkReady)
	if err := p.admin.Start(s.Admin); err != nil {
		p.nc.Close()
		return nil, fmt.Errorf("KREABUS_ADMIN_LISTEN: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	p.stop = cancel
	p.bg.Add(1)
	go p.setup(ctx)
	log.Info("mirror started", "bucket", s.Mirror.Bucket, "allow_hosts", s.Mirror.AllowHosts, "allow_private", s.Mirror.AllowPrivate,
		"max_bytes", s.Mirror.MaxBytes, "concurrency", s.Mirror.Concurrency, "admin", p.admin.Addr())
	return p, nil
}

// setupBackoff paces the attempts to set the mirror up.
var setupBackoff = events.Backoff{Min: 200 * time.Millisecond, Max: 5 * time.Second}

// setup ensures the stream and the bucket and starts the consumer,
// retrying until it succeeds or ctx ends.
func (p *Program) setup(ctx context.Context) {
	defer p.bg.Done()
	_ = retry.Do(ctx, setupBackoff, func(ctx context.Context) error {
		err := p.trySetup(ctx)
		if err != nil && ctx.Err() == nil {
			p.mu.Lock()
			p.setupErr = err
			p.mu.Unlock()
		}
		return err
	}, func(err error, _ int, wait time.Duration) {
		p.log.Warn("mirror not consuming yet", "err", err, "retry_in", wait.String())
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
		if _, err = events.EnsureStream(actx, p.js, events.JobsStreamConfig(p.s.Streams.Options())); err != nil && !errors.Is(err, events.ErrNoRePublish) {
			return err
		}
		obs, err = events.EnsureResultsStore(actx, p.js, cfg)
	} else {
		obs, err = p.js.ObjectStore(actx, cfg.Bucket)
	}
	if err != nil {
		return fmt.Errorf("results bucket %s: %w", cfg.Bucket, err)
	}
	mr, err := mirror.New(p.s.Mirror, p.js, obs, p.log, p.admin.Registry())
	if err != nil {
		return err
	}
	ccfg, err := events.JobsConsumerConfig(p.s.Mirror.Consumer,
		events.WithStatuses(events.StatusCompleted), events.WithAckWait(p.s.Mirror.AckWait))
	if err != nil {
		mr.Close()
		return err
	}
	cons, err := p.js.CreateOrUpdateConsumer(actx, events.StreamJobs, ccfg)
	if err != nil {
		mr.Close()
		return fmt.Errorf("consumer %q on %s: %w", p.s.Mirror.Consumer, events.StreamJobs, err)
	}
	c, err := events.ConsumeJobs(p.nc, cons, mr.Handle,
		events.WithConcurrency(p.s.Mirror.Concurrency),
		events.WithErrorHandler(func(err error) { p.log.Warn("mirror consumer", "err", err) }),
	)
	if err != nil {
		mr.Close()
		return err
	}
	p.mu.Lock()
	p.mirror, p.consumer, p.setupErr = mr, c, nil
	p.mu.Unlock()
	p.log.Info("mirror consuming", "stream", events.StreamJobs, "consumer", p.s.Mirror.Consumer, "bucket", cfg.Bucket)
	p.bg.Add(1)
	go func() {
		defer p.bg.Done()
		select {
		case <-c.Closed():
			if ctx.Err() == nil { // not our Shutdown: the consumer was deleted
				p.failed <- fmt.Errorf("consumer %s on %s stopped", p.s.Mirror.Consumer, events.StreamJobs)
			}
		case <-ctx.Done():
		}
	}()
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
	if !p.nc.IsConnected() {
		return errors.New("nats not connected")
	}
	return nil
}

// AdminAddr is the admin listener's address ("" when off).
func (p *Program) AdminAddr() string { return p.admin.Addr() }

// Failed delivers the error of a part that stopped by itself.
func (p *Program) Failed() <-chan error { return p.failed }

// Shutdown stops the program in order: /readyz turns 503, no new job is
// taken, the copies in flight finish (or, when ctx ends first, are
// abandoned: their events are delivered again), the NATS connection
// drains and the admin server stops.
func (p *Program) Shutdown(ctx context.Context) error {
	p.admin.SetDraining()
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
	p.stop()
	p.bg.Wait()
	if mr != nil {
		mr.Close()
	}
	return program.Finish(ctx, "mirror", p.log, p.nc, p.closed, p.admin, errs)
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
