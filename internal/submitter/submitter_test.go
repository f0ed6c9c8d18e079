package submitter

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kreabus/kreabus/internal/admin"
	"github.com/kreabus/kreabus/internal/ledger"
	"github.com/kreabus/kreabus/internal/natstest"
	"github.com/kreabus/kreabus/pkg/events"
	"github.com/kreabus/kreabus/pkg/krea"
	"github.com/kreabus/kreabus/pkg/krea/kreatest"
)

const traceParent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

// TestChaosExactlyOnce pushes a few hundred requests, a tenth of them
// invalid, through a simulator answering 429s, 5xx and slow answers, with
// the submitter stopped and restarted mid-run on the same durable. Each
// good request must reach the API exactly once and end in one submitted
// event; each bad one in one rejected event.
func TestChaosExactlyOnce(t *testing.T) {
	e := newEnv(t, kreatest.Config{
		Concurrency: 1000,
		Seed:        42,
		Faults: kreatest.Faults{
			Rate429:       0.15,
			Rate5xx:       0.10,
			Latency:       2 * time.Millisecond,
			LatencyJitter: 60 * time.Millisecond,
		},
	})
	cfg := e.config()
	cfg.Concurrency = 8

	const total = 300
	var good []string
	bad := map[string]string{} // request ID -> what is wrong
	var reqs []*events.Request
	for i := range total {
		id := fmt.Sprintf("req-%03d", i)
		r := goodRequest(id)
		switch {
		case i%10 == 3:
			r.Path = "/v1/admin/delete-everything"
			bad[id] = "path"
		case i%20 == 7:
			r.Input = json.RawMessage(`["not", "an", "object"]`)
			bad[id] = "input"
		case i%30 == 11:
			r.Metadata = json.RawMessage(`{"big":"` + strings.Repeat("x", events.MaxMetadataSize) + `"}`)
			bad[id] = "metadata"
		default:
			good = append(good, id)
		}
		reqs = append(reqs, r)
	}
	// Half the requests are published with a traceparent.
	first := e.start(cfg)
	for i, r := range reqs {
		data, _ := json.Marshal(r)
		hdr := nats.Header{}
		if i%2 == 0 {
			hdr.Set(events.HeaderTraceParent, traceParent)
		}
		if _, err := e.js.PublishMsgAsync(&nats.Msg{Subject: "krea.requests.image", Data: data, Header: hdr}); err != nil {
			t.Fatal(err)
		}
	}
	<-e.js.PublishAsyncComplete()

	// Stop mid-run and start again on the same durable.
	natstest.CheckFor(t, 60*time.Second, 10*time.Millisecond, func() error {
		if n := e.sim.Submissions(); n < total/4 {
			return fmt.Errorf("%d submissions so far", n)
		}
		return nil
	})
	first.stop(t)
	t.Logf("stopped after %d submissions; restarting", e.sim.Submissions())
	e.start(cfg)

	natstest.CheckFor(t, 60*time.Second, 50*time.Millisecond, func() error {
		sub, rej := e.countStatus("submitted"), e.countStatus("rejected")
		if sub != len(good) || rej != len(bad) {
			return fmt.Errorf("%d submitted (want %d), %d rejected (want %d)", sub, len(good), rej, len(bad))
		}
		if n := e.requestsLeft(); n != 0 {
			return fmt.Errorf("%d requests left in the stream", n)
		}
		return nil
	})

	evs := byRequest(e.events())
	for _, id := range good {
		if n := e.sim.SubmissionsFor(e.webhookURL(id)); n != 1 {
			t.Errorf("%s reached the API %d times, want 1", id, n)
		}
		got := evs[id]
		if len(got["submitted"]) != 1 || len(got["rejected"]) != 0 {
			t.Errorf("%s: %d submitted, %d rejected events; want 1, 0", id, len(got["submitted"]), len(got["rejected"]))
			continue
		}
		ev := got["submitted"][0]
		if ev.Source != events.SourceSubmitter || ev.Header.Get(events.HeaderMsgID) != ev.JobID+":submitted" ||
			ev.Header.Get(events.HeaderCEType) != "ai.krea.job.submitted" || ev.Job.JobID != ev.JobID {
			t.Errorf("%s: bad submitted event headers %v", id, ev.Header)
		}
		if want := `{"user":"42","n":"` + id + `"}`; string(ev.Metadata) != want {
			t.Errorf("%s: metadata %s, want %s", id, ev.Metadata, want)
		}
		if rec, err := e.ledger.Request(context.Background(), id); err != nil || rec.JobID != ev.JobID {
			t.Errorf("%s: ledger has %+v, %v; want job %s", id, rec, err, ev.JobID)
		}
	}
	for id, what := range bad {
		if n := e.sim.AttemptsByWebhookURL()[e.webhookURL(id)]; n != 0 {
			t.Errorf("invalid %s (%s) reached the API %d times", id, what, n)
		}
		got := evs[id]
		if len(got["rejected"]) != 1 || len(got["submitted"]) != 0 {
			t.Errorf("%s: %d rejected, %d submitted events; want 1, 0", id, len(got["rejected"]), len(got["submitted"]))
			continue
		}
		ev := got["rejected"][0]
		if !strings.Contains(ev.Reason, what) || ev.Header.Get(events.HeaderMsgID) != "rejected:"+id {
			t.Errorf("%s: rejected with reason %q, msg id %q", id, ev.Reason, ev.Header.Get(events.HeaderMsgID))
		}
		var body events.Rejection
		if err := json.Unmarshal(ev.Raw, &body); err != nil || body.RequestID != id || body.Kind != RejectInvalid || body.Reason != ev.Reason {
			t.Errorf("%s: rejected body %s (%v)", id, ev.Raw, err)
		}
	}
	// traceparent carried on.
	for i, r := range reqs {
		for _, ev := range evs[r.RequestID]["submitted"] {
			if got := ev.Header.Get(events.HeaderTraceParent); (i%2 == 0) != (got == traceParent) {
				t.Errorf("%s: traceparent %q", r.RequestID, got)
			}
		}
	}
	if m := e.maxInflight.Load(); m > int64(cfg.Concurrency) {
		t.Errorf("%d API calls in flight at once, limit %d", m, cfg.Concurrency)
	}
	attempts := 0
	for _, n := range e.sim.AttemptsByWebhookURL() {
		attempts += n
	}
	t.Logf("%d good, %d bad requests; %d API calls for %d jobs; max in flight %d; retries %v; 429s %v",
		len(good), len(bad), attempts, e.sim.Submissions(), e.maxInflight.Load(),
		e.metric("kreabus_submitter_retries_total"), e.metric("kreabus_submitter_api_calls_total", "code", "429"))
	if e.metric("kreabus_submitter_retries_total") == 0 || e.metric("kreabus_submitter_api_calls_total", "code", "429") == 0 {
		t.Error("the faults caused no retries: the test proves nothing")
	}
	if got := e.metric("kreabus_submitter_rejections_total", "reason", RejectInvalid); got != float64(len(bad)) {
		t.Errorf("rejections_total{invalid_request} = %v, want %d", got, len(bad))
	}
}

