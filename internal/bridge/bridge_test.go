package bridge

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kreabus/kreabus/internal/metricstest"

	"github.com/kreabus/kreabus/internal/bridge/bridgetest"
	"github.com/kreabus/kreabus/internal/natstest"
	"github.com/kreabus/kreabus/pkg/events"

	"github.com/google/uuid"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/kreabus/kreabus/internal/ledger"
	"github.com/kreabus/kreabus/pkg/krea"
)

// TestStored covers the 200 rows: stored, then duplicates of it.
func TestStored(t *testing.T) {
	e := newEnv(t, envOptions{})
	reqID := events.NewRequestID()
	jobID := uuid.NewString()
	body := bridgetest.JobBody(jobID, krea.StatusCompleted)
	const tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

	r := e.post(e.webhookURL(reqID), body, "traceparent", tp)
	a := r.OK(t)
	if a.JobID != jobID || a.Status != krea.StatusCompleted || *a.Duplicate {
		t.Fatalf("answer %+v", a)
	}
	msgs := e.stored()
	if len(msgs) != 1 {
		t.Fatalf("%d messages stored, want 1", len(msgs))
	}
	bridgetest.CheckEvent(t, msgs[0], jobID, krea.StatusCompleted, reqID, body)
	if got := msgs[0].Headers().Get("traceparent"); got != tp {
		t.Errorf("traceparent %q, want %q", got, tp)
	}
	if got := msgs[0].Headers().Get(events.HeaderMetadata); got != "" {
		t.Errorf("metadata %q without a ledger", got)
	}

	// Krea repeats the webhook: 200 duplicate, nothing new stored.
	a = e.post(e.webhookURL(reqID), body).OK(t)
	if !*a.Duplicate {
		t.Errorf("repeat not marked duplicate: %+v", a)
	}
	// Another terminal status for the same job: the job is terminal once.
	a = e.post(e.webhookURL(reqID), bridgetest.JobBody(jobID, krea.StatusFailed)).OK(t)
	if !*a.Duplicate || a.Status != krea.StatusFailed {
		t.Errorf("second terminal status not a duplicate: %+v", a)
	}
	if msgs := e.stored(); len(msgs) != 1 {
		t.Fatalf("%d messages stored after repeats, want 1", len(msgs))
	}

	// A non-terminal status is its own event, de-duplicated per status.
	pbody := bridgetest.JobBody(jobID, krea.StatusProcessing)
	if a := e.post(e.webhookURL(reqID), pbody).OK(t); *a.Duplicate {
		t.Errorf("first processing event marked duplicate")
	}
	if a := e.post(e.webhookURL(reqID), pbody).OK(t); !*a.Duplicate {
		t.Errorf("repeated processing event not marked duplicate")
	}
	msgs = e.stored()
	if len(msgs) != 2 {
		t.Fatalf("%d messages stored, want 2", len(msgs))
	}
	bridgetest.CheckEvent(t, msgs[1], jobID, krea.StatusProcessing, reqID, pbody)

	// A token minted with the previous secret is accepted (rotation).
	prev, _ := events.NewTokenizer(testPrevSecret, "")
	reqID2, jobID2 := events.NewRequestID(), uuid.NewString()
	body2 := bridgetest.JobBody(jobID2, krea.StatusCancelled)
	e.post(e.base+events.WebhookPathPrefix+prev.Mint(reqID2), body2, "Content-Type", "application/json; charset=utf-8").OK(t)
	msgs = e.stored()
	if len(msgs) != 3 {
		t.Fatalf("%d messages stored, want 3", len(msgs))
	}
	bridgetest.CheckEvent(t, msgs[2], jobID2, krea.StatusCancelled, reqID2, body2)

	if got := metricstest.Value(t, e.reg, "kreabus_bridge_webhooks_total", "outcome", "stored", "code", "200"); got != 3 {
		t.Errorf("stored counter %v, want 3", got)
	}
	if got := metricstest.Value(t, e.reg, "kreabus_bridge_webhooks_total", "outcome", "duplicate", "code", "200"); got != 3 {
		t.Errorf("duplicate counter %v, want 3", got)
	}
	if got := metricstest.Value(t, e.reg, "kreabus_bridge_duplicates_total"); got != 3 {
		t.Errorf("duplicates_total %v, want 3", got)
	}
	if got := metricstest.Value(t, e.reg, "kreabus_bridge_publish_duration_seconds"); got != 6 {
		t.Errorf("publish observations %v, want 6", got)
	}
	if got := metricstest.Value(t, e.reg, "kreabus_bridge_requests_in_flight"); got != 0 {
		t.Errorf("in flight %v after the requests", got)
	}
}

