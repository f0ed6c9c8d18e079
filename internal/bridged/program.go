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
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kreabus/kreabus/internal/admin"
	"github.com/kreabus/kreabus/internal/bridge"
	"github.com/kreabus/kreabus/internal/logging"
	"github.com/kreabus/kreabus/internal/natsconn"
	"github.com/kreabus/kreabus/internal/program"
	"github.com/kreabus/kreabus/internal/retry"
	"github.com/kreabus/kreabus/pkg/events"
)

// connectionName is the bridge's NATS connection name.
const connectionName = "kreabus-bridge"

// Program is cmd/bridge running: the bridge on its listener, its NATS
// connection, the KREA_JOBS ensurer and the admin server. Start it, then
// Shutdown it.
type Program struct {
	s      Settings
	log    *slog.Logger
	nc     *nats.Conn
	js     jetstream.JetStream
	admin  *admin.Server
	bridge *bridge.Bridge
	ln     net.Listener

	closed   chan struct{} // the NATS connection is closed
	serveErr chan error
	kick     chan struct{} // asks the ensurer to (re)ensure KREA_JOBS
	stop     context.CancelFunc
	bg       sync.WaitGroup

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
	if log == nil {
		log = logging.Discard
	}
	if len(s.Bridge.Secret) < 32 {
		log.Warn("KREABUS_WEBHOOK_SECRET is shorter than 32 bytes; use a long random secret")
	}
	p := &Program{
		s:        s,
		log:      log,
		admin:    admin.New(log),
		closed:   make(chan struct{}),
		serveErr: make(chan error, 1),
		kick:     make(chan struct{}, 1),
	}
	nc, err := natsconn.Connect(s.NATS, connectionName, log, p.admin.Registry(),
		nats.ClosedHandler(func(*nats.Conn) { close(p.closed) }),
		// A stalled socket must not hold a webhook past its bound.
		nats.FlusherTimeout(s.Bridge.PublishTimeout),
	)
	if err != nil {
		return nil, err
	}
	p.nc = nc
	fail := func(err error) (*Program, error) {
		if p.ln != nil {
			_ = p.ln.Close()
		}
		nc.Close()
		return nil, err
	}
	if p.js, err = jetstream.New(nc); err != nil {
		return fail(err)
	}
	p.bridge, err = bridge.New(s.Bridge, bridge.Deps{
		Conn:          nc,
		Logger:        log,
		Registerer:    p.admin.Registry(),
		Ledger:        &p.ledger,
		StreamMissing: p.ensureSoon,
	})
	if err != nil {
		return fail(err)
	}
	p.admin.AddCheck("jetstream", p.checkJetStream)
	p.admin.AddCheck("ledger", p.ledger.check)
	if p.ln, err = net.Listen("tcp", s.Bridge.Listen); err != nil {
		return fail(fmt.Errorf("KREABUS_LISTEN: %w", err))
	}
	if err := p.admin.Start(s.Admin); err != nil {
		return fail(fmt.Errorf("KREABUS_ADMIN_LISTEN: %w", err))
	}

	ctx, cancel := context.WithCancel(context.Background())
	p.stop = cancel
	if s.Streams.CreateStreams {
		p.ensureSoon()
		p.bg.Add(1)
		go p.ensureLoop(ctx)
	}
	p.bg.Add(1)
	go p.openLedger(ctx)
	go func() { p.serveErr <- p.bridge.Serve(p.ln) }()
	log.Info("bridge started", "listen", p.ln.Addr().String(), "admin", p.admin.Addr(),
		"create_streams", s.Streams.CreateStreams, "duplicate_window", s.Streams.DuplicateWindow.String())
	return p, nil
}

// Addr is the webhook listener's address.
func (p *Program) Addr() string { return p.ln.Addr().String() }

// AdminAddr is the admin listener's address ("" when off).
func (p *Program) AdminAddr() string { return p.admin.Addr() }

// Bridge is the program's bridge.
func (p *Program) Bridge() *bridge.Bridge { return p.bridge }

// Conn is the program's NATS connection.
func (p *Program) Conn() *nats.Conn { return p.nc }

// Failed delivers the error that stopped the webhook server by itself.
func (p *Program) Failed() <-chan error { return p.serveErr }

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
	defer p.bg.Done()
	cfg := events.JobsStreamConfig(p.s.Streams.Options())
	for {
		select {
		case <-ctx.Done():
			return
		case <-p.kick:
		}
		err := natsconn.SetUpStreams(ctx, p.js, p.log, cfg)
		switch {
		case err == nil:
			p.streams.Set(nil)
			p.log.Info("stream ready", "stream", cfg.Name, "duplicate_window", cfg.Duplicates.String())
			// An event is the body plus headers: a body the server cannot
			// take is refused with 413 (never a 503 forever), below the
			// configured limit if need be.
			if limit := p.bridge.MaxBody(); limit < p.s.Bridge.MaxBody {
				p.log.Warn("KREABUS_MAX_BODY is above what the NATS server takes; lowered: larger webhooks get 413",
					"max_body", p.s.Bridge.MaxBody, "max_payload", p.nc.MaxPayload(), "header_room", bridge.HeaderRoom, "body_limit", limit)
			}
		case errors.Is(err, events.ErrIncompatibleStream):
			p.streams.Set(err)
			p.log.Error("stream unusable", "stream", cfg.Name, "err", err)
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
	return p.streams.Check(ctx, p.nc, p.js, events.StreamJobs)
}

// Shutdown stops the program in order: /readyz turns 503, the webhook
// listener closes, in-flight webhooks finish, the NATS connection drains
// (pending publishes flushed) and closes, and the admin server stops. It
// gives up waiting when ctx ends, closing whatever is left.
func (p *Program) Shutdown(ctx context.Context) error {
	p.admin.SetDraining()
	p.log.Info("shutting down", "in_flight", p.bridge.InFlight(), "drain_delay", p.s.DrainDelay.String())
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
	p.stop()
	p.bg.Wait()
	return program.Finish(ctx, "bridge", p.log, p.nc, p.closed, p.admin, errs)
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
