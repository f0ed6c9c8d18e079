package loadgen

import (
	"context"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/kreabus/kreabus/pkg/events"
)

// E2EReport is the end-to-end latency from a webhook POST being due to a
// JetStream consumer receiving the event.
type E2EReport struct {
	Target string  `json:"target,omitempty"`
	Load   *Report `json:"load"`
	// E2E latency of the jobs sent in the measured window.
	E2E      Latency `json:"e2e"`
	Expected int     `json:"expected"` // measured jobs answered 200
	Received int     `json:"received"`
	// Jobs sent, for Check.
	Jobs []*Job `json:"-"`
}

// E2E drives the bridge at cfg.Rate (open loop; 200/s when unset) and
// measures, for every new job, the time from when its POST was due until
// an ordered consumer on KREA_JOBS receives its event. drain bounds the
// wait for events after the last answer.
func E2E(ctx context.Context, js jetstream.JetStream, cfg Config, drain time.Duration) (*E2EReport, error) {
	if cfg.Rate <= 0 {
		cfg.Rate = 200
	}
	if drain <= 0 {
		drain = 10 * time.Second
	}
	var (
		mu       sync.Mutex
		due      = map[string]time.Time{}
		received atomic.Int64
		hist     = new(Histogram)
	)
	cfg.OnSend = func(id string, t time.Time, measured bool) {
		if !measured {
			return
		}
		mu.Lock()
		due[id] = t
		mu.Unlock()
	}
	cons, err := js.OrderedConsumer(ctx, events.StreamJobs, jetstream.OrderedConsumerConfig{
		DeliverPolicy: jetstream.DeliverNewPolicy,
		HeadersOnly:   true,
	})
	if err != nil {
		return nil, fmt.Errorf("e2e consumer: %w", err)
	}
	// The one pull loop (events.Consume): many handlers, so a pull asks
	// for many events at once.
	cc, err := events.Consume(js.Conn(), cons, func(_ context.Context, m jetstream.Msg) {
		now := time.Now()
		id := m.Headers().Get(events.HeaderJobID)
		mu.Lock()
		t, ok := due[id]
		if ok {
			delete(due, id)
		}
		mu.Unlock()
		if ok {
			hist.Record(now.Sub(t))
			received.Add(1)
		}
	}, events.WithConcurrency(256))
	if err != nil {
		return nil, fmt.Errorf("e2e consume: %w", err)
	}
	defer cc.Stop()

	res, err := Run(ctx, cfg)
	if err != nil {
		return nil, err
	}
	// Count the measured jobs answered 200; wait for their events.
	mu.Lock()
	var expected int
	for _, j := range res.Jobs {
		if _, pending := due[j.ID]; pending && j.OK() == 0 {
			delete(due, j.ID) // never stored as far as we know
		}
	}
	mu.Unlock()
	// Up to drain for the events still due; those still due then count as expected.
	_ = waitFor(ctx, drain, nil, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(due) == 0
	})
	mu.Lock()
	expected = int(received.Load()) + len(due)
	mu.Unlock()
	return &E2EReport{
		Load:     res.Report,
		E2E:      Summarize(hist),
		Expected: expected,
		Received: int(received.Load()),
		Jobs:     res.Jobs,
	}, nil
}

// WriteText prints the end-to-end report for humans.
func (r *E2EReport) WriteText(w io.Writer) {
	name := r.Target
	if name == "" {
		name = "target"
	}
	fmt.Fprintf(w, "%s end-to-end at %.0f webhooks/s (POST due → consumer received): %d of %d events received\n",
		name, r.Load.Rate, r.Received, r.Expected)
	fmt.Fprintf(w, "  e2e        %s\n", r.E2E)
	fmt.Fprintf(w, "  http       %s\n", r.Load.Latency)
	fmt.Fprintf(w, "  errors     %s\n", errorsString(r.Load.Errors))
}
