package bridge

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/extensions"
	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/kreabus/kreabus/internal/cetest"
	"github.com/kreabus/kreabus/internal/ledger"
	"github.com/kreabus/kreabus/internal/natstest"
	"github.com/kreabus/kreabus/pkg/events"
	"github.com/kreabus/kreabus/pkg/krea"
)

const (
	testSecret     = "test-current-secret-0123456789abcdef"
	testPrevSecret = "test-previous-secret-0123456789abcdef"
)

// okAnswer is the 200 body.
type okAnswer struct {
	JobID     string      `json:"job_id"`
	Status    krea.Status `json:"status"`
	Duplicate *bool       `json:"duplicate"`
}

// testEnv is a bridge serving on loopback in front of a real JetStream.
type testEnv struct {
	t       testing.TB
	nc      *nats.Conn
	js      jetstream.JetStream
	b       *Bridge
	base    string
	tok     *events.Tokenizer
	reg     *prometheus.Registry
	client  *http.Client
	logs    *natstest.Buffer
	conns   *connCounter
	missing chan struct{}
	led     *ledger.Ledger // with envOptions.realLedger
	owners  *ledger.Owners // the bridge's index on led, following its records
}

type envOptions struct {
	cfg    Config
	ledger ledger.Index
	// realLedger opens the job ledger on the env's server (testEnv.led)
	// and serves ownership from it, as the bridge program does.
	realLedger bool
	noStream   bool   // do not create KREA_JOBS
	natsURL    string // use this server instead of an embedded JetStream
	maxPayload int32  // of the embedded server; 0: natstest's default
}