// TestOutOfRetries: a request failing with 5xx on every call ends in one
// rejected event after MaxDeliveries calls. A 5xx leaves the call's outcome
// unknown; each time the job listing proves no job was made before the
// request is sent again.
func TestOutOfRetries(t *testing.T) {
	e := newEnv(t, kreatest.Config{})
	e.deny.Store(http.StatusBadGateway)
	cfg := e.config()
	cfg.MaxDeliveries = 3
	e.start(cfg)
	e.publishAsync([]*events.Request{goodRequest("doomed")})

	natstest.CheckFor(t, 20*time.Second, 20*time.Millisecond, func() error {
		if n := e.countStatus("rejected"); n != 1 {
			return fmt.Errorf("%d rejected events", n)
		}
		return nil
	})
	ev := byRequest(e.events())["doomed"]["rejected"][0]
	if !strings.Contains(ev.Reason, "out of retries after 3 attempts") {
		t.Errorf("reason %q", ev.Reason)
	}
	var body events.Rejection
	_ = json.Unmarshal(ev.Raw, &body)
	if body.Kind != RejectOutOfRetries || body.Path != "/generate/image/bfl/flux-1-dev" {
		t.Errorf("body %s", ev.Raw)
	}
	if n := e.metric("kreabus_submitter_api_calls_total", "code", "502"); n != 3 {
		t.Errorf("%v API calls, want 3", n)
	}
	if string(ev.Metadata) != `{"user":"42","n":"doomed"}` {
		t.Errorf("metadata %s", ev.Metadata)
	}
	natstest.CheckFor(t, 5*time.Second, 20*time.Millisecond, func() error {
		if n := e.requestsLeft(); n != 0 {
			return fmt.Errorf("%d requests left", n)
		}
		return nil
	})
	if got := e.metric("kreabus_submitter_retries_total"); got != 2 {
		t.Errorf("retries_total = %v, want 2", got)
	}
	if got := e.metric("kreabus_submitter_uncertain_total", "outcome", UncertainNoJob); got != 3 {
		t.Errorf("uncertain_total{no_job} = %v, want 3", got)
	}
}

// TestRetryAfterHonoured: a 429 with Retry-After holds the redelivery (and
// every new call) for at least that long.
func TestRetryAfterHonoured(t *testing.T) {
	e := newEnv(t, kreatest.Config{Faults: kreatest.Faults{Rate429: 1, RetryAfter: time.Second}})
	cfg := e.config()
	cfg.MaxDeliveries = 2
	e.start(cfg)
	e.publishAsync([]*events.Request{goodRequest("after")})
	natstest.CheckFor(t, 20*time.Second, 20*time.Millisecond, func() error {
		if n := e.countStatus("rejected"); n != 1 {
			return fmt.Errorf("%d rejected events", n)
		}
		return nil
	})
	e.mu.Lock()
	times := append([]time.Time(nil), e.callTimes...)
	e.mu.Unlock()
	if len(times) != 2 {
		t.Fatalf("%d calls, want 2", len(times))
	}
	if gap := times[1].Sub(times[0]); gap < time.Second {
		t.Errorf("redelivered %v after a 429 with Retry-After: 1", gap)
	}
	if ev := byRequest(e.events())["after"]["rejected"][0]; !strings.Contains(ev.Reason, "429") {
		t.Errorf("reason %q", ev.Reason)
	}
}

