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
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Defaults.
const (
	DefaultListen = ":9090"
	// CheckTimeout bounds each readiness check so /readyz answers promptly
	// even while NATS hangs.
	CheckTimeout = 2 * time.Second
)

// Config holds the admin listener setting.
type Config struct {
	Listen string `env:"KREABUS_ADMIN_LISTEN" flag:"admin-listen" default:":9090" usage:"admin listener (/metrics, /healthz, /readyz); empty turns it off"`
	// Pprof is off by default: profiles reveal internals and cost CPU.
	Pprof bool `env:"KREABUS_PPROF" flag:"pprof" default:"false" usage:"also serve /debug/pprof/ on the admin listener"`
}

// Check reports why the program is not ready, or nil.
type Check func(ctx context.Context) error

// Server is the admin server. Create it with New, add checks, Start it.
type Server struct {
	reg      *prometheus.Registry
	log      *slog.Logger
	mu       sync.Mutex
	checks   map[string]Check
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
	return &Server{reg: reg, log: log, checks: map[string]Check{}}
}

// Registry is where the program's metrics go.
func (s *Server) Registry() *prometheus.Registry { return s.reg }

// AddCheck adds a named readiness check.
func (s *Server) AddCheck(name string, c Check) {
	s.mu.Lock()
	s.checks[name] = c
	s.mu.Unlock()
}

// SetDraining turns /readyz to 503 for good: called first on SIGTERM so the
// load balancer stops sending work before the servers drain.
func (s *Server) SetDraining() { s.draining.Store(true) }

// Ready runs the checks and returns the failures by name.
func (s *Server) Ready(ctx context.Context) map[string]string {
	failed := map[string]string{}
	if s.draining.Load() {
		failed["shutdown"] = "draining"
	}
	s.mu.Lock()
	names := make([]string, 0, len(s.checks))
	for n := range s.checks {
		names = append(names, n)
	}
	checks := s.checks
	s.mu.Unlock()
	sort.Strings(names)
	for _, n := range names {
		cctx, cancel := context.WithTimeout(ctx, CheckTimeout)
		err := checks[n](cctx)
		cancel()
		if err != nil {
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
