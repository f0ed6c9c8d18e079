package events_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/kreabus/kreabus/pkg/events"
	"github.com/kreabus/kreabus/pkg/krea"
)

func TestValidRequestID(t *testing.T) {
	for id, want := range map[string]bool{
		"a": true, "0b9d6c1e-5f0a-4f57-a8f1-2a6f0f8b9a11": true, "A_b-9": true,
		strings.Repeat("x", 64): true, strings.Repeat("x", 65): false,
		"": false, "a.b": false, "a b": false, "a/b": false, "a*": false, "é": false, "a:b": false,
	} {
		if got := events.ValidRequestID(id); got != want {
			t.Errorf("ValidRequestID(%q) = %v, want %v", id, got, want)
		}
	}
}

func TestDecodeRequest(t *testing.T) {
	bigMeta := `{"k":"` + strings.Repeat("x", events.MaxMetadataSize-8) + `"}` // exactly 4 KiB
	for _, tc := range []struct {
		name  string
		body  string
		field string // "" when valid
	}{
		{"design example", `{"request_id":"0b9d6c1e-5f0a-4f57-a8f1-2a6f0f8b9a11","path":"/generate/image/bfl/flux-1-dev","input":{"prompt":"a serene mountain landscape at sunset","width":1024,"height":576},"metadata":{"user":"42"}}`, ""},
		{"no request id", `{"path":"/generate/image/bfl/flux-1.1-pro","input":{}}`, ""},
		{"empty request id", `{"request_id":"","path":"/generate/image/bfl/flux-1.1-pro","input":{}}`, ""},
		{"variant", `{"path":"/generate/image/krea/krea-2/medium","input":{"prompt":"x"}}`, ""},
		{"styles", `{"path":"/styles/train","input":{"name":"s","urls":["https://x/1.png"]}}`, ""},
		{"null metadata", `{"path":"/styles/train","input":{},"metadata":null}`, ""},
		{"metadata at limit", `{"path":"/styles/train","input":{},"metadata":` + bigMeta + `}`, ""},
		{"unknown fields", `{"path":"/styles/train","input":{},"extra":1}`, ""},

		{"not json", `path=/styles/train`, "body"},
		{"array", `[]`, "body"},
		{"trailing garbage", `{"path":"/styles/train","input":{}} x`, "body"},
		{"request id number", `{"request_id":5,"path":"/styles/train","input":{}}`, "body"},
		{"bad request id", `{"request_id":"a.b","path":"/styles/train","input":{}}`, "request_id"},
		{"long request id", `{"request_id":"` + strings.Repeat("a", 65) + `","path":"/styles/train","input":{}}`, "request_id"},
		{"no path", `{"input":{}}`, "path"},
		{"jobs path", `{"path":"/jobs","input":{}}`, "path"},
		{"traversal", `{"path":"/generate/image/../x","input":{}}`, "path"},
		{"audio", `{"path":"/generate/audio/a/b","input":{}}`, "path"},
		{"trailing slash", `{"path":"/generate/image/bfl/flux-1-dev/","input":{}}`, "path"},
		{"four segments", `{"path":"/generate/image/a/b/c/d","input":{}}`, "path"},
		{"no input", `{"path":"/styles/train"}`, "input"},
		{"null input", `{"path":"/styles/train","input":null}`, "input"},
		{"input string", `{"path":"/styles/train","input":"{}"}`, "input"},
		{"input array", `{"path":"/styles/train","input":[{}]}`, "input"},
		{"input number", `{"path":"/styles/train","input":1}`, "input"},
		{"metadata array", `{"path":"/styles/train","input":{},"metadata":[1]}`, "metadata"},
		{"metadata string", `{"path":"/styles/train","input":{},"metadata":"x"}`, "metadata"},
		{"metadata over limit", `{"path":"/styles/train","input":{},"metadata":{"k":"` + strings.Repeat("x", events.MaxMetadataSize) + `"}}`, "metadata"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := events.DecodeRequest([]byte(tc.body))
			if tc.field == "" {
				if err != nil {
					t.Fatalf("DecodeRequest: %v", err)
				}
				if id := r.RequestID; id != "" && !events.ValidRequestID(id) {
					t.Errorf("request id %q", id)
				}
				if r.RequestID == "" {
					r.RequestID = "named-by-the-receiver"
				}
				if err := r.Validate(); err != nil {
					t.Errorf("decoded request does not validate: %v", err)
				}
				return
			}
			if !errors.Is(err, events.ErrInvalidRequest) {
				t.Fatalf("err = %v, want ErrInvalidRequest", err)
			}
			var re *events.RequestError
			if !errors.As(err, &re) || re.Field != tc.field {
				t.Fatalf("err = %v, want a *RequestError on %q", err, tc.field)
			}
			if !strings.HasPrefix(err.Error(), tc.field+": ") {
				t.Errorf("message %q does not name the field", err)
			}
		})
	}
}

