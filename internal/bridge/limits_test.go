package bridge

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kreabus/kreabus/internal/metricstest"

	"github.com/kreabus/kreabus/internal/bridge/bridgetest"
	"github.com/kreabus/kreabus/internal/natstest"
	"github.com/kreabus/kreabus/pkg/events"

	"github.com/google/uuid"

	"github.com/kreabus/kreabus/pkg/krea"
)

// slowPost opens a connection and sends a webhook's headers announcing
// length body bytes (chunked when length < 0) and only the first part of
// body, then leaves it hanging, as a slow or malicious sender does. The
// connection is closed when the test ends.
func (e *testEnv) slowPost(requestID string, length int, part []byte) net.Conn {
	e.t.Helper()
	c, err := net.Dial("tcp", strings.TrimPrefix(e.base, "http://"))
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { _ = c.Close() })
	var hdr strings.Builder
	fmt.Fprintf(&hdr, "POST %s HTTP/1.1\r\nHost: bridge\r\nContent-Type: application/json\r\n",
		events.WebhookPathPrefix+e.tok.Mint(requestID))
	if length >= 0 {
		fmt.Fprintf(&hdr, "Content-Length: %d\r\n\r\n", length)
		_, err = io.WriteString(c, hdr.String()+string(part))
	} else {
		hdr.WriteString("Transfer-Encoding: chunked\r\n\r\n")
		_, err = fmt.Fprintf(c, "%s%x\r\n%s\r\n", hdr.String(), len(part), part)
	}
	if err != nil {
		e.t.Fatal(err)
	}
	return c
}

// waitInFlight waits until n webhooks are being handled.
func (e *testEnv) waitInFlight(n int) {
	e.t.Helper()
	natstest.CheckFor(e.t, 10*time.Second, 5*time.Millisecond, func() error {
		if got := e.b.InFlight(); got != n {
			return fmt.Errorf("%d in flight, want %d", got, n)
		}
		return nil
	})
}

// TestTokenFairness: slow bodies on one token take that token's slots
// only: its next webhook gets 429, every other token's is stored.
func TestTokenFairness(t *testing.T) {
	e := newEnv(t, envOptions{cfg: Config{MaxInFlight: 6, MaxInFlightPerToken: 3}})
	const leaked = "leaked"
	for range 3 {
		e.slowPost(leaked, 1000, []byte(`{"job_id":`))
	}
	e.waitInFlight(3)

	r := e.post(e.webhookURL(leaked), bridgetest.JobBody(uuid.NewString(), krea.StatusCompleted))
	if r.Code != http.StatusTooManyRequests || r.Header.Get("Retry-After") != "1" ||
		r.ErrMsg(t) != "too many webhooks in flight for this token, retry later" {
		t.Fatalf("offender: code %d Retry-After %q body %s", r.Code, r.Header.Get("Retry-After"), r.Body)
	}
	// Everyone else: up to the global limit, held by the leaked token's
	// three and three more slow ones of other tokens.
	for i := range 20 {
		id := uuid.NewString()
		if a := e.post(e.webhookURL(fmt.Sprintf("other-%d", i)), bridgetest.JobBody(id, krea.StatusCompleted)).OK(t); a.JobID != id || *a.Duplicate {
			t.Fatalf("other token: %+v", a)
		}
	}
	if got := metricstest.Value(t, e.reg, "kreabus_bridge_webhooks_total", "outcome", OutcomeTooManyRequests, "code", "429"); got != 1 {
		t.Errorf("429 counter %v, want 1", got)
	}
	if n := len(e.stored()); n != 20 {
		t.Errorf("%d stored, want 20", n)
	}
}

// TestTokenSlotsReleased: slots come back when webhooks end, whatever
// their answer, and the per-token map forgets tokens no longer in flight.
func TestTokenSlotsReleased(t *testing.T) {
	e := newEnv(t, envOptions{cfg: Config{MaxInFlightPerToken: 1}})
	c := e.slowPost("r", 1000, []byte(`{`))
	e.waitInFlight(1)
	if r := e.post(e.webhookURL("r"), bridgetest.JobBody(uuid.NewString(), krea.StatusCompleted)); r.Code != http.StatusTooManyRequests {
		t.Fatalf("code %d, want 429", r.Code)
	}
	_ = c.Close()
	e.waitInFlight(0)
	for range 3 { // a 400 and two 200s, one after the other on the one slot
		e.post(e.webhookURL("r"), []byte(`{"job_id":null}`))
		e.post(e.webhookURL("r"), bridgetest.JobBody(uuid.NewString(), krea.StatusCompleted)).OK(t)
	}
	for i := range e.b.tokens.shards {
		sh := &e.b.tokens.shards[i]
		sh.mu.Lock()
		n := len(sh.n)
		sh.mu.Unlock()
		if n != 0 {
			t.Fatalf("shard %d still holds %d tokens", i, n)
		}
	}
}