// TestAPIRefusals: 410 rejects with the replacement, 400 with the API's
// message; neither is retried.
func TestAPIRefusals(t *testing.T) {
	e := newEnv(t, kreatest.Config{
		Retired: map[string]kreatest.Retirement{
			"/generate/image/bfl/flux-1": {Replacement: "/generate/image/bfl/flux-1-dev", SunsetDate: "2026-01-01"},
		},
		CheckInput: func(_ string, input json.RawMessage) error {
			if strings.Contains(string(input), "steps") {
				return errors.New("steps: must be at most 100")
			}
			return nil
		},
	})
	e.start(e.config())
	retired := goodRequest("retired")
	retired.Path = "/generate/image/bfl/flux-1"
	badInput := goodRequest("bad-input")
	badInput.Input = json.RawMessage(`{"prompt":"x","steps":1000}`)
	e.publishAsync([]*events.Request{retired, badInput})

	natstest.CheckFor(t, 20*time.Second, 20*time.Millisecond, func() error {
		if n := e.countStatus("rejected"); n != 2 {
			return fmt.Errorf("%d rejected events", n)
		}
		return nil
	})
	evs := byRequest(e.events())
	ev := evs["retired"]["rejected"][0]
	var body events.Rejection
	_ = json.Unmarshal(ev.Raw, &body)
	if body.Kind != RejectModelUnavailable || body.HTTPStatus != 410 || body.Replacement != "/generate/image/bfl/flux-1-dev" ||
		!strings.Contains(ev.Reason, "replacement: /generate/image/bfl/flux-1-dev") || !strings.Contains(string(body.Error), "model_unavailable") {
		t.Errorf("410: reason %q, body %s", ev.Reason, ev.Raw)
	}
	ev = evs["bad-input"]["rejected"][0]
	body = events.Rejection{}
	_ = json.Unmarshal(ev.Raw, &body)
	if body.Kind != RejectRefused || body.HTTPStatus != 400 || !strings.Contains(ev.Reason, "steps: must be at most 100") {
		t.Errorf("400: reason %q, body %s", ev.Reason, ev.Raw)
	}
	for _, id := range []string{"retired", "bad-input"} {
		if n := e.sim.AttemptsByWebhookURL()[e.webhookURL(id)]; n != 1 {
			t.Errorf("%s: %d API calls, want 1", id, n)
		}
	}
	if e.metric("kreabus_submitter_retries_total") != 0 {
		t.Error("a refusal was retried")
	}
}

// TestAccountErrorPauses: 401 pauses all submission (readyz 503, metric),
// nothing is rejected, and fixing the account resumes it.
func TestAccountErrorPauses(t *testing.T) {
	e := newEnv(t, kreatest.Config{})
	e.deny.Store(http.StatusUnauthorized)
	cfg := e.config()
	// One at a time: with more, calls already past the pause check when it
	// is read would be counted as probes.
	cfg.Concurrency = 1
	r := e.start(cfg)
	adm := admin.New(testLogger(t))
	adm.AddCheck("submitter", r.s.ReadyCheck())
	srv := httptest.NewServer(adm.Handler())
	defer srv.Close()
	readyz := func() (int, string) {
		resp, err := http.Get(srv.URL + "/readyz")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	natstest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if code, body := readyz(); code != http.StatusOK {
			return fmt.Errorf("readyz before any error: %d %s", code, body)
		}
		return nil
	})

	var reqs []*events.Request
	for i := range 20 {
		reqs = append(reqs, goodRequest(fmt.Sprintf("acct-%d", i)))
	}
	e.publishAsync(reqs)
	natstest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if !r.s.Paused() {
			return errors.New("not paused")
		}
		return nil
	})
	code, body := readyz()
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "paused") || !strings.Contains(body, "401") {
		t.Errorf("readyz while paused: %d %s", code, body)
	}
	if e.metric("kreabus_submitter_paused") != 1 || e.metric("kreabus_submitter_pauses_total") != 1 {
		t.Errorf("paused gauge %v, pauses %v", e.metric("kreabus_submitter_paused"), e.metric("kreabus_submitter_pauses_total"))
	}
	// While paused only probes reach the API: a few calls, not 20 per round.
	callsAtPause := e.calls.Load()
	denied := e.metric("kreabus_submitter_api_calls_total", "code", "401")
	natstest.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		if e.metric("kreabus_submitter_api_calls_total", "code", "401") < denied+2 {
			return errors.New("waiting for two probes")
		}
		return nil
	})
	if probes := e.calls.Load() - callsAtPause; probes > 4 {
		t.Errorf("%d calls while paused (probe backoff 100-400ms), want only probes", probes)
	}
	if n := e.countStatus("rejected"); n != 0 {
		t.Fatalf("%d requests rejected for an account error", n)
	}

	// The operator fixes the account.
	e.deny.Store(0)
	natstest.CheckFor(t, 20*time.Second, 20*time.Millisecond, func() error {
		if n := e.countStatus("submitted"); n != 20 {
			return fmt.Errorf("%d submitted", n)
		}
		return nil
	})
	if r.s.Paused() || e.metric("kreabus_submitter_paused") != 0 {
		t.Error("still paused")
	}
	if code, body := readyz(); code != http.StatusOK {
		t.Errorf("readyz after resume: %d %s", code, body)
	}
	if n := e.countStatus("rejected"); n != 0 {
		t.Errorf("%d rejected", n)
	}
	for _, r := range reqs {
		if n := e.sim.SubmissionsFor(e.webhookURL(r.RequestID)); n != 1 {
			t.Errorf("%s: %d jobs", r.RequestID, n)
		}
	}
}

