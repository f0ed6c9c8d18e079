package bridge

import (
	"context"
	"errors"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Publish errors.
var (
	errDisconnected   = errors.New("NATS is not connected")
	errPublishTimeout = errors.New("no PubAck within the publish timeout")
)

// Retrying "no responders" (JetStream momentarily without the stream: a
// leader election, a server still recovering) within the publish timeout.
const (
	noStreamRetries   = 2
	noStreamRetryWait = 200 * time.Millisecond
)

// noLibraryRetry turns off the library's own retry of "no responders":
// that retry re-sends the message from its Data later, while the bridge
// recycles body buffers as soon as a publish returns. Retries are done
// here instead, synchronously.
var noLibraryRetry = []jetstream.PublishOpt{jetstream.WithRetryAttempts(0)}

// publish sends m with an asynchronous JetStream publish, so many webhooks'
// publishes pipeline over the one connection, and waits for the PubAck at
// most PublishTimeout and never past ctx. The library resolves a future
// that got no PubAck within PublishTimeout (WithPublishAsyncTimeout), which
// bounds the first attempt without a timer of our own; the rare retries
// after "no responders" are bounded by what is left of the budget.
func (b *Bridge) publish(ctx context.Context, m *nats.Msg) (*jetstream.PubAck, error) {
	start := time.Now()
	defer func() { b.m.publish.Observe(time.Since(start).Seconds()) }()
	var budget <-chan time.Time // nil, so never ready, on the first attempt
	for attempt := 0; ; attempt++ {
		if !b.nc.IsConnected() {
			// Publishing now would only fill the reconnect buffer.
			return nil, errDisconnected
		}
		paf, err := b.js.PublishMsgAsync(m, noLibraryRetry...)
		if err != nil {
			return nil, err
		}
		select {
		case ack := <-paf.Ok():
			return ack, nil
		case err := <-paf.Err():
			if errors.Is(err, jetstream.ErrAsyncPublishTimeout) {
				return nil, errPublishTimeout
			}
			if !errors.Is(err, jetstream.ErrNoStreamResponse) {
				return nil, err
			}
			if b.streamMissing != nil {
				b.streamMissing()
			}
			left := b.cfg.PublishTimeout - time.Since(start)
			if attempt >= noStreamRetries || left <= noStreamRetryWait {
				return nil, err
			}
			if budget == nil {
				t := time.NewTimer(left)
				defer t.Stop()
				budget = t.C
			}
		case <-ctx.Done():
			return nil, ctxErr(ctx)
		case <-budget:
			return nil, errPublishTimeout
		}
		wait := time.NewTimer(noStreamRetryWait)
		select {
		case <-wait.C:
		case <-ctx.Done():
			wait.Stop()
			return nil, ctxErr(ctx)
		case <-budget:
			wait.Stop()
			return nil, errPublishTimeout
		}
	}
}

// ctxErr is the error of the webhook's context: its deadline is the
// publish timeout.
func ctxErr(ctx context.Context) error {
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return errPublishTimeout
	}
	return ctx.Err()
}
