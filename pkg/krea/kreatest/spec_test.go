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
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/gorillamux"

	"github.com/kreabus/kreabus/pkg/krea"
	"github.com/kreabus/kreabus/pkg/krea/kreatest"
)

// The tests in this file check the simulator's answers, and the requests
// pkg/krea's client makes, against Krea's published OpenAPI document with
// kin-openapi's validator. The document is not part of the repository: it
// lives in ../shared/krea/openapi.json next to the checkout, and the tests
// skip when it is absent.

// liveExceptions are the answers Krea gives beyond its document, each by
// name. An answer whose status the document does not list for its path
// must be one of these, and its body must still be Krea's error object
// ({"error": string}); every other answer must match the document.
var liveExceptions = []struct {
	name  string
	match func(method, path string, code int) bool
}{
	// Krea answers a missing or wrong token with 401 everywhere; the
	// document lists 401 on some paths only (not GET /jobs/{id}).
	{"401 on any path", func(_, _ string, code int) bool { return code == http.StatusUnauthorized }},
	// A retired model: {error: "model_unavailable", reason, message,
	// sunset_date, replacement?, migration_url?} (Krea's deprecations page).
	{"410 on a retired model's path", func(method, path string, code int) bool {
		return code == http.StatusGone && method == http.MethodPost && strings.HasPrefix(path, "/generate/")
	}},
	// Any server answers 5xx now and then (a gateway, an outage).
	{"5xx on any path", func(_, _ string, code int) bool { return code >= 500 && code <= 599 }},
}

func liveException(method, path string, code int) string {
	for _, e := range liveExceptions {
		if e.match(method, path, code) {
			return e.name
		}
	}
	return ""
}

// spec is Krea's OpenAPI document, loaded and checked by kin-openapi, with
// a router over a server URL.
type spec struct {
	doc    *openapi3.T
	router routers.Router
}

// loadSpec finds the repository root (the directory holding go.mod) above
// the package directory, loads ../shared/krea/openapi.json beside it and
// routes requests to base.
func loadSpec(t *testing.T, base string) *spec {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			break
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Skip("repository root not found")
		}
		dir = parent
	}
	path := filepath.Join(dir, "..", "shared", "krea", "openapi.json")
	if _, err := os.Stat(path); err != nil {
		t.Skipf("Krea OpenAPI document not available: %v", err)
	}
	loader := openapi3.NewLoader()
	doc, err := loader.LoadFromFile(path)
	if err != nil {
		t.Fatalf("openapi.json: %v", err)
	}
	// Krea's own examples break its schemas here and there (bloom-enhance's
	// lacks the required model): they are not what is checked.
	if err := doc.Validate(loader.Context, openapi3.DisableExamplesValidation()); err != nil {
		t.Fatalf("openapi.json is not a valid OpenAPI document: %v", err)
	}
	if !doc.IsOpenAPI31OrLater() {
		t.Fatalf("openapi %s: the schemas here are read as JSON Schema 2020-12 (OpenAPI 3.1)", doc.OpenAPI)
	}
	doc.Servers = openapi3.Servers{{URL: base}} // Krea's is https://api.krea.ai
	router, err := gorillamux.NewRouter(doc)
	if err != nil {
		t.Fatal(err)
	}
	return &spec{doc: doc, router: router}
}

// exchange is one request and its answer.
type exchange struct {
	method, path string // path with query
	body         []byte
	code         int
	header       http.Header
	answer       []byte
}

func (x exchange) json() map[string]any {
	var v map[string]any
	_ = json.Unmarshal(x.answer, &v)
	return v
}

// validate checks the request (unless it is deliberately bad) and the
// answer against the document, or against the live exception it falls
// under; it returns the exception's name, "" for a documented answer.
func (s *spec) validate(x exchange, badRequest bool) (string, error) {
	req, err := http.NewRequest(x.method, s.doc.Servers[0].URL+x.path, bytes.NewReader(x.body))
	if err != nil {
		return "", err
	}
	if len(x.body) > 0 {
		req.Header.Set("Content-Type", "application/json")
	}
	route, params, err := s.router.FindRoute(req)
	if err != nil {
		return "", fmt.Errorf("no such operation in the document: %w", err)
	}
	in := &openapi3filter.RequestValidationInput{Request: req, PathParams: params, Route: route,
		Options: &openapi3filter.Options{AuthenticationFunc: openapi3filter.NoopAuthenticationFunc, MultiError: true}}
	if !badRequest {
		if err := openapi3filter.ValidateRequest(context.Background(), in); err != nil {
			return "", fmt.Errorf("request does not match the document: %w", err)
		}
	}
	if route.Operation.Responses.Status(x.code) == nil {
		name := liveException(x.method, route.Path, x.code)
		if name == "" {
			return "", fmt.Errorf("status %d is neither in the document nor a live exception", x.code)
		}
		var e struct {
			Error *string `json:"error"`
		}
		if err := json.Unmarshal(x.answer, &e); err != nil || e.Error == nil {
			return name, fmt.Errorf("%s: body %s is not Krea's error object", name, x.answer)
		}
		return name, nil
	}
	return "", openapi3filter.ValidateResponse(context.Background(), &openapi3filter.ResponseValidationInput{
		RequestValidationInput: in, Status: x.code, Header: x.header, Body: io.NopCloser(bytes.NewReader(x.answer)),
		Options: &openapi3filter.Options{IncludeResponseStatus: true, MultiError: true},
	})
}

