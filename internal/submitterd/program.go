// Package submitterd is cmd/submitter's wiring: its settings
// (settings.go), its NATS connection, the streams, the ledger with its
// Recorder and open-jobs list, the reconciler, the submitter, the kreabus
// NATS service, the admin server with its readiness checks, and the order
// of start and stop (program.go). What the submitter does with a request
// is package submitter.
package submitterd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/kreabus/kreabus/internal/ledger"
	"github.com/kreabus/kreabus/internal/natsconn"
	"github.com/kreabus/kreabus/internal/program"
	"github.com/kreabus/kreabus/internal/reconciler"
	"github.com/kreabus/kreabus/internal/service"
	"github.com/kreabus/kreabus/internal/submitter"
	"github.com/kreabus/kreabus/pkg/events"
)

// Program is cmd/submitter running: its NATS connection, the stream
// ensurer, the ledger with its Recorder and open-jobs list, the reconciler, the
// submitter and the admin server.
// Start it, then Shutdown it.
type Program struct {
	*program.Base
	s Settings

	mu  sync.Mutex
	sub *submitter.Submitter
	svc *service.Service

	streams natsconn.StreamsCheck // both streams present and usable
}

// Start validates s, connects to NATS (returning at once when NATS is down:
// the program reports not ready and recovers by itself), starts the admin
// server, and in the background ensures the streams (unless CreateStreams
// is off), opens the ledger, and runs the ledger Recorder, the reconciler
// and the submitter.
func Start(s Settings, log *slog.Logger) (*Program, error) {
	if err := s.Validate(); err != nil {
		return nil, err
	}
	s.Submitter.Create = s.Streams.CreateStreams
	s.Submitter.ShutdownTimeout = s.ShutdownTimeout
	s.Ledger = s.Common.Ledger(s.Ledger)
	base, err := program.Open("submitter", &s.Common, log)
	if err != nil {
		return nil, err
	}
	p := &Program{Base: base, s: s}
	p.Admin().AddCheck("jetstream", p.checkJetStream)
	p.Admin().AddCheck("submitter", p.checkSubmitter)
	if err := p.StartAdmin(&s.Common); err != nil {
		p.Close()
		return nil, err
	}
	p.Go(p.run)
	p.Log().Info("submitter program started", "admin", p.AdminAddr(), "create_streams", s.Streams.CreateStreams,
		"api_url", s.Submitter.APIURL, "public_url", s.Submitter.PublicURL)
	return p, nil
}

