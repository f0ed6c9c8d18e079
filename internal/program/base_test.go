package program_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/kreabus/kreabus/internal/natstest"
	"github.com/kreabus/kreabus/internal/program"
)

// A Base connects, runs parts until StopParts, delivers the first part
// to fail, and stops in order.
func TestBase(t *testing.T) {
	srv := natstest.RunServer(t)
	c := program.Common{}
	c.SetDefaults()
	c.NATS.URL = srv.ClientURL()
	c.Admin.Listen = "127.0.0.1:0"
	b, err := program.Open("test", &c, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.StartAdmin(&c); err != nil {
		t.Fatal(err)
	}
	if b.AdminAddr() == "" || !b.Conn().IsConnected() || b.JetStream() == nil {
		t.Fatalf("admin %q, connected %v", b.AdminAddr(), b.Conn().IsConnected())
	}
	first, second := errors.New("first"), errors.New("second")
	b.Fail(first)
	b.Fail(second) // dropped: Failed delivers the first
	if err := <-b.Failed(); err != first {
		t.Fatalf("Failed delivered %v, want %v", err, first)
	}

	ended := make(chan struct{})
	b.Go(func(ctx context.Context) { <-ctx.Done(); close(ended) })
	stuck := make(chan struct{})
	b.Go(func(context.Context) { <-stuck })
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := b.StopParts(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("StopParts with a part that does not return: %v, want the deadline", err)
	}
	<-ended
	close(stuck)
	if err := b.StopParts(context.Background()); err != nil {
		t.Fatalf("StopParts: %v", err)
	}
	if err := b.Finish(context.Background(), nil); err != nil {
		t.Fatalf("Finish: %v", err)
	}
	if !b.Conn().IsClosed() {
		t.Fatal("the connection is open after Finish")
	}
}
