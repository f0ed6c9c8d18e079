// Package retry runs an operation until it succeeds, pausing between
// attempts by an events.Backoff. It is the one retry loop of kreabus's
// programs: connecting, ensuring streams, restarting a consumption,
// publishing an event that must not be lost.
package retry

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/kreabus/kreabus/pkg/events"
)

// Reconnect paces the retries of what a program cannot work without while
// NATS or JetStream is not up: binding a consumer, opening a bucket,
// watching keys, consuming.
var Reconnect = events.Backoff{Min: 100 * time.Millisecond, Max: 5 * time.Second}

// Notify is told of each failed attempt (counting from 1) and how long the
// loop waits before the next; it usually logs.
type Notify func(err error, attempt int, wait time.Duration)

// Do calls op until it returns nil, returns an error wrapped by Permanent,
// or ctx ends. It returns nil on success, the permanent error (unwrapped),
// or, when ctx ends first, an error wrapping both ctx's error and op's
// last one ("context canceled (last error: ...)").
func Do(ctx context.Context, b events.Backoff, op func(context.Context) error, notify Notify) error {
	for attempt := 1; ; attempt++ {
		err := op(ctx)
		if err == nil {
			return nil
		}
		var p *permanent
		if errors.As(err, &p) {
			return p.err
		}
		if ctx.Err() != nil {
			return stopped(ctx, err)
		}
		wait := b.Delay(uint64(attempt))
		if notify != nil {
			notify(err, attempt, wait)
		}
		if !Sleep(ctx, wait) {
			return stopped(ctx, err)
		}
	}
}

func stopped(ctx context.Context, last error) error {
	return fmt.Errorf("%w (last error: %w)", ctx.Err(), last)
}

// Forever runs op again every time it returns, until ctx ends, for work
// that is meant to run as long as the program does (a consumption, a
// watch). A run that lasted at least b.Max counts as having worked: the
// next pause starts from b.Min again. An error wrapped by Permanent stops
// the loop and is returned; otherwise Forever returns nil when ctx ends.
func Forever(ctx context.Context, b events.Backoff, op func(context.Context) error, notify Notify) error {
	attempt := 0
	for {
		start := time.Now()
		err := op(ctx)
		if ctx.Err() != nil {
			return nil
		}
		var p *permanent
		if errors.As(err, &p) {
			return p.err
		}
		if time.Since(start) >= b.Max {
			attempt = 0
		}
		attempt++
		wait := b.Delay(uint64(attempt))
		if notify != nil {
			notify(err, attempt, wait)
		}
		if !Sleep(ctx, wait) {
			return nil
		}
	}
}

// Permanent marks err as not worth retrying: Do and Forever return it.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return &permanent{err}
}

type permanent struct{ err error }

func (p *permanent) Error() string { return p.err.Error() }
func (p *permanent) Unwrap() error { return p.err }

// Sleep waits d or until ctx ends, reporting whether the whole d passed.
func Sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
