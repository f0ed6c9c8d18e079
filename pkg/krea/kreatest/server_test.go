package kreatest_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kreabus/kreabus/pkg/krea"
	"github.com/kreabus/kreabus/pkg/krea/kreatest"
)

const fluxPath = "/generate/image/bfl/flux-1-dev"

var prompt = json.RawMessage(`{"prompt":"a lighthouse"}`)

func newSim(t *testing.T, cfg kreatest.Config) *kreatest.Server {
	t.Helper()
	if cfg.Logf == nil {
		cfg.Logf = t.Logf
	}
	srv := kreatest.NewServer(cfg)
	t.Cleanup(srv.Close)
	return srv
}

// receiver is a webhook endpoint that fails its first failFirst calls with
// 500 and records every body it gets.
type receiver struct {
	*httptest.Server
	failFirst atomic.Int32
	mu        sync.Mutex
	bodies    [][]byte
}

func newReceiver(t *testing.T) *receiver {
	t.Helper()
	r := &receiver{}
	r.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		b, _ := io.ReadAll(req.Body)
		if req.Header.Get("Content-Type") != "application/json" || req.Method != http.MethodPost {
			http.Error(w, "bad request", http.StatusBadRequest)
			return
		}
		r.mu.Lock()
		r.bodies = append(r.bodies, b)
		r.mu.Unlock()
		if r.failFirst.Add(-1) >= 0 {
			http.Error(w, `{"error":"try later"}`, http.StatusInternalServerError)
			return
		}
		w.WriteHeader(http.StatusOK)
	}))
	t.Cleanup(r.Close)
	return r
}

func (r *receiver) got() [][]byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([][]byte(nil), r.bodies...)
}

func submit(t *testing.T, c *krea.Client, opts ...krea.SubmitOpt) *krea.SubmitResult {
	t.Helper()
	res, err := c.Submit(context.Background(), fluxPath, prompt, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func waitStatus(t *testing.T, srv *kreatest.Server, id string, want krea.Status) {
	t.Helper()
	kreatest.CheckFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		if j, _ := srv.Job(id); j.Status != want {
			return fmt.Errorf("job %s is %s, want %s", id, j.Status, want)
		}
		return nil
	})
}

func successes(ds []kreatest.WebhookDelivery) (n int) {
	for _, d := range ds {
		if d.Succeeded() {
			n++
		}
	}
	return n
}

func TestBacklogStartsInOrder(t *testing.T) {
	srv := newSim(t, kreatest.Config{Concurrency: 2, QueueTime: -1, RunTime: time.Hour})
	c := srv.NewClient()
	var ids []string
	var statuses []krea.Status
	for range 4 {
		res := submit(t, c)
		ids = append(ids, res.Job.JobID)
		statuses = append(statuses, res.Job.Status)
	}
	if fmt.Sprint(statuses) != "[queued queued backlogged backlogged]" {
		t.Fatalf("immediate statuses %v", statuses)
	}
	waitStatus(t, srv, ids[0], krea.StatusProcessing)
	if err := srv.Finish(ids[0], krea.StatusCompleted, ""); err != nil {
		t.Fatal(err)
	}
	// The oldest backlogged job takes the slot; the next one keeps waiting.
	waitStatus(t, srv, ids[2], krea.StatusProcessing)
	if j, _ := srv.Job(ids[3]); j.Status != krea.StatusBacklogged {
		t.Fatalf("job 4 is %s, want backlogged", j.Status)
	}
	// Cancelling a backlogged job frees nothing and removes it from the line.
	if err := c.CancelJob(context.Background(), ids[3]); err != nil {
		t.Fatal(err)
	}
	if err := srv.Finish(ids[1], krea.StatusFailed, "boom"); err != nil {
		t.Fatal(err)
	}
	j, _ := srv.Job(ids[1])
	if j.FailureReason() != "boom" || j.Error == nil || j.Error.Code == "" {
		t.Errorf("failed job = %+v", j)
	}
	if j, _ := srv.Job(ids[3]); j.Status != krea.StatusCancelled {
		t.Errorf("cancelled backlogged job is %s", j.Status)
	}
	if err := srv.Finish(ids[1], krea.StatusCompleted, ""); err == nil {
		t.Error("Finish of an ended job succeeded")
	}
	if err := srv.Finish(ids[2], krea.StatusQueued, ""); err == nil {
		t.Error("Finish to a non-terminal status succeeded")
	}
}