// TestRejected covers the 4xx rows: each answer with its {"error"} body,
// its counter, and nothing stored.
func TestRejected(t *testing.T) {
	e := newEnv(t, envOptions{cfg: Config{MaxBody: 4096}})
	reqID := events.NewRequestID()
	url := e.webhookURL(reqID)
	good := bridgetest.JobBody(uuid.NewString(), krea.StatusCompleted)
	token := e.tok.Mint(reqID)
	other, _ := events.NewTokenizer("some-other-secret-0123456789abcdef", "")
	mac := token[strings.LastIndexByte(token, '.')+1:]
	flipped := []byte(token)
	flipped[len(flipped)-3] ^= 1

	padded := func(n int) []byte { // valid JSON object of exactly n bytes
		pre := []byte(`{"job_id":"` + uuid.NewString() + `","status":"completed","pad":"`)
		b := append(pre, bytes.Repeat([]byte("x"), n-len(pre)-2)...)
		return append(b, `"}`...)
	}

	type tc struct {
		name    string
		method  string
		url     string
		body    []byte
		hdr     []string
		chunked bool
		code    int
		outcome string
		msg     string // substring of the error message
	}
	cases := []tc{
		{name: "no token", url: e.base + "/webhooks/krea/", body: good, code: 401, outcome: OutcomeUnauthorized, msg: "missing"},
		{name: "no token no slash", url: e.base + "/webhooks/krea", body: good, code: 401, outcome: OutcomeUnauthorized, msg: "missing"},
		{name: "wrong mac", url: e.base + "/webhooks/krea/" + string(flipped), body: good, code: 401, outcome: OutcomeUnauthorized, msg: "invalid webhook token"},
		{name: "other secret", url: e.base + "/webhooks/krea/" + other.Mint(reqID), body: good, code: 401, outcome: OutcomeUnauthorized},
		{name: "mac only", url: e.base + "/webhooks/krea/" + mac, body: good, code: 401, outcome: OutcomeUnauthorized},
		{name: "other request id", url: e.base + "/webhooks/krea/x" + token, body: good, code: 401, outcome: OutcomeUnauthorized},
		{name: "garbage token", url: e.base + "/webhooks/krea/abc.def", body: good, code: 401, outcome: OutcomeUnauthorized},
		{name: "long token", url: e.base + "/webhooks/krea/" + strings.Repeat("a", 300) + "." + mac, body: good, code: 401, outcome: OutcomeUnauthorized},

		{name: "text/plain", url: url, body: good, hdr: []string{"Content-Type", "text/plain"}, code: 415, outcome: OutcomeUnsupportedMediaType},
		{name: "json-ish", url: url, body: good, hdr: []string{"Content-Type", "application/jsonx"}, code: 415, outcome: OutcomeUnsupportedMediaType},
		{name: "form", url: url, body: good, hdr: []string{"Content-Type", "application/x-www-form-urlencoded"}, code: 415, outcome: OutcomeUnsupportedMediaType},
		{name: "bad params", url: url, body: good, hdr: []string{"Content-Type", "application/json; ;;="}, code: 415, outcome: OutcomeUnsupportedMediaType},
		{name: "gzip", url: url, body: good, hdr: []string{"Content-Encoding", "gzip"}, code: 415, outcome: OutcomeUnsupportedMediaType, msg: "encoding"},

		{name: "over limit", url: url, body: padded(4097), code: 413, outcome: OutcomeTooLarge},
		{name: "over limit chunked", url: url, body: padded(4097), chunked: true, code: 413, outcome: OutcomeTooLarge},
		{name: "way over limit chunked", url: url, body: padded(64 << 10), chunked: true, code: 413, outcome: OutcomeTooLarge},

		{name: "empty", url: url, body: nil, code: 400, outcome: OutcomeBadRequest, msg: "not valid JSON"},
		{name: "not json", url: url, body: []byte("job_id=1"), code: 400, outcome: OutcomeBadRequest, msg: "not valid JSON"},
		{name: "truncated", url: url, body: good[:len(good)-1], code: 400, outcome: OutcomeBadRequest, msg: "not valid JSON"},
		{name: "bad json inside", url: url, body: bytes.Replace(good, []byte("2.5e3"), []byte("2.5e"), 1), code: 400, outcome: OutcomeBadRequest, msg: "not valid JSON"},
		{name: "trailing garbage", url: url, body: append(append([]byte{}, good...), " {}"...), code: 400, outcome: OutcomeBadRequest, msg: "not valid JSON"},
		{name: "array", url: url, body: []byte(`[{"job_id":"` + uuid.NewString() + `","status":"completed"}]`), code: 400, outcome: OutcomeBadRequest, msg: "not a JSON object"},
		{name: "string", url: url, body: []byte(`"completed"`), code: 400, outcome: OutcomeBadRequest, msg: "not a JSON object"},
		{name: "no job_id", url: url, body: []byte(`{"status":"completed"}`), code: 400, outcome: OutcomeBadRequest, msg: "job_id is missing"},
		{name: "job_id not uuid", url: url, body: []byte(`{"job_id":"job-1","status":"completed"}`), code: 400, outcome: OutcomeBadRequest, msg: "job_id is not a UUID"},
		{name: "job_id number", url: url, body: []byte(`{"job_id":12,"status":"completed"}`), code: 400, outcome: OutcomeBadRequest, msg: "strings"},
		{name: "job_id braces", url: url, body: []byte(`{"job_id":"{` + uuid.NewString() + `}","status":"completed"}`), code: 400, outcome: OutcomeBadRequest, msg: "UUID"},
		{name: "no status", url: url, body: []byte(`{"job_id":"` + uuid.NewString() + `"}`), code: 400, outcome: OutcomeBadRequest, msg: "status is missing"},

		{name: "GET", method: http.MethodGet, url: url, code: 405, outcome: OutcomeMethodNotAllowed},
		{name: "PUT", method: http.MethodPut, url: url, body: good, code: 405, outcome: OutcomeMethodNotAllowed},
		{name: "DELETE no token", method: http.MethodDelete, url: e.base + "/webhooks/krea/", code: 405, outcome: OutcomeMethodNotAllowed},

		{name: "unknown path", url: e.base + "/webhooks/other/" + token, body: good, code: 404, outcome: OutcomeNotFound},
		{name: "root", method: http.MethodGet, url: e.base + "/", code: 404, outcome: OutcomeNotFound},
		{name: "deeper path", url: url + "/x", body: good, code: 404, outcome: OutcomeNotFound},
		{name: "unclean path", url: e.base + "/webhooks/krea//" + token, body: good, code: 404, outcome: OutcomeNotFound},
		{name: "dot segment", url: e.base + "/webhooks/krea/./" + token, body: good, code: 404, outcome: OutcomeNotFound},
	}
	want := map[string]float64{}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			method := c.method
			if method == "" {
				method = http.MethodPost
			}
			var rd io.Reader = bytes.NewReader(c.body)
			if c.chunked {
				rd = io.MultiReader(rd) // hides the length: chunked encoding
			}
			req, err := http.NewRequest(method, c.url, rd)
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set("Content-Type", "application/json")
			for i := 0; i+1 < len(c.hdr); i += 2 {
				if c.hdr[i+1] == "" {
					req.Header.Del(c.hdr[i])
				} else {
					req.Header.Set(c.hdr[i], c.hdr[i+1])
				}
			}
			r := e.do(req)
			if r.Code != c.code {
				t.Fatalf("code %d, want %d; body %s", r.Code, c.code, r.Body)
			}
			if msg := r.ErrMsg(t); !strings.Contains(msg, c.msg) {
				t.Errorf("error %q does not mention %q", msg, c.msg)
			}
			if c.code == 405 && r.Header.Get("Allow") != http.MethodPost {
				t.Errorf("405 without Allow: POST (%q)", r.Header.Get("Allow"))
			}
		})
		want[fmt.Sprintf("%s/%d", c.outcome, c.code)]++
	}
	if msgs := e.stored(); len(msgs) != 0 {
		t.Errorf("%d messages stored by rejected webhooks", len(msgs))
	}
	for k, n := range want {
		outcome, code, _ := strings.Cut(k, "/")
		if got := metricstest.Value(t, e.reg, "kreabus_bridge_webhooks_total", "outcome", outcome, "code", code); got != n {
			t.Errorf("webhooks_total{%s,%s} = %v, want %v", outcome, code, got, n)
		}
	}
	// One log line per rejected webhook (404s at debug, but debug is on
	// here), each with its request id; never a secret or a whole token.
	logs := e.logs.String()
	if n := strings.Count(logs, `"msg":"webhook rejected"`); n != len(cases) {
		t.Errorf("%d rejection log lines for %d rejections", n, len(cases))
	}
	if strings.Count(logs, `"req_id":"`) < len(cases) {
		t.Errorf("rejection lines without req_id:\n%s", logs)
	}
	if leak := containsAny(logs, testSecret, testPrevSecret, mac, string(flipped), token); leak != "" {
		t.Errorf("logs contain %q", leak)
	}
	if !strings.Contains(logs, `"token_request_id":"`+reqID+`"`) {
		t.Errorf("401 lines do not name the token's request id")
	}
}

