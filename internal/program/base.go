package program

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kreabus/kreabus/internal/admin"
	"github.com/kreabus/kreabus/internal/logging"
	"github.com/kreabus/kreabus/internal/natsconn"
)

// Base is what every program holds besides its own parts: its logger, its
// admin server, its NATS connection and JetStream context, the parts it
// runs in the background and the first of them to fail. A program's Start
// opens it, adds its readiness checks, starts the admin server and runs
// its parts with Go; its Shutdown stops them and ends with Finish.
type Base struct {
	name   string
	log    *slog.Logger
	admin  *admin.Server
	nc     *nats.Conn
	js     jetstream.JetStream
	closed chan struct{} // the NATS connection is closed
	failed chan error    // the first part to stop by itself
	ctx    context.Context
	stop   context.CancelFunc
	bg     sync.WaitGroup
}

// Open connects program name to NATS with c.NATS as "kreabus-<name>",
// its connection metrics on the admin server's registry, extra options
// after kreabus's own. It returns at once when NATS is down: the
// connection keeps trying, and the program reports not ready meanwhile.
// log nil discards.
func Open(name string, c *Common, log *slog.Logger, extra ...nats.Option) (*Base, error) {
	if log == nil {
		log = logging.Discard
	}
	b := &Base{
		name:   name,
		log:    log,
		admin:  admin.New(log),
		closed: make(chan struct{}),
		failed: make(chan error, 1),
	}
	b.ctx, b.stop = context.WithCancel(context.Background())
	opts := append([]nats.Option{nats.ClosedHandler(func(*nats.Conn) { close(b.closed) })}, extra...)
	nc, err := natsconn.Connect(c.NATS, "kreabus-"+name, log, b.admin.Registry(), opts...)
	if err != nil {
		b.stop()
		return nil, err
	}
	b.nc = nc
	if b.js, err = jetstream.New(nc); err != nil {
		b.Close()
		return nil, err
	}
	return b, nil
}

// Log is the program's logger.
func (b *Base) Log() *slog.Logger { return b.log }

// Admin is the program's admin server (/metrics, /healthz, /readyz).
func (b *Base) Admin() *admin.Server { return b.admin }

// Conn is the program's NATS connection.
func (b *Base) Conn() *nats.Conn { return b.nc }

// JetStream is the JetStream context of Conn.
func (b *Base) JetStream() jetstream.JetStream { return b.js }

// AdminAddr is the admin listener's address ("" when off).
func (b *Base) AdminAddr() string { return b.admin.Addr() }

// Failed delivers the error of the first part that stopped by itself.
func (b *Base) Failed() <-chan error { return b.failed }

// StartAdmin starts the admin server on KREABUS_ADMIN_LISTEN.
func (b *Base) StartAdmin(c *Common) error {
	if err := b.admin.Start(c.Admin); err != nil {
		return fmt.Errorf("KREABUS_ADMIN_LISTEN: %w", err)
	}
	return nil
}

// Close undoes Open when Start fails after it.
func (b *Base) Close() {
	b.stop()
	b.nc.Close()
}

// Go runs part in the background; its ctx ends with StopParts.
func (b *Base) Go(part func(ctx context.Context)) {
	b.bg.Go(func() { part(b.ctx) })
}

// Fail reports a part that stopped by itself: it is logged, and Failed
// delivers the first such error, so Run shuts the program down.
func (b *Base) Fail(err error) {
	b.log.Error(b.name+" program part failed", "err", err)
	select {
	case b.failed <- err:
	default:
	}
}

// StopParts ends the context of the parts run by Go and waits for them to
// return, at most until ctx ends.
func (b *Base) StopParts(ctx context.Context) error {
	b.stop()
	done := make(chan struct{})
	go func() { b.bg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Finish is the end of every program's Shutdown, once its own parts have
// stopped: the NATS connection drains (bounded by ctx), the admin server
// stops, and errs, with what went wrong here, are joined. "<name> stopped"
// is logged when nothing did.
func (b *Base) Finish(ctx context.Context, errs []error) error {
	if err := natsconn.Drain(ctx, b.nc, b.closed); err != nil {
		errs = append(errs, err)
	}
	actx, cancel := context.WithTimeout(context.Background(), adminStopTimeout)
	defer cancel()
	if err := b.admin.Shutdown(actx); err != nil {
		errs = append(errs, fmt.Errorf("admin server: %w", err))
	}
	err := errors.Join(errs...)
	if err == nil {
		b.log.Info(b.name + " stopped")
	}
	return err
}