func TestFullBacklogAnswers429(t *testing.T) {
	srv := newSim(t, kreatest.Config{Concurrency: 1, MaxBacklog: 1, RunTime: time.Hour})
	c := srv.NewClient()
	submit(t, c)
	submit(t, c)
	_, err := c.Submit(context.Background(), fluxPath, prompt)
	if !errors.Is(err, krea.ErrRetryable) || srv.Submissions() != 2 {
		t.Fatalf("err = %v, submissions %d", err, srv.Submissions())
	}
}

func TestWebhookRetriedUntilAccepted(t *testing.T) {
	rcv := newReceiver(t)
	rcv.failFirst.Store(2)
	srv := newSim(t, kreatest.Config{WebhookAttempts: 3, WebhookBackoff: 5 * time.Millisecond})
	res := submit(t, srv.NewClient(), krea.WithWebhook(rcv.URL+"/hook"))
	kreatest.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if n := successes(srv.WebhookDeliveries()); n != 1 {
			return fmt.Errorf("%d successful deliveries", n)
		}
		return nil
	})
	ds := srv.WebhookDeliveries()
	if len(ds) != 3 || ds[0].StatusCode != 500 || ds[1].Attempt != 2 || ds[2].StatusCode != 200 || ds[2].Attempt != 3 {
		t.Fatalf("deliveries = %+v", ds)
	}
	bodies := rcv.got()
	if len(bodies) != 3 {
		t.Fatalf("receiver got %d bodies", len(bodies))
	}
	j, err := krea.ParseJob(bodies[2])
	if err != nil || j.JobID != res.Job.JobID || j.Status != krea.StatusCompleted || len(j.Result.URLs) != 1 {
		t.Fatalf("webhook job = %+v, %v", j, err)
	}
	// The webhook body is the job object, byte for byte what GET answers.
	if raw, _ := srv.JobJSON(j.JobID); !bytes.Equal(raw, bodies[2]) {
		t.Errorf("webhook body %s differs from GET body %s", bodies[2], raw)
	}
	if ds[2].URL != rcv.URL+"/hook" || ds[2].Status != krea.StatusCompleted {
		t.Errorf("delivery record = %+v", ds[2])
	}
}

func TestWebhookGivesUp(t *testing.T) {
	rcv := newReceiver(t)
	rcv.failFirst.Store(1000)
	srv := newSim(t, kreatest.Config{WebhookAttempts: 2, WebhookBackoff: 5 * time.Millisecond})
	submit(t, srv.NewClient(), krea.WithWebhook(rcv.URL))
	kreatest.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if n := len(srv.WebhookDeliveries()); n != 2 {
			return fmt.Errorf("%d attempts", n)
		}
		return nil
	})
	// Close waits for the delivery goroutine: no third attempt can sneak in.
	srv.Close()
	if n := len(rcv.got()); n != 2 {
		t.Errorf("receiver got %d attempts, want 2", n)
	}
}

func TestWebhookToDeadReceiverRecordsError(t *testing.T) {
	dead := httptest.NewServer(http.NotFoundHandler())
	dead.Close()
	srv := newSim(t, kreatest.Config{WebhookAttempts: 1})
	submit(t, srv.NewClient(), krea.WithWebhook(dead.URL))
	kreatest.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		ds := srv.WebhookDeliveries()
		if len(ds) != 1 || ds[0].Err == "" || ds[0].Succeeded() {
			return fmt.Errorf("deliveries %+v", ds)
		}
		return nil
	})
}

