package events_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/kreabus/kreabus/pkg/events"
)

const testTraceParent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

func requestsStream(t *testing.T, js jetstream.JetStream) jetstream.Stream {
	t.Helper()
	s, err := js.Stream(testCtx(t), events.StreamRequests)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func streamMsgs(t *testing.T, s jetstream.Stream) uint64 {
	t.Helper()
	info, err := s.Info(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Msgs
}

func TestPublishRequestStoresOnce(t *testing.T) {
	js := startStreams(t)
	ctx := testCtx(t)
	req := &events.Request{
		RequestID: "req-1",
		Path:      "/generate/image/bfl/flux-1-dev",
		Input:     json.RawMessage(`{"prompt": "a serene mountain landscape", "width": 1024}`),
		Metadata:  json.RawMessage(`{ "user": "42" }`),
	}
	ack, err := events.PublishRequest(ctx, js, req, events.WithTraceParent(testTraceParent))
	if err != nil {
		t.Fatal(err)
	}
	if ack.Stream != events.StreamRequests || ack.Duplicate {
		t.Fatalf("first ack = %+v", ack)
	}
	ack2, err := events.PublishRequest(ctx, js, req)
	if err != nil {
		t.Fatal(err)
	}
	if !ack2.Duplicate || ack2.Sequence != ack.Sequence {
		t.Fatalf("second ack = %+v, want a duplicate of seq %d", ack2, ack.Sequence)
	}
	s := requestsStream(t, js)
	if n := streamMsgs(t, s); n != 1 {
		t.Fatalf("stream holds %d messages, want 1", n)
	}

	raw, err := s.GetMsg(ctx, ack.Sequence)
	if err != nil {
		t.Fatal(err)
	}
	if raw.Subject != "krea.requests.image" {
		t.Errorf("subject = %q", raw.Subject)
	}
	for name, want := range map[string]string{
		"Nats-Msg-Id":        "req-1",
		"Kreabus-Request-Id": "req-1",
		"traceparent":        testTraceParent,
	} {
		if got := raw.Header.Get(name); got != want {
			t.Errorf("header %s = %q, want %q", name, got, want)
		}
	}
	got, err := events.DecodeRequest(raw.Data)
	if err != nil {
		t.Fatalf("stored request does not decode: %v\n%s", err, raw.Data)
	}
	if got.RequestID != "req-1" || got.Path != req.Path {
		t.Errorf("stored %+v", got)
	}
	if string(got.Metadata) != `{"user":"42"}` {
		t.Errorf("metadata = %s, want compact", got.Metadata)
	}
	if !jsonEqual(t, got.Input, req.Input) {
		t.Errorf("input = %s, want %s", got.Input, req.Input)
	}
}

func jsonEqual(t *testing.T, a, b []byte) bool {
	t.Helper()
	var x, y any
	if err := json.Unmarshal(a, &x); err != nil {
		t.Fatalf("%s: %v", a, err)
	}
	if err := json.Unmarshal(b, &y); err != nil {
		t.Fatalf("%s: %v", b, err)
	}
	xb, _ := json.Marshal(x)
	yb, _ := json.Marshal(y)
	return bytes.Equal(xb, yb)
}

func TestPublishRequestFillsRequestID(t *testing.T) {
	js := startStreams(t)
	ctx := testCtx(t)
	req, err := events.NewRequest("/generate/video/kling/kling-2.1", map[string]any{"prompt": "waves"})
	if err != nil {
		t.Fatal(err)
	}
	req.RequestID = ""
	ack, err := events.PublishRequest(ctx, js, req)
	if err != nil {
		t.Fatal(err)
	}
	if !events.ValidRequestID(req.RequestID) {
		t.Fatalf("request ID not filled in: %q", req.RequestID)
	}
	raw, err := requestsStream(t, js).GetMsg(ctx, ack.Sequence)
	if err != nil {
		t.Fatal(err)
	}
	if raw.Subject != "krea.requests.video" || raw.Header.Get(events.HeaderMsgID) != req.RequestID {
		t.Errorf("subject %q msg id %q, want krea.requests.video and %q", raw.Subject, raw.Header.Get(events.HeaderMsgID), req.RequestID)
	}
	if raw.Header.Get(events.HeaderTraceParent) != "" {
		t.Errorf("traceparent set without WithTraceParent")
	}
}

func TestPublishRequestSubjects(t *testing.T) {
	js := startStreams(t)
	ctx := testCtx(t)
	for i, tc := range []struct {
		path string
		opts []events.PublishOpt
		want string
	}{
		{"/generate/image/krea/krea-2/medium", nil, "krea.requests.image"},
		{"/generate/video/google/veo-3", nil, "krea.requests.video"},
		{"/generate/enhance/topaz/standard-enhance", nil, "krea.requests.enhance"},
		{"/styles/train", nil, "krea.requests.styles"},
		{"/generate/image/bfl/flux-1-dev", []events.PublishOpt{events.WithSubject("krea.requests.priority.image")}, "krea.requests.priority.image"},
		{"/generate/image/bfl/flux-1-dev", []events.PublishOpt{events.WithSubject("krea.requests.x"), nil}, "krea.requests.x"},
	} {
		req := &events.Request{RequestID: "r" + string(rune('a'+i)), Path: tc.path, Input: json.RawMessage(`{}`)}
		ack, err := events.PublishRequest(ctx, js, req, tc.opts...)
		if err != nil {
			t.Fatalf("%s: %v", tc.path, err)
		}
		raw, err := requestsStream(t, js).GetMsg(ctx, ack.Sequence)
		if err != nil {
			t.Fatal(err)
		}
		if raw.Subject != tc.want {
			t.Errorf("%s: subject %q, want %q", tc.path, raw.Subject, tc.want)
		}
	}
}

func TestPublishRequestInvalid(t *testing.T) {
	js := startStreams(t)
	ctx := testCtx(t)
	ok := func() *events.Request {
		return &events.Request{RequestID: "ok", Path: "/generate/image/bfl/flux-1-dev", Input: json.RawMessage(`{"prompt":"x"}`)}
	}
	big := `{"k":"` + strings.Repeat("x", events.MaxMetadataSize) + `"}`
	for _, tc := range []struct {
		name  string
		req   *events.Request
		field string
	}{
		{"nil", nil, "request"},
		{"bad request id", func() *events.Request { r := ok(); r.RequestID = "a.b"; return r }(), "request_id"},
		{"long request id", func() *events.Request { r := ok(); r.RequestID = strings.Repeat("a", 65); return r }(), "request_id"},
		{"path not allowed", func() *events.Request { r := ok(); r.Path = "/jobs"; return r }(), "path"},
		{"path traversal", func() *events.Request { r := ok(); r.Path = "/generate/image/../x"; return r }(), "path"},
		{"no input", func() *events.Request { r := ok(); r.Input = nil; return r }(), "input"},
		{"input array", func() *events.Request { r := ok(); r.Input = json.RawMessage(`[1]`); return r }(), "input"},
		{"input broken", func() *events.Request { r := ok(); r.Input = json.RawMessage(`{"a":`); return r }(), "input"},
		{"metadata string", func() *events.Request { r := ok(); r.Metadata = json.RawMessage(`"x"`); return r }(), "metadata"},
		{"metadata too big", func() *events.Request { r := ok(); r.Metadata = json.RawMessage(big); return r }(), "metadata"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := events.PublishRequest(ctx, js, tc.req)
			if !errors.Is(err, events.ErrInvalidRequest) {
				t.Fatalf("err = %v, want ErrInvalidRequest", err)
			}
			var re *events.RequestError
			if !errors.As(err, &re) || re.Field != tc.field {
				t.Fatalf("err = %#v, want a *RequestError on %q", err, tc.field)
			}
		})
	}
	if n := streamMsgs(t, requestsStream(t, js)); n != 0 {
		t.Fatalf("invalid requests stored: %d messages", n)
	}
}

func TestPublishRequestMetadataLimitIsOnCompactJSON(t *testing.T) {
	js := startStreams(t)
	// 4000 bytes compact, over 4 KiB pretty-printed.
	md := "{\n" + strings.Repeat(" ", 200) + `"k": "` + strings.Repeat("x", 3990) + "\"\n}"
	if len(md) <= events.MaxMetadataSize {
		t.Fatal("test metadata too small")
	}
	req := &events.Request{Path: "/generate/image/bfl/flux-1-dev", Input: json.RawMessage(`{}`), Metadata: json.RawMessage(md)}
	if _, err := events.PublishRequest(testCtx(t), js, req); err != nil {
		t.Fatalf("metadata under the limit once compact rejected: %v", err)
	}
	// The caller's request is left as it was, but for the filled-in ID.
	if string(req.Metadata) != md {
		t.Error("PublishRequest changed req.Metadata")
	}
}

func TestPublishRequestInvalidOptions(t *testing.T) {
	js := startStreams(t)
	ctx := testCtx(t)
	for _, opt := range []events.PublishOpt{
		events.WithSubject("krea.jobs.completed"),
		events.WithSubject("krea.requests."),
		events.WithSubject("krea.requests"),
		events.WithSubject("krea.requests.*"),
		events.WithSubject("krea.requests.>"),
		events.WithSubject("krea.requests.a..b"),
		events.WithSubject("krea.requests.a b"),
		events.WithSubject("krea.requests.a."),
		events.WithTraceParent("not-a-traceparent"),
		events.WithTraceParent("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
	} {
		req := &events.Request{RequestID: "r1", Path: "/styles/train", Input: json.RawMessage(`{}`)}
		_, err := events.PublishRequest(ctx, js, req, opt)
		if !errors.Is(err, events.ErrInvalidOption) {
			t.Errorf("err = %v, want ErrInvalidOption", err)
		}
	}
	if n := streamMsgs(t, requestsStream(t, js)); n != 0 {
		t.Fatalf("stored %d messages with invalid options", n)
	}
}

func TestPublishRequestWithoutStream(t *testing.T) {
	js := startJS(t)
	req := &events.Request{Path: "/styles/train", Input: json.RawMessage(`{}`)}
	_, err := events.PublishRequest(testCtx(t), js, req)
	if err == nil {
		t.Fatal("published with no stream")
	}
	if errors.Is(err, events.ErrInvalidRequest) || !errors.Is(err, jetstream.ErrNoStreamResponse) {
		t.Errorf("err = %v, want jetstream.ErrNoStreamResponse", err)
	}
}

func TestValidTraceParent(t *testing.T) {
	for tp, want := range map[string]bool{
		testTraceParent: true,
		"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00":        true,
		"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future": true,
		"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x":      false, // version 00 has 4 fields
		"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01":        false,
		"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01":        false,
		"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01":        false,
		"00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01":         false,
		"00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01":        false,
		"":   false,
		"00": false,
		"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0":                                                      false,
		"00-00000000000000000000000000000000-00f067aa0ba902b7-01":                                                     false, // zero trace-id
		"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x":                                                    false, // no "-" before the next field
		"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-a b":                                                 false,
		"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-a\tb":                                                false,
		"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-a\x01b":                                              false,
		"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-\u00e9":                                              false,
		"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-" + strings.Repeat("a", events.MaxTraceParentLen-56): true,
		"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-" + strings.Repeat("a", events.MaxTraceParentLen-55): false,
	} {
		if got := events.ValidTraceParent(tp); got != want {
			t.Errorf("ValidTraceParent(%q) = %v, want %v", tp, got, want)
		}
	}
}
