// Package admin serves a program's operational endpoints on their own
// listener: /healthz (the process is alive), /readyz (it can do its work
// now) and /metrics (Prometheus).
package admin

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Defaults.
const (
	// DefaultListen is the admin listener's address.
	DefaultListen = ":9090"
	// CheckTimeout bounds one run of a readiness check. Runs go on in the
	// background: /readyz never waits for them longer than ReadyWait.
	CheckTimeout = 2 * time.Second
	// ReadyWait is the longest /readyz waits for its checks: a check
	// still running then (NATS hanging, a request in flight to a server
	// that just died) is answered with its last result, so probes get an
	// answer within ReadyWait whatever NATS does. A check that never
	// finished a run counts as failed.
	ReadyWait = 50 * time.Millisecond
)

// Config holds the admin listener setting.
type Config struct {
	Listen string `env:"KREABUS_ADMIN_LISTEN" flag:"admin-listen" usage:"admin listener (/metrics, /healthz, /readyz); empty turns it off"`
	// Pprof is off by default: profiles reveal internals and cost CPU.
	Pprof bool `env:"KREABUS_PPROF" flag:"pprof" usage:"also serve /debug/pprof/ on the admin listener"`
}

// SetDefaults gives a new Config its defaults. Call it on a new value
// only: an empty Listen set later turns the admin server off.
func (c *Config) SetDefaults() {
	if c.Listen == "" {
		c.Listen = DefaultListen
	}
}

// Check reports why the program is not ready, or nil.
type Check func(ctx context.Context) error

// Server is the admin server. Create it with New, add checks, Start it.
type Server struct {
	reg      *prometheus.Registry
	log      *slog.Logger
	mu       sync.Mutex
	checks   map[string]*checkState
	draining atomic.Bool
	pprof    bool
	srv      *http.Server
	ln       net.Listener
}

// New returns a Server with a fresh registry holding the Go and process
// collectors. Programs register their metrics on Registry().
func New(log *slog.Logger) *Server {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return &Server{reg: reg, log: log, checks: map[string]*checkState{}}
}

// Registry is where the program's metrics go.
func (s *Server) Registry() *prometheus.Registry { return s.reg }

// AddCheck adds a named readiness check.
func (s *Server) AddCheck(name string, c Check) {
	s.mu.Lock()
	s.checks[name] = &checkState{fn: c}
	s.mu.Unlock()
}

// SetDraining turns /readyz to 503 for good: called first on SIGTERM so the
// load balancer stops sending work before the servers drain.
func (s *Server) SetDraining() { s.draining.Store(true) }

// checkState is one check and its last result. At most one run of a
// check is in flight: probes arriving meanwhile share it.
type checkState struct {
	fn      Check
	mu      sync.Mutex
	running chan struct{} // closed when the run in flight ends; nil when none
	ran     bool          // a run has finished
	err     error         // of the last finished run
}

// start starts a run unless one is in flight, and returns the channel
// closed when the run in flight ends.
func (c *checkState) start() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.running != nil {
		return c.running
	}
	done := make(chan struct{})
	c.running = done
	go func() {
		// Not the probe's context: the run outlives a probe that gave up
		// waiting, so the next probe finds its result.
		ctx, cancel := context.WithTimeout(context.Background(), CheckTimeout)
		err := c.fn(ctx)
		cancel()
		c.mu.Lock()
		c.err, c.ran, c.running = err, true, nil
		c.mu.Unlock()
		close(done)
	}()
	return done
}

// result is the last finished run's error.
func (c *checkState) result() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.ran {
		return errors.New("not checked yet")
	}
	return c.err
}

// Ready runs the checks, in parallel, and returns the failures by name.
// It returns within ReadyWait: a check still running then gives its last
// result.
func (s *Server) Ready(ctx context.Context) map[string]string {
	failed := map[string]string{}
	if s.draining.Load() {
		failed["shutdown"] = "draining"
	}
	s.mu.Lock()
	checks := make(map[string]*checkState, len(s.checks))
	for n, c := range s.checks {
		checks[n] = c
	}
	s.mu.Unlock()
	runs := make([]<-chan struct{}, 0, len(checks))
	for _, c := range checks {
		runs = append(runs, c.start())
	}
	wait := time.NewTimer(ReadyWait)
	defer wait.Stop()
waiting:
	for _, done := range runs {
		select {
		case <-done:
		case <-wait.C:
			break waiting
		case <-ctx.Done():
			break waiting
		}
	}
	for n, c := range checks {
		if err := c.result(); err != nil {
			failed[n] = err.Error()
		}
	}
	return failed
}

// Handler serves the admin endpoints.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	if s.pprof {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		failed := s.Ready(r.Context())
		if len(failed) > 0 {
			writeJSON(w, http.StatusServiceUnavailable, map[string]any{"status": "not ready", "failed": failed})
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.reg, promhttp.HandlerOpts{Registry: s.reg}))
	return mux
}

// Start listens on c.Listen and serves in the background. An empty address
// turns the admin server off.
func (s *Server) Start(c Config) error {
	s.pprof = c.Pprof
	addr := c.Listen
	if addr == "" {
		return nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	s.ln = ln
	s.srv = &http.Server{
		Handler:           s.Handler(),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       60 * time.Second,
		MaxHeaderBytes:    16 << 10,
	}
	go func() {
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("admin server", "err", err)
		}
	}()
	return nil
}

// Addr is the address the server listens on, once started.
func (s *Server) Addr() string {
	if s.ln == nil {
		return ""
	}
	return s.ln.Addr().String()
}

// Shutdown stops the server.
func (s *Server) Shutdown(ctx context.Context) error {
	if s.srv == nil {
		return nil
	}
	return s.srv.Shutdown(ctx)
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}