func TestDuplicateWebhooks(t *testing.T) {
	rcv := newReceiver(t)
	srv := newSim(t, kreatest.Config{Faults: kreatest.Faults{DuplicateWebhookRate: 1}})
	res := submit(t, srv.NewClient(), krea.WithWebhook(rcv.URL))
	kreatest.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		// The simulator records a delivery after the receiver answers.
		if n, m := len(rcv.got()), successes(srv.WebhookDeliveries()); n != 2 || m != 2 {
			return fmt.Errorf("receiver got %d, simulator recorded %d", n, m)
		}
		return nil
	})
	b := rcv.got()
	if !bytes.Equal(b[0], b[1]) || !strings.Contains(string(b[0]), res.Job.JobID) {
		t.Errorf("duplicate bodies differ: %s / %s", b[0], b[1])
	}
	ds := srv.WebhookDeliveries()
	if len(ds) != 2 || ds[0].Duplicate || !ds[1].Duplicate {
		t.Errorf("deliveries = %+v", ds)
	}
}

func TestDroppedWebhook(t *testing.T) {
	rcv := newReceiver(t)
	srv := newSim(t, kreatest.Config{Faults: kreatest.Faults{DropWebhookRate: 1}})
	res := submit(t, srv.NewClient(), krea.WithWebhook(rcv.URL))
	kreatest.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		ds := srv.WebhookDeliveries()
		if len(ds) != 1 || !ds[0].Dropped || ds[0].JobID != res.Job.JobID {
			return fmt.Errorf("deliveries %+v", ds)
		}
		return nil
	})
	// The drop is recorded when the job ends, so the job is over and no
	// delivery is pending: Close and check nothing arrived.
	srv.Close()
	if n := len(rcv.got()); n != 0 {
		t.Errorf("receiver got %d webhooks", n)
	}
	if j, _ := srv.Job(res.Job.JobID); j.Status != krea.StatusCompleted {
		t.Errorf("job is %s", j.Status)
	}
}

func TestLateWebhook(t *testing.T) {
	rcv := newReceiver(t)
	const delay = 300 * time.Millisecond
	srv := newSim(t, kreatest.Config{QueueTime: -1, RunTime: -1,
		Faults: kreatest.Faults{LateWebhookRate: 1, LateWebhookDelay: delay}})
	res := submit(t, srv.NewClient(), krea.WithWebhook(rcv.URL))
	kreatest.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if len(srv.WebhookDeliveries()) != 1 {
			return errors.New("no delivery yet")
		}
		return nil
	})
	d := srv.WebhookDeliveries()[0]
	j, _ := srv.Job(res.Job.JobID)
	if !d.Late || d.Time.Sub(*j.CompletedAt) < delay-5*time.Millisecond {
		t.Errorf("delivery %+v only %v after completion", d, d.Time.Sub(*j.CompletedAt))
	}
}

func TestNonTerminalWebhooks(t *testing.T) {
	rcv := newReceiver(t)
	srv := newSim(t, kreatest.Config{NonTerminalWebhooks: true})
	submit(t, srv.NewClient(), krea.WithWebhook(rcv.URL))
	kreatest.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		// The simulator records a delivery after the receiver answers.
		if n, m := len(rcv.got()), successes(srv.WebhookDeliveries()); n != 2 || m != 2 {
			return fmt.Errorf("receiver got %d, simulator recorded %d", n, m)
		}
		return nil
	})
	var got []krea.Status
	for _, d := range srv.WebhookDeliveries() {
		got = append(got, d.Status)
	}
	if fmt.Sprint(got) != "[processing completed]" {
		t.Errorf("webhook statuses %v", got)
	}
}

