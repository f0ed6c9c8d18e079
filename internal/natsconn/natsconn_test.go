package natsconn

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/kreabus/kreabus/internal/logging"
	"github.com/kreabus/kreabus/internal/natstest"
	"github.com/kreabus/kreabus/pkg/events"
)

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		c    Config
		want string
	}{
		{Config{}, "NATS_URL"},
		{Config{URL: "nats://x", Cert: "c"}, "NATS_KEY"},
		{Config{URL: "nats://x", Creds: "a", NKey: "b"}, "exclusive"},
	} {
		if err := tc.c.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: got %v, want error naming %s", tc.c, err, tc.want)
		}
	}
	if _, err := Connect(Config{URL: "nats://127.0.0.1:1", NKey: "/does/not/exist"}, "t", logging.Discard, nil); err == nil || !strings.Contains(err.Error(), "NATS_NKEY") {
		t.Errorf("missing nkey file: %v", err)
	}
}

// TestConnectStartsWithoutServer: a program starts while NATS is down and
// the gauge says so; once the server is up the connection comes by itself.
func TestConnectStartsWithoutServer(t *testing.T) {
	p := natstest.StartProcess(t)
	p.Stop()
	reg := prometheus.NewRegistry()
	nc, err := Connect(Config{URL: p.URL()}, "t", logging.Discard, reg)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if got := connectedGauge(t, reg); got != 0 {
		t.Fatalf("kreabus_nats_connected = %v while down", got)
	}
	// Streams set up while the server is down are made once it is up.
	js, _ := jetstream.New(nc)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	opts := events.StreamOptions{}
	setUp := make(chan error, 1)
	go func() { setUp <- SetUpStreams(ctx, js, logging.Discard, events.JobsStreamConfig(opts)) }()
	p.Start()
	natstest.CheckFor(t, 20*time.Second, 50*time.Millisecond, func() error {
		if !nc.IsConnected() {
			return errors.New("not connected")
		}
		return nil
	})
	if got := connectedGauge(t, reg); got != 1 {
		t.Fatalf("kreabus_nats_connected = %v once up", got)
	}
	select {
	case err := <-setUp:
		if err != nil {
			t.Fatal(err)
		}
	case <-ctx.Done():
		t.Fatal("streams not set up once the server was up")
	}
	if err := CheckStreams(ctx, nc, js, events.StreamJobs); err != nil {
		t.Fatal(err)
	}
	if err := CheckStreams(ctx, nc, js, events.StreamRequests); err == nil {
		t.Fatal("CheckStreams found a stream that does not exist")
	}
	// An incompatible stream is an error at once, not a retry forever.
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: events.StreamRequests, Subjects: []string{"other.>"}}); err != nil {
		t.Fatal(err)
	}
	if err := SetUpStreams(ctx, js, logging.Discard, events.RequestsStreamConfig(opts)); !errors.Is(err, events.ErrIncompatibleStream) {
		t.Fatalf("incompatible stream: %v", err)
	}
	// A context that ends stops the retries.
	p.Stop()
	short, cancelShort := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancelShort()
	if err := SetUpStreams(short, js, logging.Discard, events.JobsStreamConfig(opts)); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("set-up with NATS down and the context ended: %v", err)
	}
}

func connectedGauge(t *testing.T, reg *prometheus.Registry) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil || len(mfs) != 1 || mfs[0].GetName() != "kreabus_nats_connected" {
		t.Fatalf("registry: %v %v", mfs, err)
	}
	return mfs[0].GetMetric()[0].GetGauge().GetValue()
}
