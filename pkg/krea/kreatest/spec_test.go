package kreatest_test

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kreabus/kreabus/pkg/krea"
	"github.com/kreabus/kreabus/pkg/krea/kreatest"
)

// The tests in this file check the simulator's answers against Krea's
// published OpenAPI document. The document is not part of the repository:
// it lives in ../shared/krea/openapi.json next to the checkout, and the
// tests skip when it is absent.

// loadSpec finds the repository root (the directory holding go.mod) above
// the package directory and reads ../shared/krea/openapi.json beside it.
func loadSpec(t *testing.T) map[string]any {
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
	b, err := os.ReadFile(filepath.Join(dir, "..", "shared", "krea", "openapi.json"))
	if err != nil {
		t.Skipf("Krea OpenAPI document not available: %v", err)
	}
	var doc map[string]any
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatalf("openapi.json: %v", err)
	}
	return doc
}

// schemaChecker validates decoded JSON against the subset of JSON Schema
// (OpenAPI 3.0 and 3.1 flavours) Krea's document uses: type (string or
// list), nullable, enum, const, required, properties, additionalProperties,
// items, min/maxItems, min/maxLength, minimum/maximum, formats date-time,
// uuid and uri, allOf/anyOf/oneOf and local $ref.
type schemaChecker struct {
	doc map[string]any
	// nullOptional lets a property that is not required be null even when
	// its schema says otherwise. Krea's spec types completed_at as a string
	// and result as an object on GET /jobs, while its docs and real answers
	// show both as null until the job ends (and result stays null for
	// failed and cancelled jobs). Only checks of such jobs turn it on.
	nullOptional bool
}

func (c *schemaChecker) check(schema any, v any, at string) []string {
	s, ok := schema.(map[string]any)
	if !ok {
		if b, ok := schema.(bool); ok && !b {
			return []string{at + ": no value allowed"}
		}
		return nil // true or {}: anything goes
	}
	if ref, ok := s["$ref"].(string); ok {
		target, err := c.resolve(ref)
		if err != nil {
			return []string{at + ": " + err.Error()}
		}
		return c.check(target, v, at)
	}
	if v == nil && s["nullable"] == true {
		return nil
	}
	var errs []string
	if all, ok := s["allOf"].([]any); ok {
		for _, sub := range all {
			errs = append(errs, c.check(sub, v, at)...)
		}
	}
	if anyOf, ok := s["anyOf"].([]any); ok {
		if c.matches(anyOf, v, at) == 0 {
			errs = append(errs, at+": matches none of anyOf")
		}
	}
	if oneOf, ok := s["oneOf"].([]any); ok {
		if n := c.matches(oneOf, v, at); n != 1 {
			errs = append(errs, fmt.Sprintf("%s: matches %d of oneOf, want 1", at, n))
		}
	}
	if t, ok := s["type"]; ok {
		var types []string
		switch t := t.(type) {
		case string:
			types = []string{t}
		case []any:
			for _, x := range t {
				types = append(types, fmt.Sprint(x))
			}
		}
		if s["nullable"] == true {
			types = append(types, "null")
		}
		if !slices.ContainsFunc(types, func(tt string) bool { return typeOK(tt, v) }) {
			return append(errs, fmt.Sprintf("%s: %s is not of type %v", at, short(v), types))
		}
	}
	if enum, ok := s["enum"].([]any); ok && !slices.ContainsFunc(enum, func(e any) bool { return reflect.DeepEqual(e, v) }) {
		errs = append(errs, fmt.Sprintf("%s: %s not in enum %v", at, short(v), enum))
	}
	if cst, ok := s["const"]; ok && !reflect.DeepEqual(cst, v) {
		errs = append(errs, fmt.Sprintf("%s: %s is not %v", at, short(v), cst))
	}
	switch v := v.(type) {
	case string:
		errs = append(errs, checkString(s, v, at)...)
	case float64:
		if m, ok := s["minimum"].(float64); ok && v < m {
			errs = append(errs, fmt.Sprintf("%s: %v < minimum %v", at, v, m))
		}
		if m, ok := s["maximum"].(float64); ok && v > m {
			errs = append(errs, fmt.Sprintf("%s: %v > maximum %v", at, v, m))
		}
	case []any:
		if m, ok := s["minItems"].(float64); ok && float64(len(v)) < m {
			errs = append(errs, fmt.Sprintf("%s: %d items < minItems %v", at, len(v), m))
		}
		if m, ok := s["maxItems"].(float64); ok && float64(len(v)) > m {
			errs = append(errs, fmt.Sprintf("%s: %d items > maxItems %v", at, len(v), m))
		}
		if items, ok := s["items"]; ok {
			for i, x := range v {
				errs = append(errs, c.check(items, x, fmt.Sprintf("%s[%d]", at, i))...)
			}
		}
	case map[string]any:
		errs = append(errs, c.checkObject(s, v, at)...)
	}
	return errs
}

