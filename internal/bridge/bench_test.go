package bridge

import (
	"bytes"
	"io"
	"net/http"
	"strconv"
	"sync/atomic"
	"testing"

	"github.com/kreabus/kreabus/internal/natstest"
	"github.com/kreabus/kreabus/pkg/events"
)

// benchBodies makes distinct webhook bodies cheaply: the job ID's last
// twelve hex digits are a counter written into a template.
type benchBodies struct {
	n        atomic.Uint64
	template []byte
	idAt     int
}

func newBenchBodies() *benchBodies {
	tpl := []byte(`{"job_id":"3f1e8b5a-7c2d-4e9f-a1b0-000000000000","status":"completed",` +
		`"created_at":"2026-02-13T02:20:58.265Z","completed_at":"2026-02-13T02:21:09.001Z",` +
		`"result":{"urls":["https://gen.krea.ai/images/9b2f0c2e-1d4a-4c55-8a43-0f3a5a2c7e11.png"]}}`)
	return &benchBodies{template: tpl, idAt: bytes.Index(tpl, []byte("000000000000"))}
}

// next writes the next body into buf.
func (bb *benchBodies) next(buf []byte) []byte {
	buf = append(buf[:0], bb.template...)
	n := bb.n.Add(1)
	var hex [16]byte
	s := strconv.AppendUint(hex[:0], n, 16)
	copy(buf[bb.idAt+12-len(s):bb.idAt+12], s)
	return buf
}

// nopWriter is a ResponseWriter reused across iterations, so the numbers
// are the handler's own allocations.
type nopWriter struct {
	h    http.Header
	code int
}

func (w *nopWriter) Header() http.Header         { return w.h }
func (w *nopWriter) Write(p []byte) (int, error) { return len(p), nil }
func (w *nopWriter) WriteHeader(code int)        { w.code = code }

type reusableBody struct{ bytes.Reader }

func (*reusableBody) Close() error { return nil }

// BenchmarkHandler is one webhook through the handler, publish and PubAck
// included, against JetStream with a file-storage KREA_JOBS: an embedded
// server (its allocations count too) and a nats-server process (only the
// bridge's and the client's allocations count).
func BenchmarkHandler(b *testing.B) {
	for _, srv := range []string{"embedded", "process"} {
		b.Run(srv, func(b *testing.B) {
			var o envOptions
			if srv == "process" {
				o.natsURL = natstest.StartProcess(b).URL()
			}
			e := newEnv(b, o)
			h := e.b.Handler()
			bodies := newBenchBodies()
			b.Run("serial", func(b *testing.B) {
				benchHandler(b, h, e.benchPath, bodies, false)
			})
			b.Run("parallel", func(b *testing.B) {
				benchHandler(b, h, e.benchPath, bodies, true)
			})
		})
	}
}

// benchPath is the webhook path of a request of its own: webhooks in
// flight at once are of different requests, as Krea's are (one token's
// in-flight slots are few).
func (e *testEnv) benchPath() string {
	return events.WebhookPathPrefix + e.tok.Mint("bench-"+strconv.FormatUint(benchRequests.Add(1), 10))
}

var benchRequests atomic.Uint64

func benchHandler(b *testing.B, h http.Handler, pathFor func() string, bodies *benchBodies, parallel bool) {
	one := func(req *http.Request, rb *reusableBody, w *nopWriter, buf []byte) []byte {
		buf = bodies.next(buf)
		rb.Reset(buf)
		req.Body = rb
		req.ContentLength = int64(len(buf))
		clear(w.h)
		w.code = 0
		h.ServeHTTP(w, req)
		if w.code != http.StatusOK {
			b.Fatalf("code %d", w.code)
		}
		return buf
	}
	mk := func() (*http.Request, *reusableBody, *nopWriter) {
		req, _ := http.NewRequest(http.MethodPost, "http://bridge"+pathFor(), nil)
		req.Header.Set("Content-Type", "application/json")
		return req, &reusableBody{}, &nopWriter{h: http.Header{}}
	}
	b.ReportAllocs()
	if !parallel {
		req, rb, w := mk()
		var buf []byte
		for b.Loop() {
			buf = one(req, rb, w, buf)
		}
		return
	}
	b.SetParallelism(32) // many webhooks in flight, as behind a load balancer
	b.RunParallel(func(pb *testing.PB) {
		req, rb, w := mk()
		var buf []byte
		for pb.Next() {
			buf = one(req, rb, w, buf)
		}
	})
}

// BenchmarkHTTP is the whole path over loopback HTTP with keep-alive
// connections, as Krea would drive it.
func BenchmarkHTTP(b *testing.B) {
	e := newEnv(b, envOptions{})
	bodies := newBenchBodies()
	b.ReportAllocs()
	b.SetParallelism(32)
	b.RunParallel(func(pb *testing.PB) {
		url := e.base + e.benchPath()
		var buf []byte
		for pb.Next() {
			buf = bodies.next(buf)
			req, _ := http.NewRequest(http.MethodPost, url, bytes.NewReader(buf))
			req.Header.Set("Content-Type", "application/json")
			res, err := e.client.Do(req)
			if err != nil {
				b.Error(err)
				return
			}
			_, _ = io.Copy(io.Discard, res.Body)
			res.Body.Close()
			if res.StatusCode != http.StatusOK {
				b.Errorf("code %d", res.StatusCode)
				return
			}
		}
	})
}