// TestBodyLimitDefault posts bodies just at and just over the default 1 MiB;
// the one over is sent without a length, so the limit bites while reading.
func TestBodyLimitDefault(t *testing.T) {
	e := newEnv(t, envOptions{})
	jobID := uuid.NewString()
	pre := []byte(`{"job_id":"` + jobID + `","status":"completed","pad":"`)
	at := append(append(pre, bytes.Repeat([]byte("y"), DefaultMaxBody-len(pre)-2)...), `"}`...)
	if len(at) != DefaultMaxBody {
		t.Fatal(len(at))
	}
	e.post(e.webhookURL("r1"), at).OK(t)

	over := append(append([]byte{}, at[:len(at)-2]...), `y"}`...)
	req := httptest.NewRequest(http.MethodPost, events.WebhookPathPrefix+e.tok.Mint("r1"), io.MultiReader(bytes.NewReader(over)))
	req.Header.Set("Content-Type", "application/json")
	req.ContentLength = -1
	rec := httptest.NewRecorder()
	e.b.Handler().ServeHTTP(rec, req)
	if rec.Code != http.StatusRequestEntityTooLarge {
		t.Fatalf("code %d for %d bytes", rec.Code, len(over))
	}
	msgs := e.stored()
	if len(msgs) != 1 || !bytes.Equal(msgs[0].Data(), at) {
		t.Fatalf("stored %d messages", len(msgs))
	}
}