func (c *schemaChecker) checkObject(s map[string]any, v map[string]any, at string) []string {
	var errs []string
	required := map[string]bool{}
	if req, ok := s["required"].([]any); ok {
		for _, r := range req {
			name := fmt.Sprint(r)
			required[name] = true
			if _, ok := v[name]; !ok {
				errs = append(errs, fmt.Sprintf("%s: missing required %q", at, name))
			}
		}
	}
	props, _ := s["properties"].(map[string]any)
	for name, val := range v {
		if sub, ok := props[name]; ok {
			if val == nil && c.nullOptional && !required[name] {
				continue
			}
			errs = append(errs, c.check(sub, val, at+"."+name)...)
			continue
		}
		switch ap := s["additionalProperties"].(type) {
		case bool:
			if !ap {
				errs = append(errs, fmt.Sprintf("%s: unexpected property %q", at, name))
			}
		case map[string]any:
			errs = append(errs, c.check(ap, val, at+"."+name)...)
		}
	}
	return errs
}

func checkString(s map[string]any, v, at string) []string {
	var errs []string
	n := float64(len([]rune(v)))
	if m, ok := s["minLength"].(float64); ok && n < m {
		errs = append(errs, fmt.Sprintf("%s: shorter than %v", at, m))
	}
	if m, ok := s["maxLength"].(float64); ok && n > m {
		errs = append(errs, fmt.Sprintf("%s: longer than %v", at, m))
	}
	switch s["format"] {
	case "date-time":
		if _, err := time.Parse(time.RFC3339Nano, v); err != nil {
			errs = append(errs, fmt.Sprintf("%s: %q is not a date-time", at, v))
		}
	case "uuid":
		if !krea.ValidJobID(v) {
			errs = append(errs, fmt.Sprintf("%s: %q is not a uuid", at, v))
		}
	case "uri":
		if u, err := url.Parse(v); err != nil || u.Scheme == "" {
			errs = append(errs, fmt.Sprintf("%s: %q is not a uri", at, v))
		}
	}
	return errs
}

func (c *schemaChecker) matches(schemas []any, v any, at string) int {
	n := 0
	for _, sub := range schemas {
		if len(c.check(sub, v, at)) == 0 {
			n++
		}
	}
	return n
}

func (c *schemaChecker) resolve(ref string) (any, error) {
	p, ok := strings.CutPrefix(ref, "#/")
	if !ok {
		return nil, fmt.Errorf("only local $ref supported, got %q", ref)
	}
	var cur any = c.doc
	for _, tok := range strings.Split(p, "/") {
		tok = strings.ReplaceAll(strings.ReplaceAll(tok, "~1", "/"), "~0", "~")
		m, ok := cur.(map[string]any)
		if !ok {
			return nil, fmt.Errorf("$ref %q: %q is not an object", ref, tok)
		}
		if cur, ok = m[tok]; !ok {
			return nil, fmt.Errorf("$ref %q: no %q", ref, tok)
		}
	}
	return cur, nil
}