func TestFailedJobs(t *testing.T) {
	for _, legacy := range []bool{false, true} {
		t.Run(fmt.Sprint("legacy=", legacy), func(t *testing.T) {
			srv := newSim(t, kreatest.Config{QueueTime: -1, RunTime: -1, LegacyFailureDetail: legacy,
				Faults: kreatest.Faults{FailRate: 1}})
			c := srv.NewClient()
			res := submit(t, c)
			waitStatus(t, srv, res.Job.JobID, krea.StatusFailed)
			j, err := c.GetJob(context.Background(), res.Job.JobID)
			if err != nil {
				t.Fatal(err)
			}
			raw := j.Raw
			if j.FailureReason() == "" || j.CompletedAt == nil {
				t.Errorf("failed job %s has no reason", raw)
			}
			if legacy != strings.Contains(string(raw), `"result":{"error"`) {
				t.Errorf("legacy=%v body %s", legacy, raw)
			}
		})
	}
}

func TestDirectives(t *testing.T) {
	rcv := newReceiver(t)
	srv := newSim(t, kreatest.Config{QueueTime: -1, RunTime: -1})
	c := srv.NewClient()
	fail, err := c.Submit(context.Background(), fluxPath, json.RawMessage(`{"prompt":"x `+kreatest.DirectiveFail+`"}`))
	if err != nil {
		t.Fatal(err)
	}
	quiet, err := c.Submit(context.Background(), fluxPath, json.RawMessage(`{"prompt":"`+kreatest.DirectiveNoWebhook+`"}`), krea.WithWebhook(rcv.URL))
	if err != nil {
		t.Fatal(err)
	}
	waitStatus(t, srv, fail.Job.JobID, krea.StatusFailed)
	waitStatus(t, srv, quiet.Job.JobID, krea.StatusCompleted)
	srv.Close()
	if len(srv.WebhookDeliveries()) != 0 || len(rcv.got()) != 0 {
		t.Error("no-webhook directive ignored")
	}
}

func TestOutputs(t *testing.T) {
	srv := newSim(t, kreatest.Config{QueueTime: -1, RunTime: -1, ExtraFields: true})
	c := srv.NewClient()
	for path, want := range map[string]string{
		"/generate/video/kling/kling-2.1":          srv.URL + "/videos/",
		"/generate/enhance/topaz/standard-enhance": srv.URL + "/images/",
		"/generate/image/krea/krea-2/medium":       srv.URL + "/images/",
		"/styles/train":                            "",
	} {
		res, err := c.Submit(context.Background(), path, json.RawMessage(`{"name":"x","urls":[]}`))
		if err != nil {
			t.Fatal(path, err)
		}
		if !strings.Contains(string(res.Job.Raw), `"estimated_time"`) {
			t.Errorf("%s: ExtraFields answer %s", path, res.Job.Raw)
		}
		waitStatus(t, srv, res.Job.JobID, krea.StatusCompleted)
		j, _ := srv.Job(res.Job.JobID)
		switch {
		case want == "" && (j.Result.StyleID == "" || len(j.Result.URLs) != 0):
			t.Errorf("%s: training result %+v", path, j.Result)
		case want != "" && (len(j.Result.URLs) != 1 || !strings.HasPrefix(j.Result.URLs[0], want)):
			t.Errorf("%s: result %+v", path, j.Result)
		}
	}
}