// TestOutOfCreditsPauses: 402 from the simulator pauses too and recovers.
func TestOutOfCreditsPauses(t *testing.T) {
	e := newEnv(t, kreatest.Config{Faults: kreatest.Faults{OutOfCredits: true}})
	cfg := e.config()
	// Long enough to see the consumer paused on the server.
	cfg.PauseBackoffMin, cfg.PauseBackoffMax = 2*time.Second, 2*time.Second
	r := e.start(cfg)
	e.publishAsync([]*events.Request{goodRequest("credits-1"), goodRequest("credits-2")})
	natstest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if !r.s.Paused() {
			return errors.New("not paused")
		}
		return nil
	})
	// The pause is JetStream's consumer pause, as `nats consumer info`
	// shows it.
	c, err := e.js.Consumer(context.Background(), events.StreamRequests, DefaultConsumer)
	if err != nil {
		t.Fatal(err)
	}
	if ci := c.CachedInfo(); !ci.Paused || ci.Config.PauseUntil == nil || ci.PauseRemaining <= 0 {
		t.Errorf("requests consumer not paused on the server: paused %v until %v remaining %v",
			ci.Paused, ci.Config.PauseUntil, ci.PauseRemaining)
	}
	e.sim.SetFaults(kreatest.Faults{})
	natstest.CheckFor(t, 20*time.Second, 20*time.Millisecond, func() error {
		if n := e.countStatus("submitted"); n != 2 {
			return fmt.Errorf("%d submitted", n)
		}
		return nil
	})
	if r.s.Paused() || e.countStatus("rejected") != 0 {
		t.Error("still paused or rejected")
	}
}

// TestRedeliveryAfterSuccess: a request the ledger already holds (the API
// accepted it, then the ack was lost) is not sent again; its submitted event
// is published (again) and the request acked.
func TestRedeliveryAfterSuccess(t *testing.T) {
	e := newEnv(t, kreatest.Config{})
	const jobID = "1f0c3a52-7e0b-4c59-9a51-0d1c9f5b8e11"
	submittedAt := time.Date(2026, 2, 13, 2, 20, 58, 265e6, time.UTC)
	if err := e.ledger.RecordSubmission(context.Background(), ledger.Record{
		RequestID: "already", JobID: jobID, Path: "/generate/image/bfl/flux-1-dev",
		Metadata: json.RawMessage(`{"user":"42","n":"already"}`), SubmittedAt: submittedAt,
	}); err != nil {
		t.Fatal(err)
	}
	e.start(e.config())
	e.publishAsync([]*events.Request{goodRequest("already"), goodRequest("fresh")})
	natstest.CheckFor(t, 20*time.Second, 20*time.Millisecond, func() error {
		if n := e.countStatus("submitted"); n != 2 {
			return fmt.Errorf("%d submitted", n)
		}
		if n := e.requestsLeft(); n != 0 {
			return fmt.Errorf("%d requests left", n)
		}
		return nil
	})
	if n := e.sim.AttemptsByWebhookURL()[e.webhookURL("already")]; n != 0 {
		t.Errorf("ledgered request sent to the API %d times", n)
	}
	if n := e.sim.SubmissionsFor(e.webhookURL("fresh")); n != 1 {
		t.Errorf("fresh request: %d jobs", n)
	}
	ev := byRequest(e.events())["already"]["submitted"][0]
	if ev.JobID != jobID || ev.Job.JobID != jobID || ev.Header.Get(events.HeaderMsgID) != jobID+":submitted" ||
		ev.Job.CreatedAt == nil || !ev.Job.CreatedAt.Equal(submittedAt) || string(ev.Metadata) != `{"user":"42","n":"already"}` {
		t.Errorf("republished event: headers %v body %s", ev.Header, ev.Raw)
	}
	if e.metric("kreabus_submitter_republished_total") != 1 {
		t.Error("republished_total is not 1")
	}
}

// TestRedeliveryDeduplicated: a request processed, then published again
// (another message, same request ID) is not sent twice and its event is
// stored once.
func TestRedeliveryDeduplicated(t *testing.T) {
	e := newEnv(t, kreatest.Config{})
	e.start(e.config())
	e.publishAsync([]*events.Request{goodRequest("twice")})
	natstest.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		if n := e.countStatus("submitted"); n != 1 {
			return fmt.Errorf("%d submitted", n)
		}
		return nil
	})
	e.publishAsync([]*events.Request{goodRequest("twice")})
	natstest.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		if e.metric("kreabus_submitter_republished_total") != 1 {
			return errors.New("not republished yet")
		}
		return nil
	})
	if n := e.countStatus("submitted"); n != 1 {
		t.Errorf("%d submitted events stored, want 1 (de-duplicated)", n)
	}
	if n := e.sim.AttemptsByWebhookURL()[e.webhookURL("twice")]; n != 1 {
		t.Errorf("%d API calls", n)
	}
}