func typeOK(t string, v any) bool {
	switch t {
	case "null":
		return v == nil
	case "boolean":
		_, ok := v.(bool)
		return ok
	case "string":
		_, ok := v.(string)
		return ok
	case "number":
		_, ok := v.(float64)
		return ok
	case "integer":
		f, ok := v.(float64)
		return ok && f == math.Trunc(f)
	case "array":
		_, ok := v.([]any)
		return ok
	case "object":
		_, ok := v.(map[string]any)
		return ok
	}
	return false
}

func short(v any) string {
	b, _ := json.Marshal(v)
	if len(b) > 80 {
		return string(b[:80]) + "…"
	}
	return string(b)
}

// responseSchema returns the JSON schema of one documented answer.
func responseSchema(t *testing.T, doc map[string]any, path, method, code string) any {
	t.Helper()
	c := &schemaChecker{doc: doc}
	ptr := "#/paths/" + strings.ReplaceAll(path, "/", "~1") + "/" + method + "/responses/" + code
	resp, err := c.resolve(ptr)
	if err != nil {
		t.Fatalf("spec: %v", err)
	}
	if r, ok := resp.(map[string]any); ok {
		if ref, ok := r["$ref"].(string); ok {
			if resp, err = c.resolve(ref); err != nil {
				t.Fatal(err)
			}
		}
	}
	schema, err := (&schemaChecker{doc: map[string]any{"r": resp}}).resolve("#/r/content/application~1json/schema")
	if err != nil {
		t.Fatalf("spec: %s %s %s has no JSON schema: %v", method, path, code, err)
	}
	return schema
}

// TestSchemaCheckerCatchesViolations makes sure the checker is not
// vacuously happy: a conformance test is only as good as its checker.
func TestSchemaCheckerCatchesViolations(t *testing.T) {
	doc := map[string]any{}
	_ = json.Unmarshal([]byte(`{"components":{"schemas":{"Job":{
		"type":"object","required":["job_id","status"],"additionalProperties":false,
		"properties":{"job_id":{"type":"string","format":"uuid"},
		"status":{"type":"string","enum":["queued","completed"]},
		"n":{"type":"integer","minimum":1,"maximum":3},
		"at":{"type":["string","null"],"format":"date-time"},
		"urls":{"type":"array","maxItems":1,"items":{"type":"string","format":"uri"}},
		"opt":{"type":"string"},
		"one":{"oneOf":[{"type":"string"},{"type":"string","maxLength":3}]},
		"any":{"anyOf":[{"type":"integer"},{"type":"boolean"}]},
		"old":{"type":"string","nullable":true}}}}}}`), &doc)
	c := &schemaChecker{doc: doc}
	ref := map[string]any{"$ref": "#/components/schemas/Job"}
	good := `{"job_id":"4d0e5f97-9721-4422-b88c-73a9032d7de1","status":"queued","n":2,"at":null,"urls":["https://x/y"],"one":"abcd","any":true,"old":null}`
	var v any
	_ = json.Unmarshal([]byte(good), &v)
	if errs := c.check(ref, v, "$"); len(errs) != 0 {
		t.Fatalf("good value rejected: %v", errs)
	}
	bad := map[string]string{
		"missing required": `{"job_id":"4d0e5f97-9721-4422-b88c-73a9032d7de1"}`,
		"uuid":             `{"job_id":"nope","status":"queued"}`,
		"enum":             `{"job_id":"4d0e5f97-9721-4422-b88c-73a9032d7de1","status":"weird"}`,
		"integer":          `{"job_id":"4d0e5f97-9721-4422-b88c-73a9032d7de1","status":"queued","n":1.5}`,
		"maximum":          `{"job_id":"4d0e5f97-9721-4422-b88c-73a9032d7de1","status":"queued","n":4}`,
		"date-time":        `{"job_id":"4d0e5f97-9721-4422-b88c-73a9032d7de1","status":"queued","at":"today"}`,
		"items":            `{"job_id":"4d0e5f97-9721-4422-b88c-73a9032d7de1","status":"queued","urls":["x"]}`,
		"maxItems":         `{"job_id":"4d0e5f97-9721-4422-b88c-73a9032d7de1","status":"queued","urls":["https://a","https://b"]}`,
		"additional":       `{"job_id":"4d0e5f97-9721-4422-b88c-73a9032d7de1","status":"queued","extra":1}`,
		"oneOf both":       `{"job_id":"4d0e5f97-9721-4422-b88c-73a9032d7de1","status":"queued","one":"abc"}`,
		"anyOf none":       `{"job_id":"4d0e5f97-9721-4422-b88c-73a9032d7de1","status":"queued","any":"x"}`,
		"null optional":    `{"job_id":"4d0e5f97-9721-4422-b88c-73a9032d7de1","status":"queued","opt":null}`,
		"not object":       `[1]`,
	}
	for name, b := range bad {
		var v any
		_ = json.Unmarshal([]byte(b), &v)
		if errs := c.check(ref, v, "$"); len(errs) == 0 {
			t.Errorf("%s: %s accepted", name, b)
		}
	}
	c.nullOptional = true
	_ = json.Unmarshal([]byte(bad["null optional"]), &v)
	if errs := c.check(ref, v, "$"); len(errs) != 0 {
		t.Errorf("nullOptional: %v", errs)
	}
}

