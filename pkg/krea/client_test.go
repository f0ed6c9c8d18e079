package krea_test

import (
	"bytes"
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

	"github.com/kreabus/kreabus/pkg/krea"
	"github.com/kreabus/kreabus/pkg/krea/kreatest"
)

const fluxPath = "/generate/image/bfl/flux-1-dev"

var prompt = json.RawMessage(`{"prompt":"a serene mountain landscape at sunset","width":1024}`)

func newSim(t *testing.T, cfg kreatest.Config) *kreatest.Server {
	t.Helper()
	if cfg.Logf == nil {
		cfg.Logf = t.Logf
	}
	srv := kreatest.NewServer(cfg)
	t.Cleanup(srv.Close)
	return srv
}

// stub serves a fixed answer and records the last request.
type stub struct {
	*httptest.Server
	status int
	header http.Header
	body   string
	got    chan *http.Request
	gotB   chan []byte
}

func newStub(t *testing.T, status int, body string, header http.Header) *stub {
	t.Helper()
	s := &stub{status: status, body: body, header: header, got: make(chan *http.Request, 16), gotB: make(chan []byte, 16)}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		s.got <- r
		s.gotB <- b
		for k, v := range s.header {
			w.Header()[k] = v
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(s.status)
		io.WriteString(w, s.body)
	}))
	t.Cleanup(s.Close)
	return s
}