// TestStatusInjection: status values that could smuggle subject tokens or
// wildcards are refused and nothing is published.
func TestStatusInjection(t *testing.T) {
	e := newEnv(t, envOptions{})
	// Catch anything published under krea., stored or not.
	var mu sync.Mutex
	var seen []string
	sub, err := e.nc.Subscribe("krea.>", func(m *nats.Msg) {
		mu.Lock()
		seen = append(seen, m.Subject)
		mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	bad := []string{
		"completed.x", "completed.>", "*", ">", "krea.jobs.>", "a.b", "completed ", " completed",
		"comp leted", "COMPLETED", "Completed", "completed\n", "completed\t", "completed\r\nX: y",
		"", "-completed", "1completed", "completed\u0000", "complétéd", strings.Repeat("a", 33),
		"completed/x", "completed*",
		"submitted", "rejected", "mirrored", // kreabus' own statuses, never Krea's
	}
	for _, s := range bad {
		body, _ := json.Marshal(map[string]string{"job_id": uuid.NewString(), "status": s})
		r := e.post(e.webhookURL("inject"), body)
		if r.Code != http.StatusBadRequest {
			t.Errorf("status %q: code %d, want 400", s, r.Code)
		} else if msg := r.ErrMsg(t); !strings.Contains(msg, "status") {
			t.Errorf("status %q: error %q", s, msg)
		}
	}
	for _, id := range []string{"*", ">", "a.b", uuid.NewString() + ".x", strings.ToUpper(uuid.NewString())[:35] + "*"} {
		body, _ := json.Marshal(map[string]string{"job_id": id, "status": "completed"})
		if r := e.post(e.webhookURL("inject"), body); r.Code != http.StatusBadRequest {
			t.Errorf("job_id %q: code %d, want 400", id, r.Code)
		}
	}
	// The longest valid status still goes through, as one subject token.
	longest := strings.Repeat("z", krea.MaxStatusLen)
	body, _ := json.Marshal(map[string]string{"job_id": uuid.NewString(), "status": longest})
	e.post(e.webhookURL("inject"), body).OK(t)
	msgs := e.stored()
	if len(msgs) != 1 || msgs[0].Subject() != "krea.jobs."+longest {
		t.Fatalf("stored %d messages", len(msgs))
	}
	natstest.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		mu.Lock()
		defer mu.Unlock()
		if len(seen) == 0 {
			return fmt.Errorf("the valid event was not seen")
		}
		return nil
	})
	mu.Lock()
	defer mu.Unlock()
	if len(seen) != 1 || seen[0] != "krea.jobs."+longest {
		t.Errorf("published on %q", seen)
	}
}

// TestUppercaseJobID: a UUID in capitals is the same job.
func TestUppercaseJobID(t *testing.T) {
	e := newEnv(t, envOptions{})
	jobID := uuid.NewString()
	upper := bridgetest.JobBody(strings.ToUpper(jobID), krea.StatusCompleted)
	a := e.post(e.webhookURL("r"), upper).OK(t)
	if a.JobID != jobID || *a.Duplicate {
		t.Fatalf("answer %+v", a)
	}
	if a := e.post(e.webhookURL("r"), bridgetest.JobBody(jobID, krea.StatusCompleted)).OK(t); !*a.Duplicate {
		t.Fatalf("lowercase repeat not a duplicate")
	}
	msgs := e.stored()
	if len(msgs) != 1 {
		t.Fatalf("%d stored", len(msgs))
	}
	bridgetest.CheckEvent(t, msgs[0], jobID, krea.StatusCompleted, "r", upper)
}