// TestInvalidBodies: bodies that are not requests at all, or lack a usable
// request ID, end in one rejected event under an ID derived from the
// message; a request without request_id is submitted under a derived one.
func TestInvalidBodies(t *testing.T) {
	e := newEnv(t, kreatest.Config{})
	e.start(e.config())
	e.publishRaw("krea.requests.x", []byte(`not json`), nil)
	e.publishRaw("krea.requests.x", []byte(`{"request_id":"bad id!","path":"/generate/image/bfl/flux-1-dev","input":{}}`), nil)
	e.publishRaw("krea.requests.x", []byte(`{"path":"/generate/image/bfl/flux-1-dev","input":{"prompt":"p"},"metadata":{"k":"v"}}`),
		nats.Header{events.HeaderTraceParent: []string{traceParent}})
	natstest.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		if r, s := e.countStatus("rejected"), e.countStatus("submitted"); r != 2 || s != 1 {
			return fmt.Errorf("%d rejected, %d submitted", r, s)
		}
		return nil
	})
	for _, ev := range e.events() {
		if _, err := uuid.Parse(ev.RequestID); err != nil {
			t.Errorf("event request id %q is not a derived UUID", ev.RequestID)
		}
		switch ev.Status {
		case events.StatusRejected:
			if ev.Header.Get(events.HeaderMsgID) != "rejected:"+ev.RequestID {
				t.Errorf("msg id %q", ev.Header.Get(events.HeaderMsgID))
			}
			if !strings.Contains(ev.Reason, "body") && !strings.Contains(ev.Reason, `"bad id!"`) {
				t.Errorf("reason %q", ev.Reason)
			}
		case events.StatusSubmitted:
			if string(ev.Metadata) != `{"k":"v"}` || ev.Header.Get(events.HeaderTraceParent) != traceParent {
				t.Errorf("submitted event headers %v", ev.Header)
			}
			if n := e.sim.SubmissionsFor(e.webhookURL(ev.RequestID)); n != 1 {
				t.Errorf("%d jobs for the derived request ID", n)
			}
		}
	}
}

// TestRateLimit: KREABUS_SUBMIT_RATE bounds API calls per second.
func TestRateLimit(t *testing.T) {
	e := newEnv(t, kreatest.Config{Concurrency: 1000})
	cfg := e.config()
	cfg.Concurrency = 16
	cfg.Rate = 25
	var reqs []*events.Request
	for i := range 40 {
		reqs = append(reqs, goodRequest(fmt.Sprintf("rate-%d", i)))
	}
	e.publishAsync(reqs)
	e.start(cfg)
	natstest.CheckFor(t, 20*time.Second, 20*time.Millisecond, func() error {
		if n := e.countStatus("submitted"); n != len(reqs) {
			return fmt.Errorf("%d submitted", n)
		}
		return nil
	})
	e.mu.Lock()
	times := append([]time.Time(nil), e.callTimes...)
	e.mu.Unlock()
	elapsed := times[len(times)-1].Sub(times[0])
	// n calls at r/s with a burst of 1 need (n-1)/r; allow timer slack.
	// Calls are timed at the proxy, a little after the limiter let them go:
	// allow for that jitter.
	minimum := time.Duration(float64(len(times)-1)/cfg.Rate*float64(time.Second)) - 150*time.Millisecond
	if elapsed < minimum {
		t.Errorf("%d calls in %v: faster than %v/s (minimum %v)", len(times), elapsed, cfg.Rate, minimum)
	}
	// Any one-second window holds at most rate+1 calls, plus half the rate
	// for calls the proxy saw bunched by varying latency on a loaded machine.
	for i := range times {
		n := 0
		for j := i; j < len(times) && times[j].Sub(times[i]) < time.Second; j++ {
			n++
		}
		if n > int(cfg.Rate*1.5)+1 {
			t.Errorf("%d calls within one second from call %d", n, i)
			break
		}
	}
	t.Logf("%d calls in %v (%.1f/s, limit %v/s)", len(times), elapsed, float64(len(times)-1)/elapsed.Seconds(), cfg.Rate)
}

// TestConcurrencyBound: never more calls in flight than configured, and
// the bound is actually reached.
func TestConcurrencyBound(t *testing.T) {
	// Calls long enough that all five slots fill even when goroutines start slowly.
	e := newEnv(t, kreatest.Config{Concurrency: 1000, Faults: kreatest.Faults{Latency: 300 * time.Millisecond}})
	cfg := e.config()
	cfg.Concurrency = 5
	var reqs []*events.Request
	for i := range 60 {
		reqs = append(reqs, goodRequest(fmt.Sprintf("conc-%d", i)))
	}
	e.publishAsync(reqs)
	e.start(cfg)
	natstest.CheckFor(t, 20*time.Second, 20*time.Millisecond, func() error {
		if n := e.countStatus("submitted"); n != len(reqs) {
			return fmt.Errorf("%d submitted", n)
		}
		return nil
	})
	if m := e.maxInflight.Load(); m != int64(cfg.Concurrency) {
		t.Errorf("max %d calls in flight, want exactly %d", m, cfg.Concurrency)
	}
}