// TestAnswersMatchSpec checks every kind of answer the simulator gives
// against the schema Krea's OpenAPI document gives for it.
func TestAnswersMatchSpec(t *testing.T) {
	doc := loadSpec(t)
	const retired = "/generate/video/kling/kling-1"
	srv := newSim(t, kreatest.Config{QueueTime: time.Hour, Retired: map[string]kreatest.Retirement{
		retired: {Replacement: "/generate/video/kling/kling-2.1", MigrationURL: "https://docs.krea.ai/developers/deprecations"},
	}})
	type answer struct {
		code int
		v    any
	}
	call := func(method, path, auth, body string) answer {
		t.Helper()
		req, _ := http.NewRequest(method, srv.URL+path, strings.NewReader(body))
		if auth != "" {
			req.Header.Set("Authorization", "Bearer "+auth)
		}
		if body != "" {
			req.Header.Set("Content-Type", "application/json")
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		var v any
		if len(b) > 0 {
			if err := json.Unmarshal(b, &v); err != nil {
				t.Fatalf("%s %s: answer %q is not JSON", method, path, b)
			}
		}
		return answer{resp.StatusCode, v}
	}
	tok := srv.Token()
	expect := func(name string, a answer, code int, specPath, method string, nullOptional bool) {
		t.Helper()
		if a.code != code {
			t.Errorf("%s: status %d, want %d (%s)", name, a.code, code, short(a.v))
			return
		}
		schema := responseSchema(t, doc, specPath, method, fmt.Sprint(code))
		c := &schemaChecker{doc: doc, nullOptional: nullOptional}
		if errs := c.check(schema, a.v, "$"); len(errs) > 0 {
			t.Errorf("%s: answer %s does not match the spec:\n  %s", name, short(a.v), strings.Join(errs, "\n  "))
		}
	}

	flux := call("POST", fluxPath, tok, `{"prompt":"a red fox in snow"}`)
	expect("generate", flux, 200, fluxPath, "post", false)
	train := call("POST", "/styles/train", tok, `{"name":"fox","urls":["https://example.com/fox.png"]}`)
	expect("train", train, 200, "/styles/train", "post", false)
	id := flux.v.(map[string]any)["job_id"].(string)
	trainID := train.v.(map[string]any)["job_id"].(string)

	expect("get queued job", call("GET", "/jobs/"+id, tok, ""), 200, "/jobs/{id}", "get", true)
	if err := srv.Finish(id, krea.StatusCompleted, ""); err != nil {
		t.Fatal(err)
	}
	if err := srv.Finish(trainID, krea.StatusCompleted, ""); err != nil {
		t.Fatal(err)
	}
	// A finished job fills completed_at and result: no leniency needed.
	expect("get completed job", call("GET", "/jobs/"+id, tok, ""), 200, "/jobs/{id}", "get", false)
	expect("get completed training", call("GET", "/jobs/"+trainID, tok, ""), 200, "/jobs/{id}", "get", false)
	expect("list completed", call("GET", "/jobs?status=completed&limit=10", tok, ""), 200, "/jobs", "get", false)

	failed := call("POST", "/generate/image/google/imagen-4", tok, `{"prompt":"x"}`)
	expect("generate imagen", failed, 200, "/generate/image/google/imagen-4", "post", false)
	if err := srv.Finish(failed.v.(map[string]any)["job_id"].(string), krea.StatusFailed, "nope"); err != nil {
		t.Fatal(err)
	}
	call("POST", fluxPath, tok, `{"prompt":"pending"}`)
	expect("list all", call("GET", "/jobs?limit=2", tok, ""), 200, "/jobs", "get", true)
	expect("list page 2", call("GET", "/jobs?cursor=2100-01-01T00:00:00.000Z", tok, ""), 200, "/jobs", "get", true)
	expect("list bad limit", call("GET", "/jobs?limit=0", tok, ""), 400, "/jobs", "get", false)
	expect("list unauthorized", call("GET", "/jobs", "", ""), 401, "/jobs", "get", false)

	expect("unknown job", call("GET", "/jobs/4d0e5f97-9721-4422-b88c-73a9032d7de1", tok, ""), 404, "/jobs/{id}", "get", false)
	expect("cancel unknown job", call("DELETE", "/jobs/4d0e5f97-9721-4422-b88c-73a9032d7de1", tok, ""), 404, "/jobs/{id}", "delete", false)
	pending := call("POST", fluxPath, tok, `{"prompt":"cancel me"}`)
	if a := call("DELETE", "/jobs/"+pending.v.(map[string]any)["job_id"].(string), tok, ""); a.code != 200 {
		t.Errorf("cancel: %d %s", a.code, short(a.v))
	}

	expect("unauthorized", call("POST", fluxPath, "wrong", `{"prompt":"x"}`), 401, fluxPath, "post", false)
	expect("no token", call("POST", fluxPath, "", `{"prompt":"x"}`), 401, fluxPath, "post", false)
	expect("bad body", call("POST", fluxPath, tok, `[1,2]`), 400, fluxPath, "post", false)
	expect("bad train body", call("POST", "/styles/train", tok, `"x"`), 400, "/styles/train", "post", false)

	// The spec documents no 410. Its body must still satisfy the common
	// error schema ({error: string}) and carry Krea's documented fields.
	gone := call("POST", retired, tok, `{"prompt":"x"}`)
	if gone.code != 410 {
		t.Fatalf("retired model: %d", gone.code)
	}
	gone.code = 400
	expect("retired model (common error shape)", gone, 400, retired, "post", false)
	var goneSchema any
	_ = json.Unmarshal([]byte(`{"type":"object","required":["error","reason","message","sunset_date"],
		"properties":{"error":{"const":"model_unavailable"},"reason":{"type":"string"},"message":{"type":"string"},
		"sunset_date":{"type":"string"},"replacement":{"type":"string"},"migration_url":{"type":"string","format":"uri"}}}`), &goneSchema)
	if errs := (&schemaChecker{}).check(goneSchema, gone.v, "$"); len(errs) > 0 {
		t.Errorf("410 body %s: %v", short(gone.v), errs)
	}

	srv.SetFaults(kreatest.Faults{OutOfCredits: true})
	expect("out of credits", call("POST", fluxPath, tok, `{"prompt":"x"}`), 402, fluxPath, "post", false)
	expect("out of credits (train)", call("POST", "/styles/train", tok, `{"name":"n","urls":[]}`), 402, "/styles/train", "post", false)
	srv.SetFaults(kreatest.Faults{Rate429: 1, RetryAfter: time.Second})
	expect("rate limited", call("POST", fluxPath, tok, `{"prompt":"x"}`), 429, fluxPath, "post", false)
}