func newEnv(t testing.TB, o envOptions) *testEnv {
	t.Helper()
	url := o.natsURL
	if url == "" {
		url = natstest.RunServer(t, natstest.Options{MaxPayload: o.maxPayload}).ClientURL()
	}
	nc := natstest.Connect(t, url)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	if !o.noStream {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if _, err := events.EnsureStream(ctx, js, events.JobsStreamConfig(events.StreamOptions{})); err != nil {
			t.Fatal(err)
		}
	}
	var led *ledger.Ledger
	var owners *ledger.Owners
	if o.realLedger {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if led, err = ledger.Open(ctx, js, ledger.Config{Create: true, TTL: time.Hour}); err != nil {
			t.Fatal(err)
		}
		owners = led.Owners(0)
		fctx, stop := context.WithCancel(context.Background())
		t.Cleanup(stop)
		if err := owners.Follow(fctx); err != nil {
			t.Fatal(err)
		}
		o.ledger = owners
	}
	cfg := o.cfg
	if cfg.Secret == "" {
		cfg.Secret, cfg.SecretPrevious = testSecret, testPrevSecret
	}
	if cfg.PublishTimeout == 0 {
		cfg.PublishTimeout = 10 * time.Second // a loaded CI machine may be slow to ack
	}
	if cfg.MaxInFlight == 0 {
		cfg.MaxInFlight = 4096
	}
	e := &testEnv{t: t, nc: nc, js: js, reg: prometheus.NewRegistry(), logs: &natstest.Buffer{},
		conns: &connCounter{}, missing: make(chan struct{}, 16), led: led, owners: owners}
	level := slog.LevelDebug
	if _, bench := t.(*testing.B); bench {
		level = slog.LevelInfo // as in production
	}
	log := slog.New(slog.NewJSONHandler(e.logs, &slog.HandlerOptions{Level: level}))
	e.b, err = New(cfg, Deps{Conn: nc, Logger: log, Registerer: e.reg, Ledger: o.ledger,
		StreamMissing: func() {
			select {
			case e.missing <- struct{}{}:
			default:
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	e.tok, _ = events.NewTokenizer(cfg.Secret, cfg.SecretPrevious)
	limit := e.b.Server().ConnState
	e.b.Server().ConnState = func(c net.Conn, st http.ConnState) {
		e.conns.hook(c, st)
		limit(c, st)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- e.b.Serve(ln) }()
	e.base = "http://" + ln.Addr().String()
	e.client = &http.Client{
		Timeout:   20 * time.Second,
		Transport: &http.Transport{MaxIdleConnsPerHost: 128, MaxConnsPerHost: 128},
	}
	t.Cleanup(func() {
		e.client.CloseIdleConnections()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := e.b.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		if err := <-served; err != nil {
			t.Errorf("serve: %v", err)
		}
		if t.Failed() {
			t.Logf("bridge logs:\n%s", e.logs.String())
		}
	})
	return e
}

// connCounter counts the TCP connections the server accepted.
type connCounter struct {
	mu sync.Mutex
	n  int
}

func (c *connCounter) hook(_ net.Conn, s http.ConnState) {
	if s == http.StateNew {
		c.mu.Lock()
		c.n++
		c.mu.Unlock()
	}
}

func (c *connCounter) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n
}

// webhookURL is the URL for requestID's token.
func (e *testEnv) webhookURL(requestID string) string {
	return e.base + events.WebhookPathPrefix + e.tok.Mint(requestID)
}

// response is an answer of the bridge, read whole.
type response struct {
	code   int
	header http.Header
	body   []byte
}

func (r response) errMsg(t testing.TB) string {
	t.Helper()
	var v map[string]any
	if err := json.Unmarshal(r.body, &v); err != nil {
		t.Fatalf("error body %q is not JSON: %v", r.body, err)
	}
	msg, ok := v["error"].(string)
	if !ok || len(v) != 1 || msg == "" {
		t.Fatalf("error body %q is not {\"error\": \"...\"}", r.body)
	}
	return msg
}

func (r response) ok(t testing.TB) okAnswer {
	t.Helper()
	if r.code != http.StatusOK {
		t.Fatalf("code %d, want 200; body %s", r.code, r.body)
	}
	var a okAnswer
	dec := json.NewDecoder(bytes.NewReader(r.body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&a); err != nil || a.Duplicate == nil || a.JobID == "" || a.Status == "" {
		t.Fatalf("200 body %q: %v", r.body, err)
	}
	return a
}

func (e *testEnv) do(req *http.Request) response {
	e.t.Helper()
	res, err := e.client.Do(req)
	if err != nil {
		e.t.Fatalf("%s %s: %v", req.Method, req.URL.Path, err)
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if err != nil {
		e.t.Fatal(err)
	}
	if res.Header.Get("X-Request-Id") == "" {
		e.t.Errorf("%s %s: no X-Request-Id", req.Method, req.URL.Path)
	}
	if ct := res.Header.Get("Content-Type"); ct != "application/json" {
		e.t.Errorf("%s %s: Content-Type %q", req.Method, req.URL.Path, ct)
	}
	return response{code: res.StatusCode, header: res.Header, body: body}
}

// post POSTs body to url as application/json, with extra headers as
// name, value pairs.
func (e *testEnv) post(url string, body []byte, hdr ...string) response {
	e.t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		e.t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	for i := 0; i+1 < len(hdr); i += 2 {
		if hdr[i+1] == "" {
			req.Header.Del(hdr[i])
		} else {
			req.Header.Set(hdr[i], hdr[i+1])
		}
	}
	return e.do(req)
}

// jobBody is a Krea webhook body, with unknown fields and odd spacing so
// byte-for-byte storage shows.
func jobBody(jobID string, status krea.Status) []byte {
	return fmt.Appendf(nil, `{"job_id": %q,  "status":%q, "created_at":"2026-02-13T02:20:58.265Z",`+
		`"completed_at":"2026-02-13T02:21:09.001Z","result":{"urls":["https://gen.krea.ai/images/%s.png"]},`+
		`"estimated_time": 12.5, "type":"image", "extra": {"nested": [1, 2.5e3, true, null, "\u00e9"]}}`,
		jobID, status, uuid.NewString())
}

// stored reads every message of KREA_JOBS.
func (e *testEnv) stored() []jetstream.Msg {
	e.t.Helper()
	return storedMsgs(e.t, e.js)
}

func storedMsgs(t testing.TB, js jetstream.JetStream) []jetstream.Msg {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := js.Stream(ctx, events.StreamJobs)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	n := int(info.State.Msgs)
	if n == 0 {
		return nil
	}
	c, err := st.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	var out []jetstream.Msg
	for len(out) < n {
		batch, err := c.Fetch(n-len(out), jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		got := 0
		for m := range batch.Messages() {
			out = append(out, m)
			got++
		}
		if err := batch.Error(); err != nil {
			t.Fatalf("fetch: %v", err)
		}
		if got == 0 {
			t.Fatalf("fetched %d of %d messages", len(out), n)
		}
	}
	return out
}

// checkEvent checks a stored event against what was posted.
func checkEvent(t testing.TB, m jetstream.Msg, jobID string, status krea.Status, requestID string, body []byte) {
	t.Helper()
	if want := events.JobSubject(status); m.Subject() != want {
		t.Errorf("subject %q, want %q", m.Subject(), want)
	}
	if !bytes.Equal(m.Data(), body) {
		t.Errorf("stored body differs from the posted body:\n got %q\nwant %q", m.Data(), body)
	}
	h := m.Headers()
	msgID := jobID
	if !status.IsTerminal() {
		msgID = jobID + ":" + string(status)
	}
	want := map[string]string{
		events.HeaderMsgID:         msgID,
		events.HeaderJobID:         jobID,
		events.HeaderStatus:        string(status),
		events.HeaderRequestID:     requestID,
		events.HeaderSource:        string(events.SourceWebhook),
		events.HeaderCESpecVersion: "1.0",
		events.HeaderCEID:          msgID,
		events.HeaderCEType:        "ai.krea.job." + string(status),
		events.HeaderCESource:      events.CESource,
	}
	for k, v := range want {
		if got := h.Get(k); got != v {
			t.Errorf("header %s = %q, want %q", k, got, v)
		}
	}
	if _, err := time.Parse(time.RFC3339Nano, h.Get(events.HeaderCETime)); err != nil {
		t.Errorf("ce-time %q: %v", h.Get(events.HeaderCETime), err)
	}
	// As a CloudEvents consumer reads it, with the official SDK.
	ev, err := cetest.Decode(h, m.Data())
	if err != nil {
		t.Fatalf("stored event is not a valid CloudEvent: %v", err)
	}
	if ev.ID() != msgID || ev.DataContentType() != "application/json" || string(ev.Data()) != string(body) {
		t.Errorf("as a CloudEvent: id %q datacontenttype %q", ev.ID(), ev.DataContentType())
	}
	tp := h.Get(events.HeaderTraceParent)
	if dt, ok := extensions.GetDistributedTracingExtension(*ev); ok != (tp != "") || dt.TraceParent != tp {
		t.Errorf("tracing extension %+v, %v; traceparent %q", dt, ok, tp)
	}
}

// counter returns the value of a counter or gauge (or a histogram's sample
// count) in reg with the given label pairs. It fails the test when reg has
// no such metric or no series with those labels, so a renamed metric or
// label cannot pass as a zero.
func counter(t testing.TB, reg *prometheus.Registry, name string, labels ...string) float64 {
	t.Helper()
	v, err := gatherOne(reg, name, labels...)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// gatherOne is the value of the first series of name in reg carrying the
// label pairs, or an error when there is none.
func gatherOne(reg *prometheus.Registry, name string, labels ...string) (float64, error) {
	if len(labels)%2 != 0 {
		return 0, fmt.Errorf("metric %s: odd label list %q", name, labels)
	}
	mfs, err := reg.Gather()
	if err != nil {
		return 0, err
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metrics:
		for _, m := range mf.GetMetric() {
			have := map[string]string{}
			for _, lp := range m.GetLabel() {
				have[lp.GetName()] = lp.GetValue()
			}
			for i := 0; i+1 < len(labels); i += 2 {
				if v, ok := have[labels[i]]; !ok || v != labels[i+1] {
					continue metrics
				}
			}
			switch {
			case m.Counter != nil:
				return m.Counter.GetValue(), nil
			case m.Gauge != nil:
				return m.Gauge.GetValue(), nil
			case m.Histogram != nil:
				return float64(m.Histogram.GetSampleCount()), nil
			}
			return 0, fmt.Errorf("metric %s: not a counter, gauge or histogram", name)
		}
	}
	return 0, fmt.Errorf("metric %s: no series with labels %q", name, labels)
}

// fakeLedger is a ledger.Index with set answers, for what the real ledger
// cannot be made to do on cue: it can hold Lookup until released, and fail.
type fakeLedger struct {
	mu      sync.Mutex
	err     error // when set, every Lookup fails with it
	own     map[string]ledger.Ownership
	stored  []string
	hold    chan struct{} // when not nil, Lookup waits for it to close
	entered chan struct{} // signalled when a Lookup starts
}

func newFakeLedger() *fakeLedger {
	return &fakeLedger{own: map[string]ledger.Ownership{}, entered: make(chan struct{}, 1024)}
}

func (f *fakeLedger) set(requestID, jobID string, o ledger.Ownership) {
	f.mu.Lock()
	f.own[requestID+"/"+jobID] = o
	f.mu.Unlock()
}

func (f *fakeLedger) Lookup(_ context.Context, requestID, jobID string) (ledger.Ownership, error) {
	f.mu.Lock()
	hold, err := f.hold, f.err
	o := f.own[requestID+"/"+jobID]
	f.mu.Unlock()
	select {
	case f.entered <- struct{}{}:
	default:
	}
	if hold != nil {
		<-hold
	}
	return o, err
}

func (f *fakeLedger) Stored(requestID, jobID string, status krea.Status, _ ledger.Ownership) {
	f.mu.Lock()
	f.stored = append(f.stored, requestID+"/"+jobID+"/"+string(status))
	f.mu.Unlock()
}

func (f *fakeLedger) storedCalls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.stored...)
}

func containsAny(s string, subs ...string) string {
	for _, sub := range subs {
		if sub != "" && strings.Contains(s, sub) {
			return sub
		}
	}
	return ""
}

func TestCounterFailsOnMissingSeries(t *testing.T) {
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "kreabus_test_total", Help: "test"}, []string{"outcome"})
	reg.MustRegister(c)
	c.WithLabelValues("stored").Add(2)
	if v, err := gatherOne(reg, "kreabus_test_total", "outcome", "stored"); err != nil || v != 2 {
		t.Errorf("present series: %v, %v", v, err)
	}
	for _, q := range [][]string{{"kreabus_renamed_total"}, {"kreabus_test_total", "outcome", "duplicate"}, {"kreabus_test_total", "code", "200"}} {
		if v, err := gatherOne(reg, q[0], q[1:]...); err == nil {
			t.Errorf("%q: %v, want an error", q, v)
		}
	}
}