// TestOwnership runs against the real job ledger: foreign jobs are
// refused, terminal repeats are answered without publishing, metadata is
// carried, and a second job of a request is stored, marked extra.
func TestOwnership(t *testing.T) {
	e := newEnv(t, envOptions{realLedger: true})
	ctx := context.Background()
	rec, err := ledger.NewRecorder(e.led, nil)
	if err != nil {
		t.Fatal(err)
	}
	md := json.RawMessage(`{"user":"42"}`)

	// A job the ledger gives to another request.
	reqID, jobID := events.NewRequestID(), uuid.NewString()
	if err := e.led.RecordSubmission(ctx, ledger.Record{RequestID: events.NewRequestID(), JobID: jobID}); err != nil {
		t.Fatal(err)
	}
	r := e.post(e.webhookURL(reqID), bridgetest.JobBody(jobID, krea.StatusCompleted))
	if r.Code != http.StatusForbidden {
		t.Fatalf("foreign job: code %d", r.Code)
	}
	r.ErrMsg(t)

	// A job already terminal in the ledger, past any duplicate window.
	reqID2, jobID2 := events.NewRequestID(), uuid.NewString()
	if err := e.led.RecordSubmission(ctx, ledger.Record{RequestID: reqID2, JobID: jobID2}); err != nil {
		t.Fatal(err)
	}
	if _, err := rec.Apply(ctx, &events.Event{JobID: jobID2, RequestID: reqID2, Status: krea.StatusCompleted}); err != nil {
		t.Fatal(err)
	}
	// The bridge follows the ledger's records: it knows the job terminal
	// once the republished record has arrived (milliseconds).
	natstest.CheckFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		own, err := e.owners.Lookup(ctx, reqID2, jobID2)
		if err != nil {
			return err
		}
		if !own.Terminal {
			return errors.New("terminal record not followed yet")
		}
		return nil
	})
	a := e.post(e.webhookURL(reqID2), bridgetest.JobBody(jobID2, krea.StatusFailed)).OK(t)
	if !*a.Duplicate {
		t.Fatalf("terminal repeat: %+v", a)
	}
	if msgs := e.stored(); len(msgs) != 0 {
		t.Fatalf("%d messages stored", len(msgs))
	}
	// Terminal known, but a non-terminal status is still its own event.
	pbody := bridgetest.JobBody(jobID2, krea.StatusProcessing)
	if a := e.post(e.webhookURL(reqID2), pbody).OK(t); *a.Duplicate {
		t.Fatalf("non-terminal after terminal marked duplicate")
	}

	// The request's own job: stored with its metadata.
	reqID3, jobID3 := events.NewRequestID(), uuid.NewString()
	if err := e.led.RecordSubmission(ctx, ledger.Record{RequestID: reqID3, JobID: jobID3, Metadata: md}); err != nil {
		t.Fatal(err)
	}
	body3 := bridgetest.JobBody(jobID3, krea.StatusCompleted)
	e.post(e.webhookURL(reqID3), body3).OK(t)
	msgs := e.stored()
	if len(msgs) != 2 {
		t.Fatalf("%d messages stored", len(msgs))
	}
	bridgetest.CheckEvent(t, msgs[1], jobID3, krea.StatusCompleted, reqID3, body3)
	if got := msgs[1].Headers().Get(events.HeaderMetadata); got != string(md) {
		t.Errorf("metadata header %q", got)
	}
	if got := msgs[1].Headers().Get(events.HeaderExtraJob); got != "" {
		t.Errorf("the request's own job marked extra: %q", got)
	}
	// Its repeat is answered from the cache as a duplicate.
	if a := e.post(e.webhookURL(reqID3), body3).OK(t); !*a.Duplicate {
		t.Fatalf("repeat of a stored terminal webhook: %+v", a)
	}

	// A second job of request 3 (Krea was paid twice): stored, marked.
	extraJob := uuid.NewString()
	bodyX := bridgetest.JobBody(extraJob, krea.StatusCompleted)
	if a := e.post(e.webhookURL(reqID3), bodyX).OK(t); *a.Duplicate {
		t.Fatalf("extra job answered duplicate")
	}
	msgs = e.stored()
	if len(msgs) != 3 {
		t.Fatalf("%d messages stored", len(msgs))
	}
	bridgetest.CheckEvent(t, msgs[2], extraJob, krea.StatusCompleted, reqID3, bodyX)
	if got := msgs[2].Headers().Get(events.HeaderExtraJob); got != "true" {
		t.Errorf("extra job's %s header %q", events.HeaderExtraJob, got)
	}
	if got := msgs[2].Headers().Get(events.HeaderMetadata); got != string(md) {
		t.Errorf("extra job's metadata header %q", got)
	}
	if got := metricstest.Value(t, e.reg, ExtraJobsMetric, "source", "webhook"); got != 1 {
		t.Errorf("extra jobs counter %v, want 1", got)
	}
	if got := metricstest.Value(t, e.reg, "kreabus_bridge_webhooks_total", "outcome", OutcomeForbidden, "code", "403"); got != 1 {
		t.Errorf("forbidden counter %v", got)
	}
}