// TestBodyBudget: bodies in flight hold their bytes from the budget; a
// body that does not fit gets 429 (announced length at once, chunked
// while reading), smaller ones still pass, and the bytes come back.
func TestBodyBudget(t *testing.T) {
	const maxBody, budget = 40 << 10, 64 << 10
	e := newEnv(t, envOptions{cfg: Config{MaxBody: maxBody, BodyBudget: budget}})
	hold := e.slowPost("big", maxBody, []byte(`{"job_id":`))
	e.waitInFlight(1)
	if got := e.b.BodyBytesInFlight(); got != maxBody+1 {
		t.Fatalf("%d body bytes in flight, want %d", got, maxBody+1)
	}
	if got := metricstest.Value(t, e.reg, "kreabus_bridge_body_bytes_in_flight"); got != maxBody+1 {
		t.Errorf("gauge %v", got)
	}

	pad := func(n int) []byte {
		id := uuid.NewString()
		b := []byte(`{"job_id":"` + id + `","status":"completed","pad":"`)
		b = append(b, bytes.Repeat([]byte("x"), n-len(b)-2)...)
		return append(b, `"}`...)
	}
	r := e.post(e.webhookURL("second"), pad(30<<10))
	if r.Code != http.StatusTooManyRequests || r.Header.Get("Retry-After") != "1" ||
		r.ErrMsg(t) != "too many webhook bytes in flight, retry later" {
		t.Fatalf("over budget: code %d body %s", r.Code, r.Body)
	}
	e.post(e.webhookURL("small"), pad(2<<10)).OK(t)

	// Chunked: refused once the growing buffer meets the budget.
	chunked := e.slowPost("chunked", -1, pad(30 << 10)[:30<<10-1])
	resp, err := http.ReadResponse(bufio.NewReader(chunked), nil)
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("chunked over budget: %d", resp.StatusCode)
	}

	_ = hold.Close()
	e.waitInFlight(0)
	if got := e.b.BodyBytesInFlight(); got != 0 {
		t.Fatalf("%d body bytes still held", got)
	}
	e.post(e.webhookURL("second"), pad(30<<10)).OK(t)
	if n := len(e.stored()); n != 2 {
		t.Errorf("%d stored, want 2", n)
	}
}

// TestBodyOverMaxPayload: a body the NATS server could never take (its
// max_payload less HeaderRoom) is 413 at once, with or without a length,
// never 503; the limit in force is named.
func TestBodyOverMaxPayload(t *testing.T) {
	const maxPayload = 64 << 10
	e := newEnv(t, envOptions{maxPayload: maxPayload})
	limit := maxPayload - HeaderRoom
	if got := e.b.MaxBody(); got != limit {
		t.Fatalf("MaxBody %d, want %d", got, limit)
	}
	body := func(n int) []byte {
		b := []byte(`{"job_id":"` + uuid.NewString() + `","status":"completed","pad":"`)
		b = append(b, bytes.Repeat([]byte("y"), n-len(b)-2)...)
		return append(b, `"}`...)
	}
	over := body(limit + 1)
	r := e.post(e.webhookURL("r"), over)
	if r.Code != http.StatusRequestEntityTooLarge || r.ErrMsg(t) != "body larger than "+strconv.Itoa(limit)+" bytes" {
		t.Fatalf("code %d body %s", r.Code, r.Body)
	}
	c := e.slowPost("r", -1, over)
	if _, err := io.WriteString(c, "0\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Fatalf("chunked: %d", resp.StatusCode)
	}
	e.post(e.webhookURL("r"), body(limit)).OK(t)
	if got := metricstest.Value(t, e.reg, "kreabus_bridge_webhooks_total", "outcome", OutcomeUnavailable, "code", "503"); got != 0 {
		t.Errorf("%v answers 503", got)
	}
}

// TestMaxConns: connections beyond the limit are closed before a byte is
// read; while more than half are open, keep-alive connections are not
// kept; once they close, new ones are served.
func TestMaxConns(t *testing.T) {
	e := newEnv(t, envOptions{cfg: Config{MaxConns: 4}})
	var idle []net.Conn
	for range 4 {
		c, err := net.Dial("tcp", strings.TrimPrefix(e.base, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		idle = append(idle, c)
	}
	natstest.CheckFor(t, 10*time.Second, 5*time.Millisecond, func() error {
		if n := e.b.conns.open.Load(); n != 4 {
			return fmt.Errorf("%d open", n)
		}
		return nil
	})
	extra, err := net.Dial("tcp", strings.TrimPrefix(e.base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer extra.Close()
	_ = extra.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := extra.Read(make([]byte, 1)); err == nil || n != 0 {
		t.Fatalf("connection over the limit: read %d, %v; want it closed", n, err)
	}
	if got := metricstest.Value(t, e.reg, "kreabus_bridge_connections_refused_total"); got < 1 {
		t.Errorf("refused counter %v", got)
	}

	// Three open of four: a webhook is served, its connection not kept.
	_ = idle[0].Close()
	natstest.CheckFor(t, 10*time.Second, 5*time.Millisecond, func() error {
		if n := e.b.conns.open.Load(); n != 3 {
			return fmt.Errorf("%d open", n)
		}
		return nil
	})
	c, err := net.Dial("tcp", strings.TrimPrefix(e.base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	b := bridgetest.JobBody(uuid.NewString(), krea.StatusCompleted)
	fmt.Fprintf(c, "POST %s HTTP/1.1\r\nHost: bridge\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s",
		events.WebhookPathPrefix+e.tok.Mint("r"), len(b), b)
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("code %d", resp.StatusCode)
	}
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := br.ReadByte(); err == nil {
		t.Fatal("keep-alive connection kept while more than half the connections are open")
	}
	for _, c := range idle[1:] {
		_ = c.Close()
	}
	natstest.CheckFor(t, 10*time.Second, 5*time.Millisecond, func() error {
		if n := e.b.conns.open.Load(); n != 0 {
			return fmt.Errorf("%d open", n)
		}
		return nil
	})
	e.post(e.webhookURL("r"), bridgetest.JobBody(uuid.NewString(), krea.StatusCompleted)).OK(t)
}
