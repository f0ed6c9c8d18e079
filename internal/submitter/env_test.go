package submitter

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kreabus/kreabus/internal/metricstest"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/kreabus/kreabus/internal/ledger"
	"github.com/kreabus/kreabus/internal/natstest"
	"github.com/kreabus/kreabus/pkg/events"
	"github.com/kreabus/kreabus/pkg/krea/kreatest"
)

const testSecret = "test-webhook-secret"

// env is an embedded JetStream, a Krea simulator behind a counting proxy, a
// webhook sink and the ledger: everything a submitter needs.
type env struct {
	t      testing.TB
	nc     *nats.Conn
	js     jetstream.JetStream
	sim    *kreatest.Server
	api    *httptest.Server
	hooks  *httptest.Server
	ledger *ledger.Ledger
	tok    *events.Tokenizer
	reg    *prometheus.Registry

	inflight, maxInflight atomic.Int64
	calls                 atomic.Int64
	deny                  atomic.Int32 // when not 0: answer every submission (POST) with this status

	mu        sync.Mutex
	callTimes []time.Time
}

func newEnv(t testing.TB, simCfg kreatest.Config) *env {
	t.Helper()
	_, nc, js := natstest.JetStream(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := events.EnsureStreams(ctx, js, events.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	led, err := ledger.Open(ctx, js, ledger.Config{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, nc: nc, js: js, ledger: led, reg: prometheus.NewRegistry()}
	e.hooks = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.WriteHeader(http.StatusOK)
	}))
	t.Cleanup(e.hooks.Close)
	if simCfg.WebhookAttempts == 0 {
		simCfg.WebhookAttempts = 1
	}
	sim, err := kreatest.New(simCfg)
	if err != nil {
		t.Fatal(err)
	}
	e.sim = sim
	e.api = httptest.NewServer(http.HandlerFunc(e.proxy))
	t.Cleanup(func() {
		e.api.Close()
		sim.Close()
	})
	e.tok, _ = events.NewTokenizer(testSecret, "")
	return e
}

// proxy counts calls in flight in front of the simulator and can answer
// with an account error instead of it.
func (e *env) proxy(w http.ResponseWriter, r *http.Request) {
	n := e.inflight.Add(1)
	defer e.inflight.Add(-1)
	for {
		m := e.maxInflight.Load()
		if n <= m || e.maxInflight.CompareAndSwap(m, n) {
			break
		}
	}
	e.calls.Add(1)
	e.mu.Lock()
	e.callTimes = append(e.callTimes, time.Now())
	e.mu.Unlock()
	if code := e.deny.Load(); code != 0 && r.Method == http.MethodPost {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(int(code))
		fmt.Fprintf(w, `{"error":%q}`, http.StatusText(int(code)))
		return
	}
	e.sim.ServeHTTP(w, r)
}

// config is a submitter configuration pointed at the env, with short
// backoffs.
func (e *env) config() Config {
	return Config{
		APIToken:        e.sim.Token(),
		APIURL:          e.api.URL,
		PublicURL:       e.hooks.URL,
		WebhookSecret:   testSecret,
		Concurrency:     8,
		MaxDeliveries:   50,
		RetryBackoffMin: 5 * time.Millisecond,
		RetryBackoffMax: 100 * time.Millisecond,
		PauseBackoffMin: 100 * time.Millisecond,
		PauseBackoffMax: 400 * time.Millisecond,
		APITimeout:      5 * time.Second,
		UncertainSettle: 100 * time.Millisecond,
		UncertainWait:   time.Minute,
		ShutdownTimeout: 20 * time.Second,
		Create:          true,
	}
}