// TestLedgerUnreadable: a webhook whose owner cannot be learned gets 503
// with Retry-After and is not stored: a foreign job cannot be told from
// ours without the ledger.
func TestLedgerUnreadable(t *testing.T) {
	led := newFakeLedger()
	led.err = errors.New("nats: timeout")
	e := newEnv(t, envOptions{ledger: led})
	r := e.post(e.webhookURL("r"), bridgetest.JobBody(uuid.NewString(), krea.StatusCompleted))
	if r.Code != http.StatusServiceUnavailable || r.Header.Get("Retry-After") == "" {
		t.Fatalf("code %d, Retry-After %q", r.Code, r.Header.Get("Retry-After"))
	}
	r.ErrMsg(t)
	if msgs := e.stored(); len(msgs) != 0 {
		t.Fatalf("%d messages stored", len(msgs))
	}
}

// TestTooManyInFlight: beyond MaxInFlight the answer is 429 Retry-After.
func TestTooManyInFlight(t *testing.T) {
	led := newFakeLedger()
	led.hold = make(chan struct{})
	e := newEnv(t, envOptions{ledger: led, cfg: Config{MaxInFlight: 2}})
	done := make(chan response, 2)
	for i := 0; i < 2; i++ {
		go func() {
			done <- e.post(e.webhookURL("busy"), bridgetest.JobBody(uuid.NewString(), krea.StatusCompleted))
		}()
	}
	natstest.CheckFor(t, 10*time.Second, 5*time.Millisecond, func() error {
		if n := e.b.InFlight(); n != 2 {
			return fmt.Errorf("%d in flight", n)
		}
		return nil
	})
	if got := metricstest.Value(t, e.reg, "kreabus_bridge_requests_in_flight"); got != 2 {
		t.Errorf("in-flight gauge %v, want 2", got)
	}
	r := e.post(e.webhookURL("busy"), bridgetest.JobBody(uuid.NewString(), krea.StatusCompleted))
	if r.Code != http.StatusTooManyRequests || r.Header.Get("Retry-After") != "1" {
		t.Fatalf("code %d Retry-After %q", r.Code, r.Header.Get("Retry-After"))
	}
	r.ErrMsg(t)
	led.mu.Lock()
	close(led.hold)
	led.mu.Unlock()
	for i := 0; i < 2; i++ {
		(<-done).OK(t)
	}
	if msgs := e.stored(); len(msgs) != 2 {
		t.Fatalf("%d stored", len(msgs))
	}
}

// TestNoStream: JetStream is up but no stream captures krea.jobs: 503 with
// Retry-After after a short retry, and the owner is told.
func TestNoStream(t *testing.T) {
	e := newEnv(t, envOptions{noStream: true, cfg: Config{PublishTimeout: 20 * time.Second}})
	start := time.Now()
	r := e.post(e.webhookURL("r"), bridgetest.JobBody(uuid.NewString(), krea.StatusCompleted))
	if r.Code != http.StatusServiceUnavailable || r.Header.Get("Retry-After") == "" {
		t.Fatalf("code %d Retry-After %q", r.Code, r.Header.Get("Retry-After"))
	}
	if el := time.Since(start); el > 10*time.Second { // well before the publish timeout
		t.Errorf("503 after %v", el)
	}
	r.ErrMsg(t)
	select {
	case <-e.missing:
	default:
		t.Error("StreamMissing not called")
	}
	if got := metricstest.Value(t, e.reg, "kreabus_bridge_webhooks_total", "outcome", OutcomeUnavailable, "code", "503"); got != 1 {
		t.Errorf("unavailable counter %v", got)
	}
}