// TestSpecValidatorCatchesViolations makes sure the check is not vacuously
// happy: a conformance test is only as good as its validator.
func TestSpecValidatorCatchesViolations(t *testing.T) {
	s := loadSpec(t, "http://sim.test")
	const id = "4d0e5f97-9721-4422-b88c-73a9032d7de1"
	ok200 := func(body string) exchange {
		return exchange{method: "GET", path: "/jobs/" + id, code: 200, answer: []byte(body),
			header: http.Header{"Content-Type": {"application/json"}}}
	}
	good := []exchange{
		ok200(`{"job_id":"` + id + `","status":"queued","created_at":"2026-02-13T02:20:58.265Z"}`),
		ok200(`{"job_id":"` + id + `","status":"completed","created_at":"2026-02-13T02:20:58.265Z","completed_at":"2026-02-13T02:21:09.001Z","result":{"urls":["https://gen.krea.ai/images/x.png"]}}`),
	}
	for _, x := range good {
		if name, err := s.validate(x, false); err != nil || name != "" {
			t.Errorf("good answer %s refused: %q %v", x.answer, name, err)
		}
	}
	bad := map[string]exchange{
		"completed_at null": ok200(`{"job_id":"` + id + `","status":"queued","created_at":"2026-02-13T02:20:58.265Z","completed_at":null}`),
		"result null":       ok200(`{"job_id":"` + id + `","status":"failed","created_at":"2026-02-13T02:20:58.265Z","result":null}`),
		"unknown status":    ok200(`{"job_id":"` + id + `","status":"done","created_at":"2026-02-13T02:20:58.265Z"}`),
		"missing created":   ok200(`{"job_id":"` + id + `","status":"queued"}`),
		"409 on DELETE":     {method: "DELETE", path: "/jobs/" + id, code: 409, answer: []byte(`{"error":"x"}`)},
		"429 on GET":        {method: "GET", path: "/jobs/" + id, code: 429, answer: []byte(`{"error":"x"}`)},
		"5xx not an error":  {method: "GET", path: "/jobs/" + id, code: 502, answer: []byte(`<html>`)},
		"submit not null": {method: "POST", path: "/generate/image/bfl/flux-1-dev", body: []byte(`{"prompt":"x"}`), code: 200,
			header: http.Header{"Content-Type": {"application/json"}},
			answer: []byte(`{"job_id":"` + id + `","status":"queued","created_at":"2026-02-13T02:20:58.265Z","completed_at":"2026-02-13T02:21:09.001Z","result":null}`)},
		"request field unknown": {method: "POST", path: "/generate/image/bfl/flux-1-dev", body: []byte(`{"prompt":"x","nope":1}`), code: 400,
			header: http.Header{"Content-Type": {"application/json"}}, answer: []byte(`{"error":"x"}`)},
	}
	for name, x := range bad {
		if _, err := s.validate(x, false); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// TestAnswersMatchSpec checks every kind of answer the simulator gives,
// and every request the client makes, against Krea's OpenAPI document.
func TestAnswersMatchSpec(t *testing.T) {
	const retired = "/generate/video/kling/kling-1"
	var hooks = make(chan []byte, 64)
	receiver := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		hooks <- b
	}))
	t.Cleanup(receiver.Close)
	srv := newSim(t, kreatest.Config{QueueTime: time.Hour, Retired: map[string]kreatest.Retirement{
		retired: {Replacement: "/generate/video/kling/kling-2.1", MigrationURL: "https://docs.krea.ai/developers/deprecations"},
	}})
	s := loadSpec(t, srv.URL)
	tok := srv.Token()
	exceptions := map[string]int{}

	do := func(method, path, auth, body string) exchange {
		t.Helper()
		req, _ := http.NewRequest(method, srv.URL+path, strings.NewReader(body))
		if auth != "" {
			req.Header.Set("Authorization", "Bearer "+auth)
		}
		if body != "" {
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set("X-Webhook-URL", receiver.URL+"/hook")
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return exchange{method: method, path: path, body: []byte(body), code: resp.StatusCode, header: resp.Header, answer: b}
	}
	// expect checks the status and validates; bad marks a request that
	// is meant to break the document.
	expect := func(name string, x exchange, code int, bad bool) exchange {
		t.Helper()
		if x.code != code {
			t.Errorf("%s: status %d, want %d (%s)", name, x.code, code, x.answer)
			return x
		}
		exc, err := s.validate(x, bad)
		if err != nil {
			t.Errorf("%s: %s %s → %d %s:\n  %v", name, x.method, x.path, x.code, x.answer, err)
		}
		if exc != "" {
			exceptions[exc]++
		}
		return x
	}
	// absent checks that a job object leaves out what it does not have.
	absent := func(name string, job map[string]any, keys ...string) {
		t.Helper()
		for _, k := range keys {
			if v, ok := job[k]; ok {
				t.Errorf("%s: %s present (%v): left out until the job has one", name, k, v)
			}
		}
	}

	flux := expect("generate", do("POST", fluxPath, tok, `{"prompt":"a red fox in snow","width":1024,"height":576}`), 200, false)
	train := expect("train", do("POST", "/styles/train", tok, `{"name":"fox","urls":["https://example.com/fox.png"]}`), 200, false)
	id, _ := flux.json()["job_id"].(string)
	trainID, _ := train.json()["job_id"].(string)
	if id == "" || trainID == "" {
		t.Fatalf("no job ids: %s %s", flux.answer, train.answer)
	}

	queued := expect("get queued job", do("GET", "/jobs/"+id, tok, ""), 200, false)
	absent("queued job", queued.json(), "completed_at", "result")
	if err := srv.Finish(id, krea.StatusCompleted, ""); err != nil {
		t.Fatal(err)
	}
	if err := srv.Finish(trainID, krea.StatusCompleted, ""); err != nil {
		t.Fatal(err)
	}
	expect("get completed job", do("GET", "/jobs/"+id, tok, ""), 200, false)
	expect("get completed training", do("GET", "/jobs/"+trainID, tok, ""), 200, false)
	expect("list completed", do("GET", "/jobs?status=completed&limit=10", tok, ""), 200, false)

	failed := expect("generate imagen", do("POST", "/generate/image/google/imagen-4", tok, `{"prompt":"x"}`), 200, false)
	failedID, _ := failed.json()["job_id"].(string)
	if err := srv.Finish(failedID, krea.StatusFailed, "nope"); err != nil {
		t.Fatal(err)
	}
	absent("failed job", expect("get failed job", do("GET", "/jobs/"+failedID, tok, ""), 200, false).json(), "result")

	pending := expect("generate pending", do("POST", fluxPath, tok, `{"prompt":"cancel me"}`), 200, false)
	pendingID, _ := pending.json()["job_id"].(string)
	expect("cancel", do("DELETE", "/jobs/"+pendingID, tok, ""), 200, false)
	absent("cancelled job", expect("get cancelled job", do("GET", "/jobs/"+pendingID, tok, ""), 200, false).json(), "result")
	// Cancelling a finished job: the document lists 200 and 404 only.
	done := expect("cancel a completed job", do("DELETE", "/jobs/"+id, tok, ""), 200, false)
	if st := done.json()["status"]; st != "completed" {
		t.Errorf("cancelling a completed job made it %v", st)
	}

	expect("generate another pending", do("POST", fluxPath, tok, `{"prompt":"pending"}`), 200, false)
	for _, it := range expect("list all", do("GET", "/jobs?limit=10", tok, ""), 200, false).json()["items"].([]any) {
		job := it.(map[string]any)
		if st := krea.Status(job["status"].(string)); !st.IsTerminal() {
			absent("listed "+string(st)+" job", job, "completed_at", "result")
		}
	}
	expect("list page 2", do("GET", "/jobs?cursor=2100-01-01T00:00:00.000Z&limit=2", tok, ""), 200, false)
	expect("list bad limit", do("GET", "/jobs?limit=0", tok, ""), 400, true)
	expect("list unauthorized", do("GET", "/jobs", "", ""), 401, false)

	expect("unknown job", do("GET", "/jobs/4d0e5f97-9721-4422-b88c-73a9032d7de1", tok, ""), 404, false)
	expect("cancel unknown job", do("DELETE", "/jobs/4d0e5f97-9721-4422-b88c-73a9032d7de1", tok, ""), 404, false)
	expect("get job unauthorized", do("GET", "/jobs/"+id, "wrong", ""), 401, false)

	expect("unauthorized", do("POST", fluxPath, "wrong", `{"prompt":"x"}`), 401, false)
	expect("no token", do("POST", fluxPath, "", `{"prompt":"x"}`), 401, false)
	expect("bad body", do("POST", fluxPath, tok, `[1,2]`), 400, true)
	expect("bad train body", do("POST", "/styles/train", tok, `"x"`), 400, true)

	gone := expect("retired model", do("POST", retired, tok, `{"prompt":"x"}`), 410, false)
	var g struct {
		Error        string `json:"error"`
		Reason       string `json:"reason"`
		Message      string `json:"message"`
		SunsetDate   string `json:"sunset_date"`
		Replacement  string `json:"replacement"`
		MigrationURL string `json:"migration_url"`
	}
	if err := json.Unmarshal(gone.answer, &g); err != nil || g.Error != "model_unavailable" || g.Reason == "" ||
		g.Message == "" || g.SunsetDate == "" || !strings.HasPrefix(g.MigrationURL, "https://") {
		t.Errorf("410 body %s: %v", gone.answer, err)
	}

	srv.SetFaults(kreatest.Faults{OutOfCredits: true})
	expect("out of credits", do("POST", fluxPath, tok, `{"prompt":"x"}`), 402, false)
	expect("out of credits (train)", do("POST", "/styles/train", tok, `{"name":"n","urls":[]}`), 402, false)
	srv.SetFaults(kreatest.Faults{Rate429: 1, RetryAfter: time.Second})
	expect("rate limited", do("POST", fluxPath, tok, `{"prompt":"x"}`), 429, false)
	expect("no 429 on reads", do("GET", "/jobs/"+id, tok, ""), 200, false)
	srv.SetFaults(kreatest.Faults{Rate5xx: 1})
	x := do("GET", "/jobs/"+id, tok, "")
	expect("server error", x, max(x.code, 500), false)
	srv.SetFaults(kreatest.Faults{})

	// Webhook bodies are the job object, as GET /jobs/{id} answers it.
	for n := 0; n < 3; {
		select {
		case b := <-hooks:
			n++
			x := exchange{method: "GET", path: "/jobs/" + id, code: 200, header: http.Header{"Content-Type": {"application/json"}}, answer: b}
			if _, err := s.validate(x, false); err != nil {
				t.Errorf("webhook body %s: %v", b, err)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%d webhooks of 3 received", n)
		}
	}

	for _, e := range []string{"401 on any path", "410 on a retired model's path"} {
		if exceptions[e] == 0 {
			t.Errorf("exception %q never exercised", e)
		}
	}
	t.Logf("live exceptions met: %v", exceptions)
}

// TestClientRequestsMatchSpec runs pkg/krea's client against the simulator
// and validates each request it sends against the document.
func TestClientRequestsMatchSpec(t *testing.T) {
	srv := newSim(t, kreatest.Config{RunTime: time.Hour})
	s := loadSpec(t, srv.URL)
	var (
		mu   sync.Mutex
		errs []error
	)
	check := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		r.Body = io.NopCloser(bytes.NewReader(body))
		vr, _ := http.NewRequest(r.Method, srv.URL+r.URL.RequestURI(), bytes.NewReader(body))
		vr.Header = r.Header.Clone()
		route, params, err := s.router.FindRoute(vr)
		if err == nil {
			err = openapi3filter.ValidateRequest(context.Background(), &openapi3filter.RequestValidationInput{
				Request: vr, PathParams: params, Route: route,
				Options: &openapi3filter.Options{AuthenticationFunc: openapi3filter.NoopAuthenticationFunc, MultiError: true}})
		}
		if err != nil {
			mu.Lock()
			errs = append(errs, fmt.Errorf("%s %s: %w", r.Method, r.URL.RequestURI(), err))
			mu.Unlock()
		}
		proxyTo(w, r, srv.URL, body)
	})
	front := httptest.NewServer(check)
	t.Cleanup(front.Close)
	c, err := krea.NewClient(srv.Token(), krea.WithBaseURL(front.URL))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	res, err := c.Submit(ctx, fluxPath, json.RawMessage(`{"prompt":"a lighthouse","width":1024,"height":576}`), krea.WithWebhook("https://bridge.example/webhooks/krea/x"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.GetJob(ctx, res.Job.JobID); err != nil {
		t.Fatal(err)
	}
	if _, err := c.ListJobs(ctx, krea.ListOptions{Limit: 10, Status: krea.StatusQueued}); err != nil {
		t.Fatal(err)
	}
	if err := c.CancelJob(ctx, res.Job.JobID); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if err := errors.Join(errs...); err != nil {
		t.Error(err)
	}
}

// proxyTo forwards r (its body already read) to base and copies the answer.
func proxyTo(w http.ResponseWriter, r *http.Request, base string, body []byte) {
	req, _ := http.NewRequest(r.Method, base+r.URL.RequestURI(), bytes.NewReader(body))
	req.Header = r.Header.Clone()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	defer resp.Body.Close()
	for k, v := range resp.Header {
		w.Header()[k] = v
	}
	w.WriteHeader(resp.StatusCode)
	_, _ = io.Copy(w, resp.Body)
}