// TestGracefulStop: calls in flight when Run's context ends finish, publish
// their events and ack their requests before Run returns.
func TestGracefulStop(t *testing.T) {
	e := newEnv(t, kreatest.Config{Concurrency: 1000, Faults: kreatest.Faults{Latency: 400 * time.Millisecond}})
	cfg := e.config()
	cfg.Concurrency = 6
	var reqs []*events.Request
	for i := range 6 {
		reqs = append(reqs, goodRequest(fmt.Sprintf("stop-%d", i)))
	}
	r := e.start(cfg)
	e.publishAsync(reqs)
	natstest.CheckFor(t, 10*time.Second, 5*time.Millisecond, func() error {
		if n := e.inflight.Load(); n != 6 {
			return fmt.Errorf("%d in flight", n)
		}
		return nil
	})
	r.stop(t)
	// Everything is settled by the time Run returned.
	if n := e.countStatus("submitted"); n != 6 {
		t.Errorf("%d submitted events after stop, want 6", n)
	}
	if n := e.requestsLeft(); n != 0 {
		t.Errorf("%d requests left after stop", n)
	}
	if n := e.sim.Submissions(); n != 6 {
		t.Errorf("%d jobs", n)
	}
}

// TestThrottleSlowsDown: a storm of 429s halves the concurrency limit, and
// it recovers once the storm ends.
func TestThrottleSlowsDown(t *testing.T) {
	e := newEnv(t, kreatest.Config{Concurrency: 1000, Faults: kreatest.Faults{Rate429: 1, Latency: 5 * time.Millisecond}})
	cfg := e.config()
	cfg.Concurrency = 16
	r := e.start(cfg)
	var reqs []*events.Request
	for i := range 40 {
		reqs = append(reqs, goodRequest(fmt.Sprintf("thr-%d", i)))
	}
	e.publishAsync(reqs)
	natstest.CheckFor(t, 10*time.Second, 5*time.Millisecond, func() error {
		if l := r.s.gate.Limit(); l != 1 {
			return fmt.Errorf("limit %d", l)
		}
		return nil
	})
	if g := e.metric("kreabus_submitter_concurrency_limit"); g > 2 {
		t.Errorf("limit gauge %v", g)
	}
	e.sim.SetFaults(kreatest.Faults{Latency: 5 * time.Millisecond})
	natstest.CheckFor(t, 30*time.Second, 20*time.Millisecond, func() error {
		if n := e.countStatus("submitted"); n != len(reqs) {
			return fmt.Errorf("%d submitted", n)
		}
		return nil
	})
	if l := r.s.gate.Limit(); l < 2 {
		t.Errorf("limit %d after successes, want it growing again", l)
	}
}

// TestConsumerSetup: the durable is created with explicit acks and an ack
// wait above the API timeout; a missing one with creation off is an error.
func TestConsumerSetup(t *testing.T) {
	e := newEnv(t, kreatest.Config{})
	cfg := e.config()
	cfg.Create = false
	s, err := New(cfg, Deps{JS: e.js, Ledger: e.ledger})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.Run(ctx); err == nil || !strings.Contains(err.Error(), "creation is off") {
		t.Errorf("Run without consumer and creation off: %v", err)
	}

	// Another consumer already takes the whole work queue: a setup error,
	// not an endless retry.
	if _, err := e.js.CreateConsumer(ctx, events.StreamRequests, jetstream.ConsumerConfig{
		Durable: "someone-else", AckPolicy: jetstream.AckExplicitPolicy,
	}); err != nil {
		t.Fatal(err)
	}
	cfg.Create = true
	s, _ = New(cfg, Deps{JS: e.js, Ledger: e.ledger})
	if err := s.Run(ctx); err == nil || !errors.Is(err, errConsumerSetup) {
		t.Errorf("Run beside another work-queue consumer: %v", err)
	} else {
		t.Logf("as expected: %v", err)
	}
	if err := s.ReadyCheck()(ctx); err == nil {
		t.Error("ready without a consumer")
	}
	if err := e.js.DeleteConsumer(ctx, events.StreamRequests, "someone-else"); err != nil {
		t.Fatal(err)
	}

	r := e.start(cfg)
	natstest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if err := r.s.ReadyCheck()(ctx); err != nil {
			return err
		}
		c, err := e.js.Consumer(ctx, events.StreamRequests, DefaultConsumer)
		if err != nil {
			return err
		}
		cc := c.CachedInfo().Config
		if cc.AckPolicy != jetstream.AckExplicitPolicy || cc.AckWait <= cfg.APITimeout || cc.MaxAckPending < cfg.Concurrency {
			return fmt.Errorf("consumer config %+v", cc)
		}
		return nil
	})
	r.stop(t)
}

func TestRunTwice(t *testing.T) {
	e := newEnv(t, kreatest.Config{})
	r := e.start(e.config())
	r.stop(t)
	if err := r.s.Run(context.Background()); err == nil {
		t.Error("second Run succeeded")
	}
}

var _ API = (*krea.Client)(nil)
var _ Ledger = (*ledger.Ledger)(nil)

