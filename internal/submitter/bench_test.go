package submitter

import (
	"fmt"
	"testing"
	"time"

	"github.com/kreabus/kreabus/internal/natstest"
	"github.com/kreabus/kreabus/pkg/events"
	"github.com/kreabus/kreabus/pkg/krea/kreatest"
)

// BenchmarkSubmit measures requests per second through the submitter (pull,
// ledger lookup, API call, ledger write, submitted event with PubAck, acked
// ack) against the simulator answering after 50 ms, at concurrency 64. The
// ideal is concurrency / latency = 64 / 0.05 s = 1280 requests/s.
//
//	go test -run '^$' -bench BenchmarkSubmit -benchtime 5000x ./internal/submitter/
func BenchmarkSubmit(b *testing.B) {
	const (
		concurrency = 64
		latency     = 50 * time.Millisecond
	)
	e := newEnv(b, kreatest.Config{
		Concurrency: 1 << 20,         // never backlog, never 429
		QueueTime:   -1, RunTime: -1, // jobs end at once ...
		Faults: kreatest.Faults{Latency: latency, DropWebhookRate: 1}, // ... without webhook traffic
	})
	cfg := e.config()
	cfg.Concurrency = concurrency
	cfg.APITimeout = 10 * time.Second

	reqs := make([]*events.Request, b.N)
	for i := range reqs {
		reqs[i] = goodRequest(fmt.Sprintf("bench-%d", i))
	}
	e.publishAsync(reqs)

	b.ResetTimer()
	start := time.Now()
	r := e.start(cfg)
	natstest.CheckFor(b, 10*time.Minute, 5*time.Millisecond, func() error {
		if n := int(e.metric("kreabus_submitter_submitted_total")); n < b.N {
			return fmt.Errorf("%d of %d submitted", n, b.N)
		}
		return nil
	})
	elapsed := time.Since(start)
	b.StopTimer()
	r.stop(b)
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "req/s")
	b.ReportMetric(float64(concurrency)/latency.Seconds(), "ideal-req/s")
	b.ReportMetric(float64(e.maxInflight.Load()), "max-in-flight")
}
