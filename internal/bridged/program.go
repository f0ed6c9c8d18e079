// Package bridged is cmd/bridge's wiring: its settings (settings.go), its
// NATS connection, the KREA_JOBS ensurer, the ledger opened in the
// background (ledger.go), the admin server with its readiness checks, and
// the order of start and stop (program.go). What the bridge does with a
// webhook is package bridge.
package bridged

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/kreabus/kreabus/internal/bridge"
	"github.com/kreabus/kreabus/internal/natsconn"
	"github.com/kreabus/kreabus/internal/program"
	"github.com/kreabus/kreabus/internal/retry"
	"github.com/kreabus/kreabus/pkg/events"
)

// Program is cmd/bridge running: the bridge on its listener, its NATS
// connection, the KREA_JOBS ensurer and the admin server. Start it, then
// Shutdown it.
type Program struct {
	*program.Base
	s      Settings
	bridge *bridge.Bridge
	ln     net.Listener
	kick   chan struct{} // asks the ensurer to (re)ensure KREA_JOBS

	ledger lateOwners // ownership, terminal state and metadata of jobs

	streams natsconn.StreamsCheck // KREA_JOBS present and usable
}

// Start validates s, connects to NATS (returning at once if NATS is down:
// the program reports not ready and recovers by itself), ensures KREA_JOBS
// in the background unless CreateStreams is off, starts the admin server
// and serves webhooks.
func Start(s Settings, log *slog.Logger) (*Program, error) {
	if err := s.Validate(); err != nil {
		return nil, err
	}
	// A stalled socket must not hold a webhook past its bound.
	base, err := program.Open("bridge", &s.Common, log, nats.FlusherTimeout(s.Bridge.PublishTimeout))
	if err != nil {
		return nil, err
	}
	log = base.Log()
	if len(s.Bridge.Secret) < 32 {
		log.Warn("KREABUS_WEBHOOK_SECRET is shorter than 32 bytes; use a long random secret")
	}
	p := &Program{Base: base, s: s, kick: make(chan struct{}, 1)}
	fail := func(err error) (*Program, error) {
		if p.ln != nil {
			_ = p.ln.Close()
		}
		p.Close()
		return nil, err
	}
	p.bridge, err = bridge.New(s.Bridge, bridge.Deps{
		Conn:          p.Conn(),
		Logger:        log,
		Registerer:    p.Admin().Registry(),
		Ledger:        &p.ledger,
		StreamMissing: p.ensureSoon,
	})
	if err != nil {
		return fail(err)
	}
	p.Admin().AddCheck("jetstream", p.checkJetStream)
	p.Admin().AddCheck("ledger", p.ledger.check)
	if p.ln, err = net.Listen("tcp", s.Bridge.Listen); err != nil {
		return fail(fmt.Errorf("KREABUS_LISTEN: %w", err))
	}
	if err := p.StartAdmin(&s.Common); err != nil {
		return fail(err)
	}
	if s.Streams.CreateStreams {
		p.ensureSoon()
		p.Go(p.ensureLoop)
	}
	p.Go(p.openLedger)
	go func() {
		if err := p.bridge.Serve(p.ln); err != nil {
			p.Fail(fmt.Errorf("webhook server: %w", err))
		}
	}()
	log.Info("bridge started", "listen", p.ln.Addr().String(), "admin", p.Admin().Addr(),
		"create_streams", s.Streams.CreateStreams, "duplicate_window", s.Streams.DuplicateWindow.String())
	return p, nil
}

// Addr is the webhook listener's address.
func (p *Program) Addr() string { return p.ln.Addr().String() }

// Bridge is the program's bridge.
func (p *Program) Bridge() *bridge.Bridge { return p.bridge }

// ensureSoon asks the ensurer to ensure KREA_JOBS; it never blocks.
func (p *Program) ensureSoon() {
	if !p.s.Streams.CreateStreams {
		return
	}
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

// ensureLoop creates KREA_JOBS when missing, at start and whenever a
// publish found no stream, at most once a second.
func (p *Program) ensureLoop(ctx context.Context) {
	cfg := events.JobsStreamConfig(p.s.Streams.Options())
	for {
		select {
		case <-ctx.Done():
			return
		case <-p.kick:
		}
		err := natsconn.SetUpStreams(ctx, p.JetStream(), p.Log(), cfg)
		switch {
		case err == nil:
			p.streams.Set(nil)
			p.Log().Info("stream ready", "stream", cfg.Name, "duplicate_window", cfg.Duplicates.String())
			// An event is the body plus headers: a body the server cannot
			// take is refused with 413 (never a 503 forever), below the
			// configured limit if need be.
			if limit := p.bridge.MaxBody(); limit < p.s.Bridge.MaxBody {
				p.Log().Warn("KREABUS_MAX_BODY is above what the NATS server takes; lowered: larger webhooks get 413",
					"max_body", p.s.Bridge.MaxBody, "max_payload", p.Conn().MaxPayload(), "header_room", bridge.HeaderRoom, "body_limit", limit)
			}
		case errors.Is(err, events.ErrIncompatibleStream):
			p.streams.Set(err)
			p.Log().Error("stream unusable", "stream", cfg.Name, "err", err)
		default:
			return // ctx ended
		}
		// At most one ensure a second, however often publishes kick.
		if !retry.Sleep(ctx, time.Second) {
			return
		}
	}
}

// checkJetStream is the readiness check: NATS connected and KREA_JOBS
// present and usable.
func (p *Program) checkJetStream(ctx context.Context) error {
	return p.streams.Check(ctx, p.Conn(), p.JetStream(), events.StreamJobs)
}

// Shutdown stops the program in order: /readyz turns 503, the webhook
// listener closes, in-flight webhooks finish, the NATS connection drains
// (pending publishes flushed) and closes, and the admin server stops. It
// gives up waiting when ctx ends, closing whatever is left.
func (p *Program) Shutdown(ctx context.Context) error {
	p.Admin().SetDraining()
	p.Log().Info("shutting down", "in_flight", p.bridge.InFlight(), "drain_delay", p.s.DrainDelay.String())
	var errs []error
	retry.Sleep(ctx, p.s.DrainDelay)

	// Leave the drain at least a second of the budget.
	httpCtx := ctx
	if dl, ok := ctx.Deadline(); ok && time.Until(dl) > 2*time.Second {
		var cancel context.CancelFunc
		httpCtx, cancel = context.WithDeadline(ctx, dl.Add(-time.Second))
		defer cancel()
	}
	if err := p.bridge.Shutdown(httpCtx); err != nil {
		errs = append(errs, fmt.Errorf("webhook server: %w", err))
	}
	_ = p.StopParts(context.Background()) // the parts only wait for ctx
	return p.Finish(ctx, errs)
}

// ShutdownTimeout bounds Shutdown: KREABUS_SHUTDOWN_TIMEOUT.
func (p *Program) ShutdownTimeout() time.Duration { return p.s.ShutdownTimeout }

// Main is cmd/bridge: it loads the settings from args (without the program
// name), env (os.LookupEnv when nil) and the optional YAML file, and runs
// until ctx ends. A setting error is one line on stderr naming the setting,
// and program.ExitConfig.
func Main(ctx context.Context, args []string, env func(string) (string, bool), stderr io.Writer) int {
	return program.Main(ctx, "bridge", args, env, stderr, &Settings{})
}