// TestSlowAnswerTimesOut: an answer slower than KREABUS_API_TIMEOUT leaves
// the call's outcome unknown; the request is not sent again while Krea's
// job listing cannot be read (it is as slow), and once it can, the listing
// proves the abandoned call made no job (this simulator drops abandoned
// calls) and the request ends in one job.
func TestSlowAnswerTimesOut(t *testing.T) {
	e := newEnv(t, kreatest.Config{Faults: kreatest.Faults{Latency: 10 * time.Second}})
	cfg := e.config()
	cfg.APITimeout = time.Second
	e.start(cfg)
	e.publishAsync([]*events.Request{goodRequest("slow")})
	natstest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		// api_calls_total{code} series appear at their first call.
		if e.metricOrZero("kreabus_submitter_api_calls_total", "code", "timeout") < 1 {
			return errors.New("waiting for the timeout")
		}
		if e.metric("kreabus_submitter_uncertain_total", "outcome", UncertainWaiting) < 1 {
			return errors.New("waiting for a listing that cannot be read")
		}
		return nil
	})
	if n := e.metric("kreabus_submitter_api_calls_total", "code", "timeout"); n != 1 {
		t.Fatalf("%v submissions timed out: sent again while its outcome was unknown", n)
	}
	e.sim.SetFaults(kreatest.Faults{})
	natstest.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		if n := e.countStatus("submitted"); n != 1 {
			return fmt.Errorf("%d submitted", n)
		}
		return nil
	})
	if n := e.sim.SubmissionsFor(e.webhookURL("slow")); n != 1 {
		t.Errorf("%d jobs", n)
	}
	if n := e.countStatus("rejected"); n != 0 {
		t.Errorf("%d rejected", n)
	}
	if n := e.metric("kreabus_submitter_uncertain_total", "outcome", UncertainNoJob); n != 1 {
		t.Errorf("uncertain_total{no_job} = %v, want 1", n)
	}
}

// TestPauseDoesNotBurnRetries: deliveries handed back during a pause do not
// count towards KREABUS_MAX_DELIVERIES.
func TestPauseDoesNotBurnRetries(t *testing.T) {
	e := newEnv(t, kreatest.Config{})
	e.deny.Store(http.StatusForbidden)
	cfg := e.config()
	cfg.MaxDeliveries = 2
	e.start(cfg)
	e.publishAsync([]*events.Request{goodRequest("patient")})
	natstest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		// api_calls_total{code} series appear at their first call.
		if n := e.metricOrZero("kreabus_submitter_api_calls_total", "code", "403"); n < 3 {
			return fmt.Errorf("%v calls answered 403", n)
		}
		return nil
	})
	if n := e.countStatus("rejected"); n != 0 {
		t.Fatalf("%d rejected during the pause", n)
	}
	// The API now fails retryably: two more deliveries, then out of retries.
	e.deny.Store(http.StatusServiceUnavailable)
	natstest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if n := e.countStatus("rejected"); n != 1 {
			return fmt.Errorf("%d rejected", n)
		}
		return nil
	})
	ev := byRequest(e.events())["patient"]["rejected"][0]
	if !strings.Contains(ev.Reason, "out of retries after 2 attempts") {
		t.Errorf("reason %q", ev.Reason)
	}
	if n := e.metric("kreabus_submitter_api_calls_total", "code", "503"); n != 2 {
		t.Errorf("%v calls answered 503, want 2", n)
	}
}

// TestRejectionRedeliveryDoesNotCallAgain: a request the API refused, then
// delivered again (a lost ack looks the same), is not sent to the API a
// second time: the ledger holds the rejection, which is published again
// and stored once.
func TestRejectionRedeliveryDoesNotCallAgain(t *testing.T) {
	e := newEnv(t, kreatest.Config{
		CheckInput: func(string, json.RawMessage) error { return errors.New("prompt: too long") },
	})
	e.start(e.config())
	e.publishAsync([]*events.Request{goodRequest("refused")})
	natstest.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		if n := e.countStatus("rejected"); n != 1 {
			return fmt.Errorf("%d rejected", n)
		}
		return nil
	})
	rec, err := e.ledger.Request(context.Background(), "refused")
	if err != nil || rec.Status != events.StatusRejected || !rec.Terminal || rec.JobID != "" || len(rec.Rejection) == 0 {
		t.Fatalf("ledger record %+v, %v", rec, err)
	}
	e.publishAsync([]*events.Request{goodRequest("refused")})
	natstest.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		if e.metric("kreabus_submitter_republished_total") != 1 {
			return errors.New("not republished yet")
		}
		if n := e.requestsLeft(); n != 0 {
			return fmt.Errorf("%d requests left", n)
		}
		return nil
	})
	if n := e.sim.AttemptsByWebhookURL()[e.webhookURL("refused")]; n != 1 {
		t.Errorf("%d API calls, want 1", n)
	}
	if n := e.countStatus("rejected"); n != 1 {
		t.Errorf("%d rejected events stored, want 1", n)
	}
	ev := byRequest(e.events())["refused"]["rejected"][0]
	if !strings.Contains(ev.Reason, "prompt: too long") {
		t.Errorf("reason %q", ev.Reason)
	}
}

