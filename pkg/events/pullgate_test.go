package events_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/kreabus/kreabus/internal/natstest"
	"github.com/kreabus/kreabus/pkg/events"
	"github.com/kreabus/kreabus/pkg/krea"
)

// countingGate grants at most limit messages a pull and counts what is
// out: granted, minus released, minus handled.
type countingGate struct {
	limit int

	mu       sync.Mutex
	out      int
	pulls    int
	maxAsked int
}

type countingGrant struct {
	g *countingGate
	n int
}

func (g *countingGate) Acquire(ctx context.Context, most int) (events.Grant, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	n := min(most, g.limit)
	g.out += n
	g.pulls++
	g.maxAsked = max(g.maxAsked, most)
	return &countingGrant{g, n}, nil
}

func (gr *countingGrant) N() int { return gr.n }

func (gr *countingGrant) Release(unused int) {
	gr.g.mu.Lock()
	defer gr.g.mu.Unlock()
	gr.g.out -= unused
}

func (g *countingGate) handled() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.out--
}

func (g *countingGate) state() (out, pulls, maxAsked int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.out, g.pulls, g.maxAsked
}

// A PullGate sizes every pull; each handler finds its pull's Grant, and
// what no message came for is given back, so nothing stays out.
func TestConsumePullGate(t *testing.T) {
	js := startStreams(t)
	const n = 7
	for i := range n {
		publishEvent(t, js, fmt.Sprintf("g%d", i), krea.StatusCompleted)
	}
	gate := &countingGate{limit: 2}
	var mu sync.Mutex
	handled := 0
	c, err := events.Consume(js.Conn(), jobsConsumer(t, js, "gated"), func(ctx context.Context, msg jetstream.Msg) {
		if g, ok := events.PullGrant(ctx); !ok || g.N() < 1 || g.N() > 2 {
			t.Errorf("handler's grant %v, %v", g, ok)
		}
		gate.handled()
		mu.Lock()
		handled++
		mu.Unlock()
		_ = msg.Ack()
	}, events.WithConcurrency(4), events.WithPullGate(gate))
	if err != nil {
		t.Fatal(err)
	}
	waitSettled(t, c)
	c.Drain()
	select {
	case <-c.Closed():
	case <-time.After(10 * time.Second):
		t.Fatal("consumption did not end after Drain")
	}
	mu.Lock()
	defer mu.Unlock()
	out, pulls, maxAsked := gate.state()
	if handled != n || out != 0 {
		t.Fatalf("handled %d of %d; %d granted but neither handled nor released", handled, n, out)
	}
	if pulls < n/2 || maxAsked > 4 {
		t.Fatalf("%d pulls (want at least %d of at most 2), largest ask %d (want at most 4, the concurrency)", pulls, n/2, maxAsked)
	}
}

// A gate that blocks until the consumption stops pulls nothing, and the
// consumption still ends.
func TestConsumePullGateBlockedStops(t *testing.T) {
	js := startStreams(t)
	publishEvent(t, js, "blocked", krea.StatusCompleted)
	gate := blockingGate{}
	c, err := events.Consume(js.Conn(), jobsConsumer(t, js, "blocked"), func(ctx context.Context, msg jetstream.Msg) {
		t.Error("a message was pulled past a closed gate")
	}, events.WithPullGate(gate))
	if err != nil {
		t.Fatal(err)
	}
	natstest.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		info := consumerInfo(t, c)
		if info.NumPending != 1 || info.NumAckPending != 0 {
			return fmt.Errorf("pending %d, ack pending %d", info.NumPending, info.NumAckPending)
		}
		return nil
	})
	c.Stop()
	select {
	case <-c.Closed():
	case <-time.After(10 * time.Second):
		t.Fatal("consumption did not end while its gate blocked")
	}
	if _, err := events.Consume(js.Conn(), c.Consumer(), func(context.Context, jetstream.Msg) {}, events.WithPullGate(nil)); !errors.Is(err, events.ErrInvalidOption) {
		t.Fatalf("a nil pull gate: %v, want ErrInvalidOption", err)
	}
	if _, err := events.ConsumeJobs(js.Conn(), c.Consumer(), func(context.Context, *events.Event) error { return nil }, events.WithPullGate(gate)); !errors.Is(err, events.ErrInvalidOption) {
		t.Fatalf("ConsumeJobs with a pull gate: %v, want ErrInvalidOption", err)
	}
}

type blockingGate struct{}

func (blockingGate) Acquire(ctx context.Context, _ int) (events.Grant, error) {
	<-ctx.Done()
	return nil, ctx.Err()
}
