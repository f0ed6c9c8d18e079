package retry_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/kreabus/kreabus/internal/retry"
	"github.com/kreabus/kreabus/pkg/events"
)

var fast = events.Backoff{Min: time.Millisecond, Max: 4 * time.Millisecond}

func TestDoRetriesUntilSuccess(t *testing.T) {
	var calls, notified int
	err := retry.Do(context.Background(), fast, func(context.Context) error {
		calls++
		if calls < 4 {
			return errors.New("not yet")
		}
		return nil
	}, func(err error, attempt int, wait time.Duration) {
		notified++
		if attempt != notified {
			t.Errorf("attempt %d, want %d", attempt, notified)
		}
		if wait < fast.Min/2 || wait > fast.Max {
			t.Errorf("wait %v outside [%v, %v]", wait, fast.Min/2, fast.Max)
		}
	})
	if err != nil || calls != 4 || notified != 3 {
		t.Fatalf("err %v, calls %d, notified %d; want nil, 4, 3", err, calls, notified)
	}
}

func TestDoStopsOnPermanent(t *testing.T) {
	bad := errors.New("bad")
	calls := 0
	err := retry.Do(context.Background(), fast, func(context.Context) error {
		calls++
		return retry.Permanent(bad)
	}, nil)
	if err != bad || calls != 1 {
		t.Fatalf("err %v, calls %d; want %v, 1", err, calls, bad)
	}
}

func TestDoStopsWhenContextEnds(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	failed := errors.New("down")
	err := retry.Do(ctx, events.Backoff{Min: time.Hour, Max: time.Hour}, func(context.Context) error {
		cancel()
		return failed
	}, nil)
	if !errors.Is(err, context.Canceled) || !errors.Is(err, failed) {
		t.Fatalf("err %v, want context.Canceled joined with %v", err, failed)
	}
	if want := "context canceled (last error: down)"; err.Error() != want {
		t.Fatalf("err %q, want %q", err, want)
	}
}

func TestForeverRunsUntilContextEnds(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	calls := 0
	err := retry.Forever(ctx, fast, func(context.Context) error {
		calls++
		if calls == 3 {
			cancel()
		}
		return errors.New("consumption ended")
	}, nil)
	if err != nil || calls != 3 {
		t.Fatalf("err %v, calls %d; want nil, 3", err, calls)
	}
	stop := errors.New("consumer deleted")
	if err := retry.Forever(context.Background(), fast, func(context.Context) error { return retry.Permanent(stop) }, nil); err != stop {
		t.Fatalf("err %v, want %v", err, stop)
	}
}

func TestReconnectIsValid(t *testing.T) {
	if err := retry.Reconnect.Validate(); err != nil {
		t.Fatal(err)
	}
}