func testLogger(t testing.TB) *slog.Logger {
	if os.Getenv("SUBMITTER_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// running is a submitter started by env.start.
type running struct {
	s      *Submitter
	cancel context.CancelFunc
	done   chan error
}

// start runs a submitter until the test ends or stop is called.
func (e *env) start(cfg Config) *running {
	e.t.Helper()
	s, err := New(cfg, Deps{JS: e.js, Ledger: e.ledger, Log: testLogger(e.t), Registerer: e.reg})
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{s: s, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- s.Run(ctx) }()
	e.t.Cleanup(func() { r.stop(e.t) })
	return r
}

// stop cancels Run and waits for its graceful return.
func (r *running) stop(t testing.TB) {
	t.Helper()
	r.cancel()
	select {
	case err, ok := <-r.done:
		if ok && err != nil {
			t.Errorf("Run: %v", err)
		}
		if ok {
			close(r.done)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not return 30s after its context ended")
	}
}

// publish publishes a raw request body and returns nothing; the request ID
// is the caller's business.
func (e *env) publishRaw(subject string, data []byte, hdr nats.Header) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := e.js.PublishMsg(ctx, &nats.Msg{Subject: subject, Data: data, Header: hdr}); err != nil {
		e.t.Fatal(err)
	}
}

// publishAsync publishes many requests quickly and waits for their acks.
func (e *env) publishAsync(reqs []*events.Request) {
	e.t.Helper()
	for _, r := range reqs {
		data, _ := json.Marshal(r)
		msg := &nats.Msg{Subject: "krea.requests.image", Data: data, Header: nats.Header{}}
		if _, err := e.js.PublishMsgAsync(msg); err != nil {
			e.t.Fatal(err)
		}
	}
	select {
	case <-e.js.PublishAsyncComplete():
	case <-time.After(30 * time.Second):
		e.t.Fatal("async publish did not complete")
	}
}

func goodRequest(id string) *events.Request {
	return &events.Request{
		RequestID: id,
		Path:      "/generate/image/bfl/flux-1-dev",
		Input:     json.RawMessage(`{"prompt":"a serene mountain landscape at sunset","width":1024,"height":576}`),
		Metadata:  json.RawMessage(`{"user":"42","n":"` + id + `"}`),
	}
}

// webhookURL is the X-Webhook-URL the submitter sends for a request.
func (e *env) webhookURL(requestID string) string {
	return e.tok.URL(e.hooks.URL, requestID)
}

// jobEvent is a stored event with its headers.
type jobEvent struct {
	*events.Event
	Header nats.Header
}

// events reads every event stored on KREA_JOBS.
func (e *env) events() []jobEvent {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	st, err := e.js.Stream(ctx, events.StreamJobs)
	if err != nil {
		e.t.Fatal(err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	var out []jobEvent
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		m, err := st.GetMsg(ctx, seq)
		if err != nil {
			e.t.Fatalf("get event %d: %v", seq, err)
		}
		ev, err := events.DecodeEvent(m.Subject, m.Header, m.Data)
		if err != nil && !strings.HasSuffix(m.Subject, ".rejected") {
			e.t.Fatalf("event %d: %v", seq, err)
		}
		out = append(out, jobEvent{ev, m.Header})
	}
	return out
}

// eventsBy groups events by request ID and status.
func byRequest(evs []jobEvent) map[string]map[string][]jobEvent {
	out := map[string]map[string][]jobEvent{}
	for _, ev := range evs {
		m := out[ev.RequestID]
		if m == nil {
			m = map[string][]jobEvent{}
			out[ev.RequestID] = m
		}
		m[string(ev.Status)] = append(m[string(ev.Status)], ev)
	}
	return out
}

// countStatus counts stored events with the given status.
func (e *env) countStatus(status string) int {
	n := 0
	for _, ev := range e.events() {
		if string(ev.Status) == status {
			n++
		}
	}
	return n
}

// requestsLeft is the number of requests still in KREA_REQUESTS.
func (e *env) requestsLeft() uint64 {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := e.js.Stream(ctx, events.StreamRequests)
	if err != nil {
		e.t.Fatal(err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	return info.State.Msgs
}

// metric is metricstest.Value of the submitter's registry.
func (e *env) metric(name string, labels ...string) float64 {
	e.t.Helper()
	return metricstest.Value(e.t, e.reg, name, labels...)
}

// metricOrZero is metric for a labelled series that legitimately does not
// exist yet (a counter never incremented): absent, it is 0. Use it only
// where absence is the expected state.
func (e *env) metricOrZero(name string, labels ...string) float64 {
	e.t.Helper()
	return metricstest.ValueOrZero(e.t, e.reg, name, labels...)
}