// TestHTTPErrors checks status codes and bodies of answers that do not go
// through the krea client.
func TestHTTPErrors(t *testing.T) {
	srv := newSim(t, kreatest.Config{Models: []string{fluxPath}})
	tests := []struct {
		method, path, auth, hook, body string
		want                           int
	}{
		{"POST", fluxPath, "", "", `{}`, 401},
		{"POST", fluxPath, "Bearer nope", "", `{}`, 401},
		{"POST", fluxPath, "token " + kreatest.DefaultToken, "", `{}`, 401},
		{"POST", fluxPath, "ok", "", `[1]`, 400},
		{"POST", fluxPath, "ok", "", `not json`, 400},
		{"POST", fluxPath, "ok", "", ``, 400},
		{"POST", fluxPath, "ok", "notaurl", `{}`, 400},
		{"POST", fluxPath, "ok", "", `{"prompt":"` + strings.Repeat("a", kreatest.MaxBodyBytes) + `"}`, 413},
		{"POST", "/generate/image/bfl/other", "ok", "", `{}`, 404},
		{"POST", "/generate/audio/x/y", "ok", "", `{}`, 404},
		{"POST", "/generate/image/x", "ok", "", `{}`, 404},
		{"GET", fluxPath, "ok", "", ``, 405},
		{"PUT", "/jobs/x", "ok", "", ``, 405},
		{"GET", "/nothing", "ok", "", ``, 404},
		{"GET", "/jobs/unknown", "ok", "", ``, 404},
		{"GET", "/jobs/unknown", "", "", ``, 401},
		{"DELETE", "/jobs/unknown", "ok", "", ``, 404},
		{"GET", "/jobs?limit=0", "ok", "", ``, 400},
		{"GET", "/jobs?limit=1001", "ok", "", ``, 400},
		{"GET", "/jobs?limit=x", "ok", "", ``, 400},
		{"GET", "/jobs?cursor=yesterday", "ok", "", ``, 400},
		{"GET", "/jobs?status=done", "ok", "", ``, 400},
		{"GET", "/jobs?limit=1000&status=completed&cursor=2026-02-13T02:20:58.265Z", "ok", "", ``, 200},
		{"POST", fluxPath, "ok", "https://hook.example/x", `{"prompt":"x"}`, 200},
	}
	for _, tc := range tests {
		req, _ := http.NewRequest(tc.method, srv.URL+tc.path, strings.NewReader(tc.body))
		switch tc.auth {
		case "ok":
			req.Header.Set("Authorization", "Bearer "+srv.Token())
		case "":
		default:
			req.Header.Set("Authorization", tc.auth)
		}
		if tc.hook != "" {
			req.Header.Set("X-Webhook-URL", tc.hook)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.want {
			t.Errorf("%s %s: %d %s, want %d", tc.method, tc.path, resp.StatusCode, b, tc.want)
			continue
		}
		var body map[string]any
		if err := json.Unmarshal(b, &body); err != nil || resp.Header.Get("Content-Type") != "application/json" {
			t.Errorf("%s %s: body %q is not JSON", tc.method, tc.path, b)
		}
		if _, ok := body["error"].(string); tc.want != 200 && !ok {
			t.Errorf("%s %s: error body %s has no error string", tc.method, tc.path, b)
		}
	}
	if n := srv.Submissions(); n != 1 {
		t.Errorf("%d submissions, want 1", n)
	}
	if a := srv.AttemptsByWebhookURL(); a[""] != 5 || a["notaurl"] != 1 || a["https://hook.example/x"] != 1 {
		t.Errorf("attempts = %v", a)
	}
}

func TestCountsByWebhookURL(t *testing.T) {
	srv := newSim(t, kreatest.Config{RunTime: time.Hour})
	c := srv.NewClient()
	submit(t, c, krea.WithWebhook("https://h.example/a"))
	submit(t, c, krea.WithWebhook("https://h.example/b"))
	submit(t, c, krea.WithWebhook("https://h.example/b"))
	srv.SetFaults(kreatest.Faults{Rate5xx: 1})
	if _, err := c.Submit(context.Background(), fluxPath, prompt, krea.WithWebhook("https://h.example/c")); !errors.Is(err, krea.ErrRetryable) {
		t.Fatal(err)
	}
	if f := srv.Faults(); f.Rate5xx != 1 {
		t.Errorf("Faults() = %+v", f)
	}
	got := fmt.Sprint(srv.SubmissionsByWebhookURL(), srv.AttemptsByWebhookURL())
	want := "map[https://h.example/a:1 https://h.example/b:2] map[https://h.example/a:1 https://h.example/b:2 https://h.example/c:1]"
	if got != want {
		t.Errorf("got %s\nwant %s", got, want)
	}
	if srv.SubmissionsFor("https://h.example/b") != 2 || srv.Submissions() != 3 || len(srv.SubmissionLog()) != 3 || len(srv.Jobs()) != 3 {
		t.Error("counts disagree")
	}
}

// TestSeedIsDeterministic checks that the fault dice follow the seed.
func TestSeedIsDeterministic(t *testing.T) {
	seq := func() string {
		srv := newSim(t, kreatest.Config{Seed: 42, Faults: kreatest.Faults{Rate5xx: 0.5}})
		var codes []int
		for range 30 {
			req, _ := http.NewRequest("GET", srv.URL+"/jobs", nil)
			req.Header.Set("Authorization", "Bearer "+srv.Token())
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			codes = append(codes, resp.StatusCode)
		}
		return fmt.Sprint(codes)
	}
	a, b := seq(), seq()
	if a != b {
		t.Errorf("same seed, different faults:\n%s\n%s", a, b)
	}
	if !strings.Contains(a, "200") || !strings.Contains(a, "50") {
		t.Errorf("rate 0.5 gave %s", a)
	}
}

func TestLatencyAppliesAndJitters(t *testing.T) {
	srv := newSim(t, kreatest.Config{Faults: kreatest.Faults{Latency: 100 * time.Millisecond, LatencyJitter: 50 * time.Millisecond}})
	start := time.Now()
	if _, err := srv.NewClient().ListJobs(context.Background(), krea.ListOptions{}); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < 100*time.Millisecond {
		t.Errorf("answer after %v, want >= 100ms", d)
	}
}

func TestInvalidConfig(t *testing.T) {
	for name, cfg := range map[string]kreatest.Config{
		"rate":      {Faults: kreatest.Faults{Rate429: 1.5}},
		"nan":       {Faults: kreatest.Faults{FailRate: -0.1}},
		"latency":   {Faults: kreatest.Faults{Latency: -1}},
		"token":     {Token: "a b"},
		"retired":   {Retired: map[string]kreatest.Retirement{"/jobs": {}}},
		"models":    {Models: []string{"/generate/x/y/z"}},
		"conc":      {Concurrency: -1},
		"attempts":  {WebhookAttempts: -1},
		"jitter":    {RunJitter: -1},
		"whtimeout": {WebhookTimeout: -1},
	} {
		if _, err := kreatest.New(cfg); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	s, err := kreatest.New(kreatest.Config{})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	s.Close() // idempotent
}

// TestConcurrentUse hammers every endpoint at once; run with -race.
func TestConcurrentUse(t *testing.T) {
	rcv := newReceiver(t)
	srv := newSim(t, kreatest.Config{Concurrency: 3, QueueTime: time.Millisecond, RunTime: 5 * time.Millisecond, RunJitter: 5 * time.Millisecond,
		Faults: kreatest.Faults{Rate429: 0.1, Rate5xx: 0.1, FailRate: 0.2, DuplicateWebhookRate: 0.2, DropWebhookRate: 0.1, LateWebhookRate: 0.1, LateWebhookDelay: 5 * time.Millisecond}})
	c := srv.NewClient()
	ctx := context.Background()
	var wg sync.WaitGroup
	var created atomic.Int32
	for i := range 8 {
		wg.Go(func() {
			for k := range 10 {
				res, err := c.Submit(ctx, fluxPath, prompt, krea.WithWebhook(fmt.Sprintf("%s/%d/%d", rcv.URL, i, k)))
				if err != nil {
					continue
				}
				created.Add(1)
				_, _ = c.GetJob(ctx, res.Job.JobID)
				_, _ = c.ListJobs(ctx, krea.ListOptions{Limit: 5})
				if k%3 == 0 {
					_ = c.CancelJob(ctx, res.Job.JobID)
				}
				_ = srv.Jobs()
				_ = srv.WebhookDeliveries()
			}
		})
	}
	wg.Wait()
	kreatest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		for _, j := range srv.Jobs() {
			if !j.Status.IsTerminal() {
				return fmt.Errorf("job %s still %s", j.JobID, j.Status)
			}
		}
		return nil
	})
	if int(created.Load()) != srv.Submissions() {
		t.Errorf("client saw %d jobs created, simulator %d", created.Load(), srv.Submissions())
	}
}

