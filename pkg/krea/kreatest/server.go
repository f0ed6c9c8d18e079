// Package kreatest is an in-process simulator of the Krea API for tests,
// in the spirit of net/http/httptest:
//
//	srv := kreatest.NewServer(kreatest.Config{})
//	defer srv.Close()
//	client := srv.NewClient()
//
// It serves POST /generate/{image|video|enhance}/{provider}/{model}[/{variant}],
// POST /styles/train, GET /jobs/{id}, GET /jobs and DELETE /jobs/{id} with
// Krea's bodies and status codes, and the result files of completed jobs
// (GET /images/<uuid>.png, /videos/<uuid>.mp4: real bytes, see ResultSize), runs jobs through backlogged → queued →
// processing → completed/failed/cancelled under a concurrency limit, POSTs
// webhooks with retries, and injects faults (429, 5xx, lost answers, latency,
// failed jobs, dropped, duplicate and late webhooks). Every request, job and
// webhook delivery is recorded so tests can assert on them.
//
// A Server is also an http.Handler, so a command (cmd/kreasim) can serve it
// on any address.
package kreatest

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"time"

	"github.com/kreabus/kreabus/pkg/krea"
)

// Server is a Krea API simulator. Its methods are safe for concurrent use.
type Server struct {
	// URL is the base URL (http://127.0.0.1:port) of a server started by
	// NewServer; empty for one made by New.
	URL string

	cfg Config
	ts  *httptest.Server

	ctx    context.Context // ends at Close; bounds every goroutine
	cancel context.CancelFunc
	wg     sync.WaitGroup
	hookTr *http.Transport // closed at Close when we own it
	hookHC *http.Client

	mu          sync.Mutex
	closed      bool
	faults      Faults
	rng         *rand.Rand
	jobs        map[string]*simJob
	order       []*simJob // by creation, oldest first
	backlog     []*simJob // FIFO of backlogged jobs
	active      int       // jobs queued or processing
	lastCreated time.Time
	requests    int
	cancels     []Cancellation // DELETE /jobs/{id} calls that passed auth
	attempts    map[string]int // submit calls that passed auth, by X-Webhook-URL
	created     map[string]int // jobs created, by X-Webhook-URL
	submissions []Submission
	deliveries  []WebhookDelivery
	results     map[string]resultFile // by URL path
	resultGets  map[string]int        // requests of each result file
}

// New returns a simulator that is not listening anywhere: serve it with any
// http.Server. Close it to stop its timers and webhook deliveries.
func New(cfg Config) (*Server, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	seed := cfg.Seed
	if seed == 0 {
		seed = rand.Uint64()
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{
		cfg:      cfg,
		ctx:      ctx,
		cancel:   cancel,
		faults:   cfg.Faults,
		rng:      rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)),
		jobs:     map[string]*simJob{},
		attempts: map[string]int{},
		created:  map[string]int{},

		results:    map[string]resultFile{},
		resultGets: map[string]int{},
	}
	if cfg.WebhookClient != nil {
		s.hookHC = cfg.WebhookClient
	} else {
		s.hookTr = http.DefaultTransport.(*http.Transport).Clone()
		s.hookHC = &http.Client{
			Transport: s.hookTr,
			// Like Krea as far as anyone knows: a webhook goes where it
			// was told, not where a redirect points.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		}
	}
	return s, nil
}

// NewServer starts a simulator on a loopback address, like
// httptest.NewServer. It panics when cfg is invalid.
func NewServer(cfg Config) *Server {
	s, err := New(cfg)
	if err != nil {
		panic(err)
	}
	s.ts = httptest.NewServer(s)
	s.URL = s.ts.URL
	return s
}

// Token returns the API token the simulator accepts.
func (s *Server) Token() string { return s.cfg.Token }

// NewClient returns a krea.Client pointed at the simulator with its token.
// It panics when the server is not listening (made by New) or an option
// fails, as test setup should.
func (s *Server) NewClient(opts ...krea.Option) *krea.Client {
	if s.URL == "" {
		panic("kreatest: NewClient on a server that is not listening")
	}
	c, err := krea.NewClient(s.cfg.Token, append([]krea.Option{krea.WithBaseURL(s.URL)}, opts...)...)
	if err != nil {
		panic(err)
	}
	return c
}

// Close stops the listener (if NewServer started one), every job timer and
// every webhook delivery, and waits for all of the simulator's goroutines.
func (s *Server) Close() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	s.mu.Unlock()
	s.cancel()
	if s.ts != nil {
		s.ts.Close()
	}
	s.wg.Wait()
	if s.hookTr != nil {
		s.hookTr.CloseIdleConnections()
	}
}

// goLocked runs f on a goroutine Close waits for. It does nothing once
// Close has begun. s.mu must be held, which is what makes the closed check
// and wg.Add atomic with respect to Close.
func (s *Server) goLocked(f func()) {
	if s.closed {
		return
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		f()
	}()
}

// sleep waits d, returning false early when the server closes or stop (may
// be nil) is closed.
func (s *Server) sleep(d time.Duration, stop <-chan struct{}) bool {
	if d <= 0 {
		return s.ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-s.ctx.Done():
		return false
	case <-stop:
		return false
	}
}

// rollLocked reports true with probability p.
func (s *Server) rollLocked(p float64) bool {
	switch {
	case p <= 0:
		return false
	case p >= 1:
		return true
	}
	return s.rng.Float64() < p
}