func TestDecodeRequestKeepsFields(t *testing.T) {
	r, err := events.DecodeRequest([]byte(`{"request_id":"r1","path":"/generate/image/bfl/flux-1-dev","input":{"prompt":"<b> & co","n":1.50},"metadata":{ "user" : "42", "tags": [1, 2] }}`))
	if err != nil {
		t.Fatal(err)
	}
	if r.RequestID != "r1" || r.Path != "/generate/image/bfl/flux-1-dev" {
		t.Errorf("%+v", r)
	}
	if string(r.Input) != `{"prompt":"<b> & co","n":1.50}` {
		t.Errorf("input changed: %s", r.Input)
	}
	if string(r.Metadata) != `{"user":"42","tags":[1,2]}` {
		t.Errorf("metadata not compacted: %s", r.Metadata)
	}
	// No ID invented for a request without one (absent, null or empty):
	// its receiver names it.
	for _, body := range []string{`{"path":"/styles/train","input":{}}`, `{"request_id":null,"path":"/styles/train","input":{}}`, `{"request_id":"","path":"/styles/train","input":{}}`} {
		if r, err := events.DecodeRequest([]byte(body)); err != nil || r.RequestID != "" {
			t.Errorf("%s: request ID %q, err %v", body, r.RequestID, err)
		}
	}
	// Published, a request needs its ID.
	if err := (&events.Request{Path: "/styles/train", Input: json.RawMessage(`{}`)}).Validate(); !errors.Is(err, events.ErrInvalidRequest) {
		t.Errorf("Validate without a request ID: %v", err)
	}
}

func TestNewRequest(t *testing.T) {
	r, err := events.NewRequest("/generate/image/bfl/flux-1-dev", map[string]any{"prompt": "x", "width": 1024})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Validate(); err != nil {
		t.Fatal(err)
	}
	if _, err := events.NewRequest("/styles/train", func() {}); err == nil {
		t.Error("unmarshallable input accepted")
	}
}

// FuzzDecodeRequest: DecodeRequest never panics; what it accepts is valid,
// within limits and survives a marshal/decode round trip; what it refuses
// is a *RequestError.
func FuzzDecodeRequest(f *testing.F) {
	f.Add([]byte(`{"request_id":"0b9d6c1e-5f0a-4f57-a8f1-2a6f0f8b9a11","path":"/generate/image/bfl/flux-1-dev","input":{"prompt":"a serene mountain landscape at sunset","width":1024,"height":576},"metadata":{"user":"42"}}`))
	f.Add([]byte(`{"path":"/styles/train","input":{}}`))
	f.Add([]byte(`{"path":"/generate/image/../x","input":{}}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := events.DecodeRequest(data)
		if err != nil {
			var re *events.RequestError
			if !errors.As(err, &re) || !errors.Is(err, events.ErrInvalidRequest) || re.Field == "" {
				t.Fatalf("DecodeRequest error %#v is not a *RequestError", err)
			}
			return
		}
		if r.RequestID == "" {
			r.RequestID = "named-by-the-receiver" // DecodeRequest invents none
		}
		if err := r.Validate(); err != nil {
			t.Fatalf("accepted request does not validate: %v", err)
		}
		if !krea.ValidPath(r.Path) || !events.ValidRequestID(r.RequestID) || !isJSONObject(r.Input) {
			t.Fatalf("accepted %+v", r)
		}
		if len(r.Metadata) > events.MaxMetadataSize {
			t.Fatalf("accepted %d bytes of metadata", len(r.Metadata))
		}
		if len(r.Metadata) > 0 && string(r.Metadata) != "null" {
			var buf bytes.Buffer
			if err := json.Compact(&buf, r.Metadata); err != nil || !bytes.Equal(buf.Bytes(), r.Metadata) {
				t.Fatalf("metadata not compact: %q", r.Metadata)
			}
		}
		// Round trip: what a publisher re-marshals decodes the same.
		out, err := json.Marshal(r)
		if err != nil {
			t.Fatalf("marshal accepted request: %v", err)
		}
		r2, err := events.DecodeRequest(out)
		if err != nil {
			t.Fatalf("re-decode %s: %v", out, err)
		}
		if r2.RequestID != r.RequestID || r2.Path != r.Path {
			t.Fatalf("round trip changed %+v into %+v", r, r2)
		}
		if !jsonSame(r.Input, r2.Input) || !jsonSame(r.Metadata, r2.Metadata) {
			t.Fatalf("round trip changed input/metadata: %s %s -> %s %s", r.Input, r.Metadata, r2.Input, r2.Metadata)
		}
	})
}

// jsonSame reports whether a and b hold the same JSON value.
func jsonSame(a, b []byte) bool {
	if len(a) == 0 || len(b) == 0 {
		return len(a) == len(b)
	}
	var x, y any
	if json.Unmarshal(a, &x) != nil || json.Unmarshal(b, &y) != nil {
		return false
	}
	xb, _ := json.Marshal(x)
	yb, _ := json.Marshal(y)
	return bytes.Equal(xb, yb)
}

func isJSONObject(b json.RawMessage) bool {
	b = bytes.TrimSpace(b)
	return len(b) >= 2 && b[0] == '{' && json.Valid(b)
}