// TestCloseStopsEverything starts jobs, webhooks and late webhooks that
// would run for a long time and checks Close ends them all promptly.
func TestCloseStopsEverything(t *testing.T) {
	before := runtime.NumGoroutine()
	block := make(chan struct{})
	var arrived atomic.Int32
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		arrived.Add(1)
		select {
		case <-block:
		case <-r.Context().Done():
		}
	}))
	inFlight := kreatest.NewServer(kreatest.Config{QueueTime: -1, RunTime: -1, Logf: t.Logf})
	late := kreatest.NewServer(kreatest.Config{QueueTime: -1, RunTime: -1, Logf: t.Logf,
		Faults: kreatest.Faults{LateWebhookRate: 1, LateWebhookDelay: time.Hour, Latency: time.Millisecond}})
	long := kreatest.NewServer(kreatest.Config{RunTime: time.Hour})
	for range 5 {
		submit(t, inFlight.NewClient(), krea.WithWebhook(slow.URL))
		submit(t, late.NewClient(), krea.WithWebhook(slow.URL))
		submit(t, long.NewClient(), krea.WithWebhook(slow.URL))
	}
	// Wait until the webhooks are blocked in the receiver and the late
	// ones are waiting out their delay.
	kreatest.CheckFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		if n := arrived.Load(); n != 5 {
			return fmt.Errorf("%d webhooks in flight", n)
		}
		for _, j := range late.Jobs() {
			if !j.Status.IsTerminal() {
				return errors.New("late jobs still running")
			}
		}
		return nil
	})
	start := time.Now()
	inFlight.Close()
	late.Close()
	long.Close()
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("Close took %v", d)
	}
	if n := len(late.WebhookDeliveries()); n != 0 {
		t.Errorf("late webhooks delivered: %d", n)
	}
	close(block)
	slow.Close()
	http.DefaultClient.CloseIdleConnections()
	kreatest.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if n := runtime.NumGoroutine(); n > before+2 {
			buf := make([]byte, 1<<16)
			return fmt.Errorf("%d goroutines, %d before:\n%s", n, before, buf[:runtime.Stack(buf, true)])
		}
		return nil
	})
}