// jitterLocked returns a random duration in [0, d).
func (s *Server) jitterLocked(d time.Duration) time.Duration {
	if d <= 0 {
		return 0
	}
	return time.Duration(s.rng.Int64N(int64(d)))
}

func (s *Server) logf(format string, args ...any) {
	if s.cfg.Logf != nil {
		s.cfg.Logf("kreatest: "+format, args...)
	}
}

// endpoint is what a request asks for.
type endpoint int

const (
	epNone endpoint = iota
	epGenerate
	epTrain
	epGetJob
	epCancelJob
	epListJobs
)

// route maps a request onto an endpoint; the second result is false for a
// known path with the wrong method.
func route(r *http.Request) (ep endpoint, id string, methodOK bool) {
	p := r.URL.Path
	switch {
	case p == "/styles/train":
		return epTrain, "", r.Method == http.MethodPost
	case generatePath(p):
		return epGenerate, "", r.Method == http.MethodPost
	case p == "/jobs":
		return epListJobs, "", r.Method == http.MethodGet
	case strings.HasPrefix(p, "/jobs/") && len(p) > len("/jobs/") && !strings.Contains(p[len("/jobs/"):], "/"):
		id := p[len("/jobs/"):]
		switch r.Method {
		case http.MethodGet:
			return epGetJob, id, true
		case http.MethodDelete:
			return epCancelJob, id, true
		}
		return epGetJob, id, false
	}
	return epNone, "", false
}

// generatePath reports whether p is a generation endpoint
// (krea.ValidPath, but for /styles/train).
func generatePath(p string) bool { return p != "/styles/train" && krea.ValidPath(p) }

// ServeHTTP answers one API request.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	s.requests++
	f := s.faults
	latency := f.Latency + s.jitterLocked(f.LatencyJitter)
	s.mu.Unlock()

	if resultPath(r.URL.Path) {
		s.serveResult(w, r)
		return
	}
	ep, id, methodOK := route(r)
	if ep == epNone {
		writeError(w, http.StatusNotFound, "Not found")
		return
	}
	if !methodOK {
		writeError(w, http.StatusMethodNotAllowed, "Method not allowed")
		return
	}
	abandon := r.Context().Done()
	if f.CompleteAbandoned {
		abandon = nil
	}
	if latency > 0 && !s.sleep(latency, abandon) {
		// The client gave up or the server is closing: nothing was done.
		writeError(w, http.StatusServiceUnavailable, "Service unavailable")
		return
	}
	if !s.authorized(r) {
		w.Header().Set("WWW-Authenticate", "Bearer")
		writeError(w, http.StatusUnauthorized, "Unauthorized")
		return
	}

	submit := ep == epGenerate || ep == epTrain
	s.mu.Lock()
	if submit {
		s.attempts[r.Header.Get("X-Webhook-URL")]++
	}
	fault := 0
	switch {
	case submit && s.rollLocked(f.Rate429): // the document has 429 on submissions only
		fault = http.StatusTooManyRequests
	case s.rollLocked(f.Rate5xx):
		fault = []int{http.StatusInternalServerError, http.StatusBadGateway, http.StatusServiceUnavailable}[s.rng.IntN(3)]
	}
	s.mu.Unlock()
	if fault != 0 {
		s.logf("injected %d on %s %s", fault, r.Method, r.URL.Path)
		s.writeRetryable(w, fault, f)
		return
	}

	switch ep {
	case epGenerate, epTrain:
		s.handleSubmit(w, r, ep, f)
	case epGetJob:
		s.handleGetJob(w, id)
	case epCancelJob:
		rec := &statusRecorder{ResponseWriter: w}
		s.handleCancel(rec, id)
		s.mu.Lock()
		s.cancels = append(s.cancels, Cancellation{JobID: id, StatusCode: rec.code, Time: time.Now().UTC()})
		s.mu.Unlock()
	case epListJobs:
		s.handleList(w, r)
	}
}

func (s *Server) authorized(r *http.Request) bool {
	got := r.Header.Get("Authorization")
	want := "Bearer " + s.cfg.Token
	return subtle.ConstantTimeCompare([]byte(got), []byte(want)) == 1
}

// writeRetryable writes a 429 or 5xx answer, with Retry-After when the
// faults ask for one.
func (s *Server) writeRetryable(w http.ResponseWriter, code int, f Faults) {
	if f.RetryAfter > 0 {
		secs := (f.RetryAfter + time.Second - 1) / time.Second
		w.Header().Set("Retry-After", fmt.Sprint(int64(secs)))
	}
	msg := http.StatusText(code)
	if code == http.StatusTooManyRequests {
		msg = "Maximum number of concurrent jobs reached"
	}
	writeError(w, code, msg)
}

func writeJSON(w http.ResponseWriter, code int, body []byte) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_, _ = w.Write(body)
}

func writeError(w http.ResponseWriter, code int, msg string) {
	b, _ := json.Marshal(map[string]string{"error": msg})
	writeJSON(w, code, b)
}

// statusRecorder keeps the status code an answer was written with.
type statusRecorder struct {
	http.ResponseWriter
	code int
}

func (r *statusRecorder) WriteHeader(code int) {
	r.code = code
	r.ResponseWriter.WriteHeader(code)
}