func stubClient(t *testing.T, s *stub, opts ...krea.Option) *krea.Client {
	t.Helper()
	c, err := krea.NewClient("tok", append([]krea.Option{krea.WithBaseURL(s.URL)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

const jobJSON = `{"job_id":"4d0e5f97-9721-4422-b88c-73a9032d7de1","status":"queued","created_at":"2026-02-13T02:20:58.265Z","completed_at":null,"result":null,"estimated_time":7}`

func TestSubmitSendsWhatKreaExpects(t *testing.T) {
	s := newStub(t, 200, jobJSON, nil)
	c := stubClient(t, s, krea.WithUserAgent("submitter"))
	res, err := c.Submit(context.Background(), fluxPath, prompt, krea.WithWebhook("https://bus.example/webhooks/krea/r1.sig"))
	if err != nil {
		t.Fatal(err)
	}
	r, body := <-s.got, <-s.gotB
	checks := map[string][2]string{
		"method":        {r.Method, "POST"},
		"path":          {r.URL.Path, fluxPath},
		"authorization": {r.Header.Get("Authorization"), "Bearer tok"},
		"content-type":  {r.Header.Get("Content-Type"), "application/json"},
		"webhook":       {r.Header.Get("X-Webhook-URL"), "https://bus.example/webhooks/krea/r1.sig"},
		"user-agent":    {r.Header.Get("User-Agent"), "kreabus/" + krea.Version + " submitter"},
		"body":          {string(body), string(prompt)},
		"raw":           {string(res.Job.Raw), jobJSON},
		"job_id":        {res.Job.JobID, "4d0e5f97-9721-4422-b88c-73a9032d7de1"},
		"status":        {string(res.Job.Status), "queued"},
	}
	for name, c := range checks {
		if c[0] != c[1] {
			t.Errorf("%s = %q, want %q", name, c[0], c[1])
		}
	}
	if res.Deprecation != nil {
		t.Errorf("unexpected deprecation %+v", res.Deprecation)
	}
}

func TestSubmitWithoutWebhookSendsNoHeader(t *testing.T) {
	s := newStub(t, 200, jobJSON, nil)
	c := stubClient(t, s)
	if _, err := c.Submit(context.Background(), "/styles/train", nil); err != nil {
		t.Fatal(err)
	}
	r, body := <-s.got, <-s.gotB
	if _, ok := r.Header["X-Webhook-Url"]; ok {
		t.Error("X-Webhook-URL sent without a webhook")
	}
	if string(body) != "{}" {
		t.Errorf("empty input sent as %q, want {}", body)
	}
	if ua := r.Header.Get("User-Agent"); ua != "kreabus/"+krea.Version {
		t.Errorf("User-Agent = %q", ua)
	}
}

func TestSubmitReportsDeprecation(t *testing.T) {
	s := newStub(t, 200, jobJSON, http.Header{
		"Deprecation": {"@1767225600"},
		"Sunset":      {"Wed, 01 Jul 2026 00:00:00 GMT"},
		"Link":        {`<https://docs.krea.ai/developers/deprecations>; rel="deprecation"`},
	})
	res, err := stubClient(t, s).Submit(context.Background(), fluxPath, prompt)
	if err != nil {
		t.Fatal(err)
	}
	if res.Deprecation == nil || res.Deprecation.Sunset != "Wed, 01 Jul 2026 00:00:00 GMT" || res.Deprecation.Link == "" {
		t.Fatalf("Deprecation = %+v", res.Deprecation)
	}
}

func TestSubmitAndPollAgainstSimulator(t *testing.T) {
	srv := newSim(t, kreatest.Config{})
	c := srv.NewClient(krea.WithUserAgent("test"))
	ctx := context.Background()
	res, err := c.Submit(ctx, fluxPath, prompt)
	if err != nil {
		t.Fatal(err)
	}
	if res.Job.Status != krea.StatusQueued || res.Job.CreatedAt == nil || res.Job.CompletedAt != nil || res.Job.Result != nil {
		t.Fatalf("immediate answer = %+v", res.Job)
	}
	if log := srv.SubmissionLog(); len(log) != 1 || log[0].UserAgent != "kreabus/"+krea.Version+" test" || !bytes.Equal(log[0].Body, prompt) {
		t.Fatalf("submission log = %+v", log)
	}
	var job *krea.Job
	kreatest.CheckFor(t, 5*time.Second, 20*time.Millisecond, func() error {
		j, err := c.GetJob(ctx, res.Job.JobID)
		if err != nil {
			return err
		}
		if !json.Valid(j.Raw) {
			return fmt.Errorf("raw answer %q is not JSON", j.Raw)
		}
		if !j.Status.IsTerminal() {
			return fmt.Errorf("job still %s", j.Status)
		}
		job = j
		return nil
	})
	if job.Status != krea.StatusCompleted || job.CompletedAt == nil || job.Result == nil || len(job.Result.URLs) != 1 ||
		!strings.HasPrefix(job.Result.URLs[0], srv.URL+"/images/") || !strings.HasSuffix(job.Result.URLs[0], ".png") {
		t.Fatalf("final job = %+v", job)
	}
	if job.CompletedAt.Before(*job.CreatedAt) {
		t.Errorf("completed_at %v before created_at %v", job.CompletedAt, job.CreatedAt)
	}
}

// TestErrorKindsFromSimulator drives each error the simulator can produce
// through the client and checks the kinds callers branch on.
func TestErrorKindsFromSimulator(t *testing.T) {
	ctx := context.Background()
	type kinds struct{ retry, invalid, account, gone, notFound bool }
	check := func(t *testing.T, err error, status int, want kinds) *krea.APIError {
		t.Helper()
		var ae *krea.APIError
		if !errors.As(err, &ae) {
			t.Fatalf("error %v (%T) is not an *APIError", err, err)
		}
		if ae.StatusCode != status {
			t.Errorf("status = %d, want %d (%v)", ae.StatusCode, status, err)
		}
		got := kinds{errors.Is(err, krea.ErrRetryable), errors.Is(err, krea.ErrInvalidRequest),
			errors.Is(err, krea.ErrAccount), errors.Is(err, krea.ErrModelUnavailable), errors.Is(err, krea.ErrNotFound)}
		if got != want {
			t.Errorf("kinds of %v = %+v, want %+v", err, got, want)
		}
		return ae
	}

	t.Run("401", func(t *testing.T) {
		srv := newSim(t, kreatest.Config{})
		c, _ := krea.NewClient("wrong-token", krea.WithBaseURL(srv.URL))
		_, err := c.Submit(ctx, fluxPath, prompt)
		check(t, err, 401, kinds{account: true})
		if srv.Submissions() != 0 {
			t.Error("unauthenticated submission created a job")
		}
	})
	t.Run("402", func(t *testing.T) {
		srv := newSim(t, kreatest.Config{Faults: kreatest.Faults{OutOfCredits: true}})
		_, err := srv.NewClient().Submit(ctx, fluxPath, prompt)
		check(t, err, 402, kinds{account: true})
	})
	t.Run("400", func(t *testing.T) {
		srv := newSim(t, kreatest.Config{CheckInput: func(string, json.RawMessage) error {
			return errors.New(`"prompt" is required`)
		}})
		_, err := srv.NewClient().Submit(ctx, fluxPath, json.RawMessage(`{"width":1}`))
		ae := check(t, err, 400, kinds{invalid: true})
		if ae.Message != `"prompt" is required` {
			t.Errorf("Message = %q", ae.Message)
		}
	})
	t.Run("404", func(t *testing.T) {
		srv := newSim(t, kreatest.Config{})
		_, err := srv.NewClient().GetJob(ctx, "4d0e5f97-9721-4422-b88c-73a9032d7de1")
		check(t, err, 404, kinds{invalid: true, notFound: true})
	})
	t.Run("410", func(t *testing.T) {
		srv := newSim(t, kreatest.Config{Retired: map[string]kreatest.Retirement{
			"/generate/image/bfl/flux-1": {Replacement: fluxPath, MigrationURL: "https://docs.krea.ai/developers/deprecations"},
		}})
		_, err := srv.NewClient().Submit(ctx, "/generate/image/bfl/flux-1", prompt)
		ae := check(t, err, 410, kinds{invalid: true, gone: true})
		if ae.Code != "model_unavailable" || ae.Replacement != fluxPath || ae.SunsetDate == "" || ae.Reason == "" ||
			ae.MigrationURL == "" || !strings.Contains(ae.Message, "retired") {
			t.Errorf("410 detail = %+v", ae)
		}
		if !strings.Contains(err.Error(), fluxPath) {
			t.Errorf("error %q does not name the replacement", err)
		}
	})
	t.Run("cancel finished", func(t *testing.T) {
		// Krea's document lists 200 and 404 only for DELETE /jobs/{id}:
		// a finished job is left as it is (a 409 from a live server is
		// classified in TestErrorKindsByStatus).
		srv := newSim(t, kreatest.Config{})
		c := srv.NewClient()
		res, err := c.Submit(ctx, fluxPath, prompt)
		if err != nil {
			t.Fatal(err)
		}
		if err := srv.Finish(res.Job.JobID, krea.StatusCompleted, ""); err != nil {
			t.Fatal(err)
		}
		if err := c.CancelJob(ctx, res.Job.JobID); err != nil {
			t.Fatal(err)
		}
		if j, err := c.GetJob(ctx, res.Job.JobID); err != nil || j.Status != krea.StatusCompleted {
			t.Fatalf("after cancelling a completed job: %+v, %v", j, err)
		}
	})
	t.Run("429", func(t *testing.T) {
		srv := newSim(t, kreatest.Config{Faults: kreatest.Faults{Rate429: 1, RetryAfter: 3 * time.Second}})
		_, err := srv.NewClient().Submit(ctx, fluxPath, prompt)
		check(t, err, 429, kinds{retry: true})
		if d, ok := krea.RetryAfter(err); !ok || d != 3*time.Second {
			t.Errorf("RetryAfter = %v, %v; want 3s, true", d, ok)
		}
		if srv.Submissions() != 0 {
			t.Error("a 429 created a job")
		}
	})
	t.Run("429 concurrency", func(t *testing.T) {
		srv := newSim(t, kreatest.Config{Concurrency: 1, MaxBacklog: -1, RunTime: time.Hour})
		c := srv.NewClient()
		if _, err := c.Submit(ctx, fluxPath, prompt); err != nil {
			t.Fatal(err)
		}
		_, err := c.Submit(ctx, fluxPath, prompt)
		check(t, err, 429, kinds{retry: true})
		if _, ok := krea.RetryAfter(err); ok {
			t.Error("RetryAfter reported without a header")
		}
	})
	t.Run("5xx", func(t *testing.T) {
		srv := newSim(t, kreatest.Config{Faults: kreatest.Faults{Rate5xx: 1}})
		_, err := srv.NewClient().ListJobs(ctx, krea.ListOptions{})
		var ae *krea.APIError
		if !errors.As(err, &ae) || ae.StatusCode < 500 || !errors.Is(err, krea.ErrRetryable) || errors.Is(err, krea.ErrInvalidRequest) {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("lost answer", func(t *testing.T) {
		srv := newSim(t, kreatest.Config{Faults: kreatest.Faults{LostAnswerRate: 1}})
		_, err := srv.NewClient().Submit(ctx, fluxPath, prompt, krea.WithWebhook("https://bus.example/w/1"))
		check(t, err, 502, kinds{retry: true})
		// The answer was lost but the job exists: exactly the case that
		// makes blind retries create duplicate jobs.
		if n := srv.SubmissionsFor("https://bus.example/w/1"); n != 1 {
			t.Errorf("SubmissionsFor = %d, want 1", n)
		}
	})
}

// TestErrorKindsByStatus covers statuses the simulator does not produce.
func TestErrorKindsByStatus(t *testing.T) {
	tests := []struct {
		status                          int
		body                            string
		retry, invalid, account, exists bool
	}{
		{400, `{"error":"bad"}`, false, true, false, true},
		{401, `{"error":"Unauthorized"}`, false, false, true, true},
		{402, `{"error":"Insufficient credits"}`, false, false, true, true},
		{403, `{"error":"Forbidden"}`, false, false, true, true},
		{404, `{"error":"Job not found"}`, false, true, false, true},
		{408, ``, true, false, false, true},
		{409, `{"error":"conflict"}`, false, true, false, true},
		{413, `{"error":"too large"}`, false, true, false, true},
		{422, `{"error":"unprocessable"}`, false, true, false, true},
		{429, `{"error":"Maximum number of concurrent jobs reached"}`, true, false, false, true},
		{500, `<html>oops</html>`, true, false, false, true},
		{502, ``, true, false, false, true},
		{503, `{"error":"Service unavailable"}`, true, false, false, true},
		{504, `{}`, true, false, false, true},
		{302, ``, false, false, false, true}, // redirects are not followed
	}
	for _, tc := range tests {
		t.Run(fmt.Sprint(tc.status), func(t *testing.T) {
			s := newStub(t, tc.status, tc.body, http.Header{"Location": {"https://elsewhere.example/"}})
			_, err := stubClient(t, s).Submit(context.Background(), fluxPath, prompt)
			var ae *krea.APIError
			if !errors.As(err, &ae) || ae.StatusCode != tc.status {
				t.Fatalf("err = %v (%T)", err, err)
			}
			if errors.Is(err, krea.ErrRetryable) != tc.retry || errors.Is(err, krea.ErrInvalidRequest) != tc.invalid ||
				errors.Is(err, krea.ErrAccount) != tc.account {
				t.Errorf("kinds of %v: retry %v invalid %v account %v", err,
					errors.Is(err, krea.ErrRetryable), errors.Is(err, krea.ErrInvalidRequest), errors.Is(err, krea.ErrAccount))
			}
			if ae.Message == "" {
				t.Error("empty Message")
			}
			if !bytes.Equal(ae.Body, []byte(tc.body)) {
				t.Errorf("Body = %q", ae.Body)
			}
		})
	}
}

func TestRetryAfterHeader(t *testing.T) {
	date := time.Now().Add(90 * time.Second).UTC().Format(http.TimeFormat)
	tests := []struct {
		header string
		min    time.Duration
		max    time.Duration
		ok     bool
	}{
		{"7", 7 * time.Second, 7 * time.Second, true},
		{"0", 0, 0, true},
		{date, 85 * time.Second, 90 * time.Second, true},
		{"Wed, 21 Oct 2015 07:28:00 GMT", 0, 0, true}, // in the past
		{"soon", 0, 0, false},
		{"-3", 0, 0, false},
	}
	for _, tc := range tests {
		t.Run(tc.header, func(t *testing.T) {
			s := newStub(t, 503, `{"error":"busy"}`, http.Header{"Retry-After": {tc.header}})
			_, err := stubClient(t, s).GetJob(context.Background(), "4d0e5f97-9721-4422-b88c-73a9032d7de1")
			d, ok := krea.RetryAfter(err)
			if ok != tc.ok || d < tc.min || d > tc.max {
				t.Errorf("RetryAfter = %v, %v; want [%v, %v], %v", d, ok, tc.min, tc.max, tc.ok)
			}
		})
	}
	if _, ok := krea.RetryAfter(errors.New("plain")); ok {
		t.Error("RetryAfter(plain error) reported a delay")
	}
}

func TestCallerCancellationIsNotRetryable(t *testing.T) {
	srv := newSim(t, kreatest.Config{Faults: kreatest.Faults{Latency: time.Minute}})
	c := srv.NewClient()
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		_, err := c.Submit(ctx, fluxPath, prompt)
		errc <- err
	}()
	// Wait until the request is in the simulator, then cancel.
	kreatest.CheckFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		if srv.Requests() == 0 {
			return errors.New("request not arrived")
		}
		return nil
	})
	cancel()
	select {
	case err := <-errc:
		if !errors.Is(err, context.Canceled) || errors.Is(err, krea.ErrRetryable) {
			t.Fatalf("err = %v; want context.Canceled and not retryable", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Submit did not return after cancel")
	}
	if srv.Submissions() != 0 {
		t.Error("cancelled submission created a job")
	}
}

func TestPerCallTimeoutIsRetryable(t *testing.T) {
	srv := newSim(t, kreatest.Config{Faults: kreatest.Faults{Latency: time.Minute}})
	c := srv.NewClient(krea.WithTimeout(50 * time.Millisecond))
	start := time.Now()
	_, err := c.Submit(context.Background(), fluxPath, prompt)
	if time.Since(start) > 10*time.Second {
		t.Fatalf("timeout took %v", time.Since(start))
	}
	var ne *krea.NetworkError
	if !errors.As(err, &ne) || !ne.Timeout || !errors.Is(err, krea.ErrRetryable) {
		t.Fatalf("err = %v (%T); want a retryable timeout NetworkError", err, err)
	}
	if !ne.RequestSent {
		t.Error("RequestSent = false, but the simulator had the request")
	}
}

func TestConnectionRefusedIsRetryable(t *testing.T) {
	dead := httptest.NewServer(http.NotFoundHandler())
	url := dead.URL
	dead.Close()
	c, err := krea.NewClient("tok", krea.WithBaseURL(url))
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Submit(context.Background(), fluxPath, prompt)
	var ne *krea.NetworkError
	if !errors.As(err, &ne) || !errors.Is(err, krea.ErrRetryable) || ne.RequestSent || ne.Timeout {
		t.Fatalf("err = %v (%+v)", err, ne)
	}
}

func TestTokenNeverInErrors(t *testing.T) {
	const token = "sk-very-secret-token-123"
	echo := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// A misbehaving proxy that echoes the request headers back.
		w.WriteHeader(http.StatusBadGateway)
		fmt.Fprintf(w, `{"error":"upstream said: %s","message":"auth was %s"}`, r.Header.Get("Authorization"), r.Header.Get("Authorization"))
	}))
	defer echo.Close()
	c, err := krea.NewClient(token, krea.WithBaseURL(echo.URL))
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Submit(context.Background(), fluxPath, prompt)
	if err == nil || strings.Contains(err.Error(), token) {
		t.Fatalf("error leaks the token: %v", err)
	}
	var ae *krea.APIError
	if errors.As(err, &ae) && (strings.Contains(ae.Message, token) || strings.Contains(ae.Code, token)) {
		t.Fatalf("APIError fields leak the token: %+v", ae)
	}
	if _, err := krea.NewClient(token + "\n"); err == nil || strings.Contains(err.Error(), token) {
		t.Fatalf("NewClient error for a bad token = %v", err)
	}
	dead := httptest.NewServer(http.NotFoundHandler())
	dead.Close()
	c, _ = krea.NewClient(token, krea.WithBaseURL(dead.URL))
	if _, err := c.GetJob(context.Background(), "x"); err == nil || strings.Contains(err.Error(), token) {
		t.Fatalf("network error = %v", err)
	}
}

func TestWebhookURLNeverInErrors(t *testing.T) {
	srv := newSim(t, kreatest.Config{Faults: kreatest.Faults{Rate5xx: 1}})
	const hook = "https://bus.example/webhooks/krea/req-1.c2VjcmV0LXNpZ25hdHVyZQ"
	_, err := srv.NewClient().Submit(context.Background(), fluxPath, prompt, krea.WithWebhook(hook))
	if err == nil || strings.Contains(err.Error(), "c2VjcmV0") {
		t.Fatalf("err = %v", err)
	}
	_, err = srv.NewClient().Submit(context.Background(), fluxPath, prompt, krea.WithWebhook("ftp://x/c2VjcmV0"))
	if !errors.Is(err, krea.ErrInvalidRequest) || strings.Contains(err.Error(), "c2VjcmV0") {
		t.Fatalf("err = %v", err)
	}
}

func TestLocalValidationSendsNothing(t *testing.T) {
	srv := newSim(t, kreatest.Config{})
	c := srv.NewClient()
	ctx := context.Background()
	for _, p := range []string{"", "/", "generate/image/a/b", "/generate/image/../../jobs", "/generate//x",
		"/generate/image/a/b?x=1", "/generate/image/a/b#f", "/generate/image/a b/c", "//evil.example/x", "/generate/image/%2e%2e/x"} {
		if _, err := c.Submit(ctx, p, prompt); !errors.Is(err, krea.ErrInvalidRequest) {
			t.Errorf("Submit(%q) err = %v, want ErrInvalidRequest", p, err)
		}
	}
	for _, in := range []string{`[1]`, `"x"`, `{"a":`, `null`} {
		if _, err := c.Submit(ctx, fluxPath, json.RawMessage(in)); !errors.Is(err, krea.ErrInvalidRequest) {
			t.Errorf("Submit(input %s) err = %v", in, err)
		}
	}
	for _, h := range []string{"not a url", "/relative", "ftp://x/y", "https://x/\r\nX-Evil: 1"} {
		if _, err := c.Submit(ctx, fluxPath, prompt, krea.WithWebhook(h)); !errors.Is(err, krea.ErrInvalidRequest) {
			t.Errorf("Submit(webhook %q) err = %v", h, err)
		}
	}
	for _, id := range []string{"", ".", ".."} {
		if _, err := c.GetJob(ctx, id); !errors.Is(err, krea.ErrInvalidRequest) {
			t.Errorf("GetJob(%q) err = %v", id, err)
		}
		if err := c.CancelJob(ctx, id); !errors.Is(err, krea.ErrInvalidRequest) {
			t.Errorf("CancelJob(%q) err = %v", id, err)
		}
	}
	for _, o := range []krea.ListOptions{{Limit: -1}, {Limit: 1001}, {Status: "a.b"}} {
		if _, err := c.ListJobs(ctx, o); !errors.Is(err, krea.ErrInvalidRequest) {
			t.Errorf("ListJobs(%+v) err = %v", o, err)
		}
	}
	if n := srv.Requests(); n != 0 {
		t.Errorf("simulator saw %d requests", n)
	}
}

func TestGetJobEscapesID(t *testing.T) {
	s := newStub(t, 404, `{"error":"Job not found"}`, nil)
	_, err := stubClient(t, s).GetJob(context.Background(), "a/../b?c")
	if !errors.Is(err, krea.ErrNotFound) {
		t.Fatalf("err = %v", err)
	}
	r := <-s.got
	if r.URL.RawPath != "/jobs/a%2F..%2Fb%3Fc" && r.URL.EscapedPath() != "/jobs/a%2F..%2Fb%3Fc" {
		t.Errorf("path = %q", r.URL.EscapedPath())
	}
}

func TestMalformedSuccessIsNotRetryable(t *testing.T) {
	for name, body := range map[string]string{
		"not json":  `<html>`,
		"no job_id": `{"status":"queued"}`,
		"bad state": `{"job_id":"4d0e5f97-9721-4422-b88c-73a9032d7de1","status":"Queued!"}`,
		"huge":      `{"job_id":"4d0e5f97-9721-4422-b88c-73a9032d7de1","status":"queued","x":"` + strings.Repeat("a", krea.MaxResponseBytes) + `"}`,
	} {
		t.Run(name, func(t *testing.T) {
			s := newStub(t, 200, body, nil)
			_, err := stubClient(t, s).Submit(context.Background(), fluxPath, prompt)
			var me *krea.MalformedResponseError
			if !errors.As(err, &me) || !errors.Is(err, krea.ErrMalformedResponse) || errors.Is(err, krea.ErrRetryable) {
				t.Fatalf("err = %v (%T)", err, err)
			}
			if len(me.Body) > krea.MaxResponseBytes {
				t.Errorf("Body kept %d bytes", len(me.Body))
			}
		})
	}
	s := newStub(t, 200, strings.Replace(jobJSON, "4d0e5f97", "00000000", 1), nil)
	if _, err := stubClient(t, s).GetJob(context.Background(), "4d0e5f97-9721-4422-b88c-73a9032d7de1"); !errors.Is(err, krea.ErrMalformedResponse) {
		t.Errorf("GetJob answer for another job: err = %v", err)
	}
}

func TestListJobsPaginates(t *testing.T) {
	srv := newSim(t, kreatest.Config{RunTime: time.Hour})
	c := srv.NewClient()
	ctx := context.Background()
	want := map[string]bool{}
	for range 5 {
		res, err := c.Submit(ctx, fluxPath, prompt)
		if err != nil {
			t.Fatal(err)
		}
		want[res.Job.JobID] = true
	}
	seen := map[string]bool{}
	var sizes []int
	opts := krea.ListOptions{Limit: 2}
	for {
		page, err := c.ListJobs(ctx, opts)
		if err != nil {
			t.Fatal(err)
		}
		for i, j := range page.Items {
			if !json.Valid(j.Raw) {
				t.Fatalf("item %d: Raw %q", i, j.Raw)
			}
		}
		sizes = append(sizes, len(page.Items))
		for _, j := range page.Items {
			if seen[j.JobID] {
				t.Errorf("job %s listed twice", j.JobID)
			}
			seen[j.JobID] = true
		}
		if page.NextCursor == "" {
			break
		}
		opts.Cursor = page.NextCursor
	}
	if fmt.Sprint(sizes) != "[2 2 1]" || len(seen) != len(want) {
		t.Errorf("pages %v, saw %d of %d jobs", sizes, len(seen), len(want))
	}
	page, err := c.ListJobs(ctx, krea.ListOptions{Status: krea.StatusCompleted})
	if err != nil || len(page.Items) != 0 {
		t.Errorf("completed filter: %v, %v", page, err)
	}
	page, err = c.ListJobs(ctx, krea.ListOptions{Types: []string{"flux-1-dev"}, Limit: 10})
	if err != nil || len(page.Items) != 5 {
		t.Errorf("types filter: %d items, %v", len(page.Items), err)
	}
}

func TestListJobsAcceptsBothCursorSpellings(t *testing.T) {
	for body, want := range map[string]string{
		`{"items":[],"next_cursor":"2026-02-13T02:20:58.265Z"}`: "2026-02-13T02:20:58.265Z",
		`{"items":[],"nextCursor":"2026-02-13T02:20:58.265Z"}`:  "2026-02-13T02:20:58.265Z",
		`{"items":[],"next_cursor":null}`:                       "",
		`{"items":[` + jobJSON + `]}`:                           "",
	} {
		s := newStub(t, 200, body, nil)
		l, err := stubClient(t, s).ListJobs(context.Background(), krea.ListOptions{Cursor: "c", Limit: 3, Types: []string{"a", "b"}, Status: krea.StatusFailed})
		if err != nil {
			t.Fatalf("%s: %v", body, err)
		}
		if l.NextCursor != want {
			t.Errorf("%s: NextCursor = %q, want %q", body, l.NextCursor, want)
		}
		if q := (<-s.got).URL.Query(); q.Get("cursor") != "c" || q.Get("limit") != "3" || q.Get("types") != "a,b" || q.Get("status") != "failed" {
			t.Errorf("query = %v", q)
		}
	}
}

func TestCancelJob(t *testing.T) {
	srv := newSim(t, kreatest.Config{RunTime: time.Hour})
	c := srv.NewClient()
	ctx := context.Background()
	res, err := c.Submit(ctx, fluxPath, prompt)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.CancelJob(ctx, res.Job.JobID); err != nil {
		t.Fatal(err)
	}
	j, err := c.GetJob(ctx, res.Job.JobID)
	if err != nil || j.Status != krea.StatusCancelled || j.CompletedAt == nil {
		t.Fatalf("after cancel: %+v, %v", j, err)
	}
	if err := c.CancelJob(ctx, "4d0e5f97-9721-4422-b88c-73a9032d7de1"); !errors.Is(err, krea.ErrNotFound) {
		t.Errorf("cancel unknown: %v", err)
	}
}

func TestNewClientOptions(t *testing.T) {
	bad := map[string][]krea.Option{
		"scheme":       {krea.WithBaseURL("ftp://api.krea.ai")},
		"no host":      {krea.WithBaseURL("https://")},
		"query":        {krea.WithBaseURL("https://api.krea.ai/?a=b")},
		"userinfo":     {krea.WithBaseURL("https://u:p@api.krea.ai")},
		"nil client":   {krea.WithHTTPClient(nil)},
		"negative":     {krea.WithTimeout(-time.Second)},
		"ua injection": {krea.WithUserAgent("x\r\nX-Evil: 1")},
	}
	for name, opts := range bad {
		if _, err := krea.NewClient("tok", opts...); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
	if _, err := krea.NewClient(""); err == nil {
		t.Error("empty token accepted")
	}
	c, err := krea.NewClient("tok")
	if err != nil || c.BaseURL() != krea.DefaultBaseURL {
		t.Fatalf("default client: %v, %v", c.BaseURL(), err)
	}
	c, err = krea.NewClient("tok", krea.WithBaseURL("http://localhost:1/prefix/"), krea.WithTimeout(0), krea.WithHTTPClient(&http.Client{}))
	if err != nil || c.BaseURL() != "http://localhost:1/prefix" {
		t.Fatalf("custom client: %v, %v", c.BaseURL(), err)
	}
}

func TestBaseURLPrefixIsKept(t *testing.T) {
	s := newStub(t, 200, jobJSON, nil)
	c, err := krea.NewClient("tok", krea.WithBaseURL(s.URL+"/krea/"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Submit(context.Background(), fluxPath, prompt); err != nil {
		t.Fatal(err)
	}
	if p := (<-s.got).URL.Path; p != "/krea"+fluxPath {
		t.Errorf("path = %q", p)
	}
}
