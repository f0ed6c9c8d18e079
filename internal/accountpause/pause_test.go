package accountpause_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/kreabus/kreabus/internal/accountpause"
	"github.com/kreabus/kreabus/internal/natstest"
)

type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

func TestBackoff(t *testing.T) {
	clk := &clock{t: time.Unix(1000, 0)}
	p, err := accountpause.New(time.Second, 3*time.Second, accountpause.WithClock(clk.now))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if u := p.Trip(ctx, "402"); !u.Equal(clk.t.Add(time.Second)) {
		t.Fatalf("first pause until %v", u)
	}
	// In-flight calls failing during the pause do not lengthen it.
	if u := p.Trip(ctx, "402"); !u.Equal(clk.t.Add(time.Second)) {
		t.Fatalf("second error in the same pause: until %v", u)
	}
	clk.t = clk.t.Add(time.Second)
	if p.Remaining() != 0 {
		t.Fatal("still paused after the pause")
	}
	// The probe fails: doubled, then capped.
	if u := p.Trip(ctx, "402"); !u.Equal(clk.t.Add(2 * time.Second)) {
		t.Fatalf("after a failed probe: until %v", u)
	}
	clk.t = clk.t.Add(2 * time.Second)
	if u := p.Trip(ctx, "402"); !u.Equal(clk.t.Add(3 * time.Second)) {
		t.Fatalf("capped pause: until %v", u)
	}
	// A call that began before this pause (in flight when the error came)
	// and succeeded proves nothing: the pause and its backoff stay.
	p.Clear(ctx, clk.t.Add(-time.Millisecond))
	if p.Remaining() == 0 {
		t.Fatal("a call begun before the pause ended it")
	}
	// One begun since (the probe) ends it.
	clk.t = clk.t.Add(time.Millisecond)
	p.Clear(ctx, clk.t)
	if p.Remaining() != 0 {
		t.Fatal("Clear did not end the pause")
	}
	if u := p.Trip(ctx, "401"); !u.Equal(clk.t.Add(time.Second)) {
		t.Fatalf("after a success the pause starts from the minimum: until %v", u)
	}
	if _, err := accountpause.New(0, -1); !errors.Is(err, accountpause.ErrInvalid) {
		t.Errorf("bad settings: %v", err)
	}
}

// TestConsumerPauseShared: a pause tripped by one replica is the
// consumer's, and another replica adopts it; resuming the consumer from
// outside ends it everywhere.
func TestConsumerPauseShared(t *testing.T) {
	s := natstest.RunServer(t)
	js, err := jetstream.New(natstest.Connect(t, s.ClientURL()))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "Q", Subjects: []string{"q.>"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := js.CreateConsumer(ctx, "Q", jetstream.ConsumerConfig{Durable: "c", AckPolicy: jetstream.AckExplicitPolicy}); err != nil {
		t.Fatal(err)
	}
	a, err := accountpause.New(time.Minute, time.Minute, accountpause.WithConsumer(js, "Q", "c"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := accountpause.New(time.Minute, time.Minute, accountpause.WithConsumer(js, "Q", "c"))
	if err != nil {
		t.Fatal(err)
	}
	a.Trip(ctx, "401")
	c, err := js.Consumer(ctx, "Q", "c")
	if err != nil {
		t.Fatal(err)
	}
	if !c.CachedInfo().Paused {
		t.Fatal("consumer not paused")
	}
	b.Sync(ctx)
	if b.Remaining() < 50*time.Second {
		t.Fatalf("other replica did not adopt the pause: %v", b.Remaining())
	}
	if _, err := js.ResumeConsumer(ctx, "Q", "c"); err != nil {
		t.Fatal(err)
	}
	a.Sync(ctx)
	b.Sync(ctx)
	if a.Remaining() != 0 || b.Remaining() != 0 {
		t.Fatalf("resumed consumer still paused here: %v %v", a.Remaining(), b.Remaining())
	}
}
