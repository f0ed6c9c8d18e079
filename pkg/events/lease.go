package events

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// ErrNotHandling is returned by InProgress called with a context that is
// not a handler's (JobHandler, MsgHandler).
var ErrNotHandling = errors.New("events: InProgress outside a job handler")

// lease is a handler's context: it ends one ack wait after the message
// was delivered, or after the handler last called InProgress, which is
// when JetStream would deliver the event again.
type lease struct {
	context.Context // carries the values and the cancellation
	cancel          context.CancelCauseFunc
	msg             jetstream.Msg
	wait            time.Duration

	mu       sync.Mutex
	deadline time.Time
	timer    *time.Timer
}

type leaseKey struct{}

func newLease(parent context.Context, msg jetstream.Msg, wait time.Duration) (*lease, context.CancelFunc) {
	inner, cancel := context.WithCancelCause(parent)
	l := &lease{cancel: cancel, msg: msg, wait: wait, deadline: time.Now().Add(wait)}
	l.Context = context.WithValue(inner, leaseKey{}, l)
	l.timer = time.AfterFunc(wait, func() { cancel(context.DeadlineExceeded) })
	return l, func() {
		l.timer.Stop()
		cancel(context.Canceled)
	}
}

// Deadline is when the ack wait runs out, as of the last InProgress.
func (l *lease) Deadline() (time.Time, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.deadline, true
}

// Err reports context.DeadlineExceeded once the ack wait ran out, as a
// context.WithTimeout would.
func (l *lease) Err() error {
	err := l.Context.Err()
	if err != nil && errors.Is(context.Cause(l.Context), context.DeadlineExceeded) {
		return context.DeadlineExceeded
	}
	return err
}

// InProgress tells JetStream that the handler whose context ctx is still
// works on its event, so the event is not delivered again (to this or
// another consumer) for another ack wait, and moves ctx's deadline as far.
// A handler doing long work (downloading a large file, say) calls it more
// often than once per ack wait. Contexts derived from ctx with their own
// deadline keep it. It fails once ctx has ended, and with ErrNotHandling
// outside a handler (JobHandler, MsgHandler).
func InProgress(ctx context.Context) error {
	l, ok := ctx.Value(leaseKey{}).(*lease)
	if !ok {
		return ErrNotHandling
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := l.Err(); err != nil {
		return err
	}
	// Extend first: if the server hears of it in time, the handler must
	// not be cut off before the server's new deadline.
	if !l.timer.Stop() {
		return context.DeadlineExceeded // fired meanwhile
	}
	l.deadline = time.Now().Add(l.wait)
	l.timer.Reset(l.wait)
	return l.msg.InProgress()
}