// TestNoPubAck: something receives the event but no PubAck ever comes
// (a server without JetStream, a subscriber on the subject): 503 once the
// publish timeout is over, not later.
func TestNoPubAck(t *testing.T) {
	s, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: server.RANDOM_PORT, NoLog: true, NoSigs: true})
	if err != nil {
		t.Fatal(err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("server not ready")
	}
	t.Cleanup(s.Shutdown)
	sink := natstest.Connect(t, s.ClientURL())
	got := make(chan *nats.Msg, 4)
	if _, err := sink.Subscribe("krea.jobs.>", func(m *nats.Msg) { got <- m }); err != nil {
		t.Fatal(err)
	}
	if err := sink.Flush(); err != nil {
		t.Fatal(err)
	}
	const timeout = 400 * time.Millisecond
	e := newEnv(t, envOptions{natsURL: s.ClientURL(), noStream: true, cfg: Config{PublishTimeout: timeout}})
	start := time.Now()
	r := e.post(e.webhookURL("r"), bridgetest.JobBody(uuid.NewString(), krea.StatusCompleted))
	el := time.Since(start)
	if r.Code != http.StatusServiceUnavailable || r.Header.Get("Retry-After") != "2" {
		t.Fatalf("code %d Retry-After %q", r.Code, r.Header.Get("Retry-After"))
	}
	if el < timeout || el > timeout+5*time.Second {
		t.Errorf("503 after %v, want about %v", el, timeout)
	}
	select {
	case <-got:
	case <-time.After(5 * time.Second):
		t.Error("the event was never sent")
	}
}

// TestBurst: thousands of webhooks with repeats from many goroutines over
// keep-alive connections; each job stored exactly once, every 200 backed
// by a stored message.
func TestBurst(t *testing.T) {
	const (
		unique  = 2100
		repeats = 900
		workers = 48
	)
	e := newEnv(t, envOptions{})
	type hook struct {
		reqID, jobID string
		status       krea.Status
		body         []byte
	}
	rng := rand.New(rand.NewPCG(1, 2))
	hooks := make([]hook, 0, unique+repeats)
	for i := 0; i < unique; i++ {
		st := krea.StatusCompleted
		switch i % 10 {
		case 7:
			st = krea.StatusFailed
		case 8:
			st = krea.StatusCancelled
		}
		reqID, jobID := fmt.Sprintf("req-%d", i), uuid.NewString()
		hooks = append(hooks, hook{reqID, jobID, st, bridgetest.JobBody(jobID, st)})
	}
	for i := 0; i < repeats; i++ {
		h := hooks[rng.IntN(unique)]
		if i%5 == 0 { // a different terminal status for the same job
			orig := h.status
			h.status = krea.StatusFailed
			if orig == krea.StatusFailed {
				h.status = krea.StatusCancelled
			}
			h.body = bridgetest.JobBody(h.jobID, h.status)
		}
		hooks = append(hooks, h)
	}
	rng.Shuffle(len(hooks), func(i, j int) { hooks[i], hooks[j] = hooks[j], hooks[i] })

	type result struct {
		h    hook
		code int
		dup  bool
	}
	results := make([]result, len(hooks))
	var next sync.Mutex
	idx := 0
	var wg sync.WaitGroup
	start := time.Now()
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				next.Lock()
				i := idx
				idx++
				next.Unlock()
				if i >= len(hooks) {
					return
				}
				h := hooks[i]
				req, _ := http.NewRequest(http.MethodPost, e.webhookURL(h.reqID), bytes.NewReader(h.body))
				req.Header.Set("Content-Type", "application/json")
				res, err := e.client.Do(req)
				if err != nil {
					t.Errorf("post: %v", err)
					return
				}
				var a okAnswer
				_ = json.NewDecoder(res.Body).Decode(&a)
				_, _ = io.Copy(io.Discard, res.Body)
				res.Body.Close()
				results[i] = result{h: h, code: res.StatusCode, dup: a.Duplicate != nil && *a.Duplicate}
			}
		}()
	}
	wg.Wait()
	el := time.Since(start)
	t.Logf("%d webhooks in %v (%.0f/s) over %d connections", len(hooks), el, float64(len(hooks))/el.Seconds(), e.conns.count())
	if t.Failed() {
		return
	}
	// The transport may dial a spare connection now and then, but
	// connections are reused: far fewer than requests.
	if n := e.conns.count(); n > 2*workers {
		t.Errorf("%d connections for %d workers and %d requests: keep-alive not used", n, workers, len(hooks))
	}

	msgs := e.stored()
	byJob := map[string][]int{}
	for i, m := range msgs {
		byJob[m.Headers().Get(events.HeaderJobID)] = append(byJob[m.Headers().Get(events.HeaderJobID)], i)
	}
	if len(msgs) != unique {
		t.Errorf("%d messages stored for %d jobs", len(msgs), unique)
	}
	fresh := map[string]int{}
	for _, r := range results {
		if r.code != http.StatusOK {
			t.Errorf("job %s: code %d", r.h.jobID, r.code)
			continue
		}
		idx := byJob[r.h.jobID]
		if len(idx) != 1 {
			t.Errorf("job %s stored %d times", r.h.jobID, len(idx))
			continue
		}
		if !r.dup {
			fresh[r.h.jobID]++
			// The one non-duplicate answer is the message stored.
			bridgetest.CheckEvent(t, msgs[idx[0]], r.h.jobID, r.h.status, r.h.reqID, r.h.body)
		}
	}
	for jobID := range byJob {
		if fresh[jobID] != 1 {
			t.Errorf("job %s: %d non-duplicate answers", jobID, fresh[jobID])
		}
	}
	if got := metricstest.Value(t, e.reg, "kreabus_bridge_webhooks_total", "outcome", "stored", "code", "200"); got != unique {
		t.Errorf("stored counter %v, want %d", got, unique)
	}
	if got := metricstest.Value(t, e.reg, "kreabus_bridge_duplicates_total"); got != repeats {
		t.Errorf("duplicates counter %v, want %d", got, repeats)
	}
}