// TestConsumerDeletedUnderRun: an operator deletes the submitter's durable
// consumer while it runs; it binds a new one and goes on submitting.
func TestConsumerDeletedUnderRun(t *testing.T) {
	e := newEnv(t, kreatest.Config{})
	r := e.start(e.config())
	e.publishAsync([]*events.Request{goodRequest("before-delete")})
	natstest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if n := e.countStatus("submitted"); n != 1 {
			return fmt.Errorf("%d submitted", n)
		}
		return nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := e.js.DeleteConsumer(ctx, events.StreamRequests, DefaultConsumer); err != nil {
		t.Fatal(err)
	}
	e.publishAsync([]*events.Request{goodRequest("after-delete")})
	natstest.CheckFor(t, 20*time.Second, 20*time.Millisecond, func() error {
		if n := e.countStatus("submitted"); n != 2 {
			return fmt.Errorf("%d submitted", n)
		}
		return nil
	})
	r.stop(t)
}

// TestUncertainWaitBound: a call whose answer was lost after Krea made the
// job, and whose webhook never comes (this env's webhook sink forgets
// them), leaves a job nobody owns in the listing: the request waits, and
// is acted on no earlier than KREABUS_UNCERTAIN_WAIT after the call: this
// is the window that remains, and its bound.
func TestUncertainWaitBound(t *testing.T) {
	const wait = 2 * time.Second
	for _, action := range []string{UncertainActionReject, UncertainActionResend} {
		t.Run(action, func(t *testing.T) {
			e := newEnv(t, kreatest.Config{Faults: kreatest.Faults{LostAnswerRate: 1}})
			cfg := e.config()
			cfg.UncertainWait = wait
			cfg.UncertainAction = action
			e.start(cfg)
			start := time.Now()
			e.publishAsync([]*events.Request{goodRequest("unsettled")})
			natstest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
				if e.metric("kreabus_submitter_uncertain_total", "outcome", UncertainWaiting) < 1 {
					return errors.New("not waiting yet")
				}
				return nil
			})
			if action == UncertainActionResend {
				// The second call's answer must come through.
				e.sim.SetFaults(kreatest.Faults{})
			}
			natstest.CheckFor(t, 20*time.Second, 20*time.Millisecond, func() error {
				if n := e.countStatus("rejected") + e.countStatus("submitted"); n != 1 {
					return fmt.Errorf("%d outcomes", n)
				}
				return nil
			})
			took := time.Since(start)
			if took < wait {
				t.Fatalf("acted on after %v, before KREABUS_UNCERTAIN_WAIT (%v)", took, wait)
			}
			evs := byRequest(e.events())["unsettled"]
			jobs := e.sim.SubmissionsFor(e.webhookURL("unsettled"))
			switch action {
			case UncertainActionReject:
				if len(evs["rejected"]) != 1 || jobs != 1 {
					t.Fatalf("%d rejected events, %d jobs; want 1, 1", len(evs["rejected"]), jobs)
				}
				var body events.Rejection
				_ = json.Unmarshal(evs["rejected"][0].Raw, &body)
				lost := e.sim.SubmissionLog()[0].JobID
				if body.Kind != RejectUncertain || !strings.Contains(body.Reason, lost) {
					t.Fatalf("rejection %s does not name the candidate job %s", evs["rejected"][0].Raw, lost)
				}
				if got := e.metric("kreabus_submitter_uncertain_total", "outcome", UncertainRejected); got != 1 {
					t.Errorf("uncertain_total{rejected} = %v", got)
				}
			case UncertainActionResend:
				// The documented cost of resend: the lost job was paid too.
				if len(evs["submitted"]) != 1 || jobs != 2 {
					t.Fatalf("%d submitted events, %d jobs; want 1, 2", len(evs["submitted"]), jobs)
				}
				if got := e.metric("kreabus_submitter_uncertain_total", "outcome", UncertainResent); got != 1 {
					t.Errorf("uncertain_total{resent} = %v", got)
				}
			}
			t.Logf("%s after %v", action, took.Round(time.Millisecond))
		})
	}
}

// TestOneRequestIDOneOutcome: a request ID published invalid, then valid,
// then with other content, ends in its first outcome only; the API is
// never called.
func TestOneRequestIDOneOutcome(t *testing.T) {
	e := newEnv(t, kreatest.Config{})
	e.start(e.config())
	bad := goodRequest("twice")
	bad.Input = json.RawMessage(`["not an object"]`)
	// Published raw and without Nats-Msg-Id: JetStream would otherwise
	// drop the copies as duplicates and the test would prove nothing.
	data, _ := json.Marshal(bad)
	e.publishRaw("krea.requests.image", data, nil)
	natstest.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		if n := e.countStatus("rejected"); n != 1 {
			return fmt.Errorf("%d rejected", n)
		}
		return nil
	})
	good := goodRequest("twice")
	data, _ = json.Marshal(good)
	e.publishRaw("krea.requests.image", data, nil)
	other := goodRequest("twice")
	other.Path = "/generate/video/kling/kling-2.1"
	data, _ = json.Marshal(other)
	e.publishRaw("krea.requests.video", data, nil)
	natstest.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		if e.metric("kreabus_submitter_republished_total") != 2 {
			return fmt.Errorf("republished %v", e.metric("kreabus_submitter_republished_total"))
		}
		if n := e.requestsLeft(); n != 0 {
			return fmt.Errorf("%d requests left", n)
		}
		return nil
	})
	if n := e.calls.Load(); n != 0 {
		t.Fatalf("%d API calls", n)
	}
	if n, m := e.countStatus("rejected"), e.countStatus("submitted"); n != 1 || m != 0 {
		t.Fatalf("%d rejected, %d submitted events", n, m)
	}
}