func TestNewClientPanicsWithoutListener(t *testing.T) {
	s, err := kreatest.New(kreatest.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	defer func() {
		if recover() == nil {
			t.Error("no panic")
		}
	}()
	s.NewClient()
}

// TestHandlerOnOwnServer serves the simulator from a server it did not
// start, as cmd/kreasim does.
func TestHandlerOnOwnServer(t *testing.T) {
	sim, err := kreatest.New(kreatest.Config{Token: "tok2", QueueTime: -1, RunTime: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer sim.Close()
	hs := httptest.NewServer(sim)
	defer hs.Close()
	c, _ := krea.NewClient("tok2", krea.WithBaseURL(hs.URL))
	res, err := c.Submit(context.Background(), fluxPath, prompt)
	if err != nil {
		t.Fatal(err)
	}
	waitStatus(t, sim, res.Job.JobID, krea.StatusCompleted)
}

type fakeTB struct {
	failed bool
	msg    string
}

func (f *fakeTB) Helper() {}
func (f *fakeTB) Fatalf(format string, args ...any) {
	f.failed = true
	f.msg = fmt.Sprintf(format, args...)
}

func TestCheckFor(t *testing.T) {
	var tb fakeTB
	n := 0
	kreatest.CheckFor(&tb, time.Second, time.Millisecond, func() error {
		if n++; n < 3 {
			return errors.New("not yet")
		}
		return nil
	})
	if tb.failed || n != 3 {
		t.Errorf("failed=%v after %d calls", tb.failed, n)
	}
	kreatest.CheckFor(&tb, 20*time.Millisecond, time.Millisecond, func() error { return errors.New("never") })
	if !tb.failed || !strings.Contains(tb.msg, "never") {
		t.Errorf("CheckFor did not fail: %+v", tb)
	}
}
