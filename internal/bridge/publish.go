package bridge

import (
	"context"
	"errors"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kreabus/kreabus/internal/retry"
	"github.com/kreabus/kreabus/pkg/events"
)

// Publish errors.
var (
	errDisconnected   = errors.New("NATS is not connected")
	errPublishTimeout = errors.New("no PubAck within the publish timeout")
)

// Retrying "no responders" (JetStream momentarily without the stream: a
// leader election, a server still recovering) within the publish timeout:
// at most noStreamRetries more attempts, noStreamRetry apart (100 to
// 200 ms).
const noStreamRetries = 2

var noStreamRetry = events.Backoff{Min: 200 * time.Millisecond, Max: 200 * time.Millisecond}

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
func (b *Bridge) publish(ctx context.Context, m *nats.Msg) (ack *jetstream.PubAck, err error) {
	start := time.Now()
	defer func() { b.m.publish.Observe(time.Since(start).Seconds()) }()
	deadline := start.Add(b.cfg.PublishTimeout)
	attempts := 0
	err = retry.Do(ctx, noStreamRetry, func(ctx context.Context) error {
		if attempts++; attempts > 1 {
			var cancel context.CancelFunc
			ctx, cancel = context.WithDeadline(ctx, deadline)
			defer cancel()
		}
		var err error
		ack, err = b.publishOnce(ctx, m)
		if errors.Is(err, jetstream.ErrNoStreamResponse) && attempts <= noStreamRetries && time.Until(deadline) > noStreamRetry.Max {
			return err
		}
		return retry.Permanent(err)
	}, nil)
	if err != nil && ctx.Err() != nil {
		return nil, ctxErr(ctx)
	}
	return ack, err
}

// publishOnce makes one attempt at publishing m, waiting for its PubAck
// within PublishTimeout or until ctx ends.
func (b *Bridge) publishOnce(ctx context.Context, m *nats.Msg) (*jetstream.PubAck, error) {
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
		if errors.Is(err, jetstream.ErrNoStreamResponse) && b.streamMissing != nil {
			b.streamMissing()
		}
		return nil, err
	case <-ctx.Done():
		return nil, ctxErr(ctx)
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