// run sets up what needs JetStream, then runs the parts until ctx ends.
func (p *Program) run(ctx context.Context) {
	if p.s.Streams.CreateStreams {
		o := p.s.Streams.Options()
		err := natsconn.SetUpStreams(ctx, p.JetStream(), p.Log(), events.RequestsStreamConfig(o), events.JobsStreamConfig(o))
		if err != nil {
			if ctx.Err() == nil {
				p.streams.Set(err)
				p.Fail(fmt.Errorf("streams: %w", err))
			}
			return
		}
	}
	led, err := ledger.Open(ctx, p.JetStream(), p.s.Ledger, ledger.WithLogger(p.Log()))
	if err != nil {
		if ctx.Err() == nil {
			p.Fail(err)
		}
		return
	}
	if err := checkLedgerTTL(led.TTL(), p.s.Reconciler.JobMaxAge); err != nil {
		// An existing bucket keeps its own TTL.
		p.Fail(fmt.Errorf("ledger bucket %s: %w", led.Bucket(), err))
		return
	}
	rec, err := ledger.NewRecorder(led, p.Admin().Registry())
	if err != nil {
		p.Fail(err)
		return
	}
	api, err := submitter.NewAPIClient(p.s.Submitter, p.s.Submitter.Concurrency+p.s.Reconciler.Concurrency)
	if err != nil {
		p.Fail(err)
		return
	}
	// One account pause for both: the requests consumer's, which every
	// replica follows.
	acct, err := submitter.NewAccountPause(p.s.Submitter, p.JetStream(), p.Log())
	if err != nil {
		p.Fail(err)
		return
	}
	open := led.WatchOpen(ctx)
	rc, err := reconciler.New(p.s.Reconciler, reconciler.Deps{
		JetStream: p.JetStream(),
		Krea:      api,
		Open:      open,
		Store:     led,
		Claims:    led, // replicas share the polling
		// Poll nothing before the ledger has caught up with KREA_JOBS.
		Ready:      func() bool { return rec.Synced() && open.Ready() },
		Pause:      acct,
		Log:        p.Log(),
		Registerer: p.Admin().Registry(),
	})
	if err != nil {
		p.Fail(err)
		return
	}
	sub, err := submitter.New(p.s.Submitter, submitter.Deps{JS: p.JetStream(), Ledger: led, Client: api, Log: p.Log(), Registerer: p.Admin().Registry(), Pause: acct})
	if err != nil {
		p.Fail(err)
		return
	}
	svc, err := service.Start(service.Config{}, service.Deps{
		Conn: p.Conn(), JS: p.JetStream(), Ledger: led, Krea: api,
		Wait: sub.WaitAPI, Paused: sub.Paused, Log: p.Log(),
	})
	if err != nil {
		p.Fail(err)
		return
	}
	defer func() {
		if err := svc.Stop(); err != nil {
			p.Log().Warn("stopping the NATS service", "err", err)
		}
	}()
	p.mu.Lock()
	p.sub = sub
	p.svc = svc
	p.mu.Unlock()

	var wg sync.WaitGroup
	wg.Go(func() { acct.Run(ctx) })
	wg.Go(func() {
		if err := rec.Run(ctx); err != nil {
			p.Fail(fmt.Errorf("ledger recorder: %w", err))
		}
	})
	wg.Go(func() {
		if err := rc.Run(ctx); err != nil {
			p.Fail(fmt.Errorf("reconciler: %w", err))
		}
	})
	wg.Go(func() {
		if err := sub.Run(ctx); err != nil {
			p.Fail(err)
		}
	})
	wg.Wait()
	<-open.Done()
}

// Submitter returns the running submitter, nil until it is set up.
func (p *Program) Submitter() *submitter.Submitter {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.sub
}

// Service returns the running NATS service, nil until it is set up.
func (p *Program) Service() *service.Service {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.svc
}

// checkJetStream: NATS connected, both streams present and usable.
func (p *Program) checkJetStream(ctx context.Context) error {
	return p.streams.Check(ctx, p.Conn(), p.JetStream(), events.StreamRequests, events.StreamJobs)
}

// checkSubmitter: set up and not paused by account errors.
func (p *Program) checkSubmitter(ctx context.Context) error {
	p.mu.Lock()
	sub := p.sub
	p.mu.Unlock()
	if sub == nil {
		return errors.New("starting: waiting for JetStream and the ledger")
	}
	return sub.ReadyCheck()(ctx)
}

// Shutdown stops the program in order: /readyz turns 503, the submitter
// stops fetching and finishes the requests in hand (publishing their events
// and acking them), the Recorder stops, the NATS connection drains and
// closes, and the admin server stops. It gives up waiting when ctx ends.
func (p *Program) Shutdown(ctx context.Context) error {
	p.Admin().SetDraining()
	p.Log().Info("shutting down")
	var errs []error
	if err := p.StopParts(ctx); err != nil {
		errs = append(errs, fmt.Errorf("finishing requests in hand: %w", err))
	}
	return p.Finish(ctx, errs)
}

// drainMargin is the time the NATS drain gets beyond the shutdown timeout.
const drainMargin = 5 * time.Second

// ShutdownTimeout bounds Shutdown: KREABUS_SHUTDOWN_TIMEOUT, which bounds
// the requests in hand, plus the NATS drain.
func (p *Program) ShutdownTimeout() time.Duration { return p.s.ShutdownTimeout + drainMargin }

// Main is cmd/submitter: it loads the settings from args (without the
// program name), env (os.LookupEnv when nil) and the optional YAML file,
// and runs until ctx ends. A setting error is one line on stderr naming the
// setting, and program.ExitConfig.
func Main(ctx context.Context, args []string, env func(string) (string, bool), stderr io.Writer) int {
	return program.Main(ctx, "submitter", args, env, stderr, &Settings{})
}
