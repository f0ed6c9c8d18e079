package bridge

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kreabus/kreabus/internal/bridge/bridgetest"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/kreabus/kreabus/internal/ledger"
	"github.com/kreabus/kreabus/internal/natstest"
	"github.com/kreabus/kreabus/pkg/events"
	"github.com/kreabus/kreabus/pkg/krea"
)

const (
	testSecret     = "test-current-secret-0123456789abcdef"
	testPrevSecret = "test-previous-secret-0123456789abcdef"
)

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
	nc, js := natstest.ConnectJetStream(t, url)
	if !o.noStream {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if _, err := events.EnsureStream(ctx, js, events.JobsStreamConfig(events.StreamOptions{})); err != nil {
			t.Fatal(err)
		}
	}
	var (
		led *ledger.Ledger
		err error
	)
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
type response = bridgetest.Response

// okAnswer is the 200 body.
type okAnswer = bridgetest.OKAnswer

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
	return response{Code: res.StatusCode, Header: res.Header, Body: body}
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

// stored reads every message of KREA_JOBS.
func (e *testEnv) stored() []jetstream.Msg {
	e.t.Helper()
	return natstest.StoredMsgs(e.t, e.js, events.StreamJobs)
}

// fakeLedger is a ledger.Index for what the real ledger cannot be made to
// do on cue: it can hold Lookup until released, and fail. It owns nothing
// (every job is unknown) and records nothing.
type fakeLedger struct {
	mu      sync.Mutex
	err     error         // when set, every Lookup fails with it
	hold    chan struct{} // when not nil, Lookup waits for it to close
	entered chan struct{} // signalled when a Lookup starts
}

func newFakeLedger() *fakeLedger {
	return &fakeLedger{entered: make(chan struct{}, 1024)}
}

func (f *fakeLedger) Lookup(context.Context, string, string) (ledger.Ownership, error) {
	f.mu.Lock()
	hold, err := f.hold, f.err
	f.mu.Unlock()
	select {
	case f.entered <- struct{}{}:
	default:
	}
	if hold != nil {
		<-hold
	}
	return ledger.Ownership{}, err
}

func (f *fakeLedger) Stored(string, string, krea.Status, ledger.Ownership) {}

func containsAny(s string, subs ...string) string {
	for _, sub := range subs {
		if sub != "" && strings.Contains(s, sub) {
			return sub
		}
	}
	return ""
}