// TestShutdownInFlight: Shutdown lets a webhook in flight finish (and
// store), refuses new connections, then returns.
func TestShutdownInFlight(t *testing.T) {
	led := newFakeLedger()
	led.hold = make(chan struct{})
	e := newEnv(t, envOptions{ledger: led})
	body := bridgetest.JobBody(uuid.NewString(), krea.StatusCompleted)
	done := make(chan response, 1)
	go func() { done <- e.post(e.webhookURL("inflight"), body) }()
	select {
	case <-led.entered:
	case <-time.After(10 * time.Second):
		t.Fatal("webhook never reached the ledger")
	}
	shut := make(chan error, 1)
	go func() { shut <- e.b.Shutdown(t.Context()) }()
	natstest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		c, err := net.Dial("tcp", strings.TrimPrefix(e.base, "http://"))
		if err == nil {
			c.Close()
			return fmt.Errorf("still accepting connections")
		}
		return nil
	})
	select {
	case err := <-shut:
		t.Fatalf("Shutdown returned %v with a webhook in flight", err)
	default:
	}
	led.mu.Lock()
	close(led.hold)
	led.mu.Unlock()
	(<-done).OK(t)
	if err := <-shut; err != nil {
		t.Fatal(err)
	}
	if msgs := e.stored(); len(msgs) != 1 || !bytes.Equal(msgs[0].Data(), body) {
		t.Fatalf("%d stored", len(msgs))
	}
}

// TestServerHardened: the http.Server has every timeout and limit set.
func TestServerHardened(t *testing.T) {
	b, err := New(Config{Secret: "s"}, Deps{Conn: natstest.Connect(t, natstest.RunServer(t).ClientURL())})
	if err != nil {
		t.Fatal(err)
	}
	s := b.Server()
	if s.ReadHeaderTimeout != DefaultReadHeaderTimeout || s.ReadTimeout != DefaultReadTimeout ||
		s.WriteTimeout != DefaultWriteTimeout || s.IdleTimeout != DefaultIdleTimeout ||
		s.MaxHeaderBytes != DefaultMaxHeaderBytes || s.Addr != DefaultListen {
		t.Errorf("server settings %+v", s)
	}
}

// Krea does not document its webhook's Content-Type: a JSON body without
// one is stored (a present non-JSON type is still 415, see TestRejected).
func TestNoContentTypeStored(t *testing.T) {
	e := newEnv(t, envOptions{})
	jobID := uuid.NewString()
	body := bridgetest.JobBody(jobID, krea.StatusCompleted)
	req, _ := http.NewRequest(http.MethodPost, e.webhookURL("no-ct"), bytes.NewReader(body))
	r := e.do(req)
	if r.Code != http.StatusOK {
		t.Fatalf("code %d %s, want 200", r.Code, r.Body)
	}
	msgs := e.stored()
	if len(msgs) != 1 {
		t.Fatalf("%d stored, want 1", len(msgs))
	}
	bridgetest.CheckEvent(t, msgs[0], jobID, krea.StatusCompleted, "no-ct", body)
}

// TestTraceParentChecked: a traceparent events.ValidTraceParent refuses
// (here an all-zero trace-id, which W3C Trace Context declares invalid) is
// not carried onto the stored event; the webhook is stored all the same.
func TestTraceParentChecked(t *testing.T) {
	e := newEnv(t, envOptions{})
	reqID := events.NewRequestID()
	jobID := uuid.NewString()
	body := bridgetest.JobBody(jobID, krea.StatusCompleted)
	e.post(e.webhookURL(reqID), body, "traceparent", "00-00000000000000000000000000000000-00f067aa0ba902b7-01").OK(t)
	msgs := e.stored()
	if len(msgs) != 1 {
		t.Fatalf("%d messages stored, want 1", len(msgs))
	}
	bridgetest.CheckEvent(t, msgs[0], jobID, krea.StatusCompleted, reqID, body)
	if got := msgs[0].Headers().Get(events.HeaderTraceParent); got != "" {
		t.Errorf("traceparent %q carried", got)
	}
}
