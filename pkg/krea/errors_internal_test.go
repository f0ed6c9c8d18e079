package krea

import (
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2026, 2, 13, 2, 20, 0, 0, time.UTC)
	tests := []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"", 0, false},
		{"  ", 0, false},
		{"0", 0, true},
		{"5", 5 * time.Second, true},
		{" 45 ", 45 * time.Second, true},
		{"-1", 0, false},
		{"1.5", 0, false},
		{"99999999999999999", 365 * 24 * time.Hour, true},
		{"Fri, 13 Feb 2026 02:21:30 GMT", 90 * time.Second, true},
		{"Friday, 13-Feb-26 02:21:30 GMT", 90 * time.Second, true}, // RFC 850
		{"Fri Feb 13 02:21:30 2026", 90 * time.Second, true},       // asctime
		{"Fri, 13 Feb 2026 02:19:00 GMT", 0, true},
		{"tomorrow", 0, false},
	}
	for _, tc := range tests {
		got, ok := parseRetryAfter(tc.in, now)
		if got != tc.want || ok != tc.ok {
			t.Errorf("parseRetryAfter(%q) = %v, %v; want %v, %v", tc.in, got, ok, tc.want, tc.ok)
		}
	}
}

func TestNewAPIErrorShapes(t *testing.T) {
	now := time.Now()
	tests := []struct {
		status            int
		body              string
		code, msg, replac string
	}{
		{400, `{"error":"Invalid body"}`, "", "Invalid body", ""},
		{410, `{"error":"model_unavailable","reason":"retired","message":"flux-1 is gone","sunset_date":"2026-01-01","replacement":"/generate/image/bfl/flux-1-dev","migration_url":"https://docs"}`,
			"model_unavailable", "flux-1 is gone", "/generate/image/bfl/flux-1-dev"},
		{422, `{"error":{"code":"bad_size","message":"width too large"}}`, "bad_size", "width too large", ""},
		{500, `Internal Server Error`, "", "Internal Server Error", ""},
		{502, ``, "", "Bad Gateway", ""},
		{503, `{"error":42}`, "", "Service Unavailable", ""},
		{400, "{\"error\":\"line1\\nline2\"}", "", "line1 line2", ""},
	}
	for _, tc := range tests {
		e := newAPIError("POST", "/p", tc.status, nil, []byte(tc.body), "", now)
		if e.Code != tc.code || e.Message != tc.msg || e.Replacement != tc.replac {
			t.Errorf("%d %s: code %q msg %q replacement %q", tc.status, tc.body, e.Code, e.Message, e.Replacement)
		}
	}
	long := newAPIError("GET", "/p", 400, http.Header{}, []byte(`{"error":"`+strings.Repeat("é", 1000)+`"}`), "", now)
	if len(long.Message) > maxMessageLen+len("…") || !utf8.ValidString(long.Message) {
		t.Errorf("long message not cut cleanly: %d bytes", len(long.Message))
	}
}

func TestErrorKindsAreExclusive(t *testing.T) {
	for code := 100; code < 600; code++ {
		e := &APIError{StatusCode: code}
		n := 0
		for _, k := range []error{ErrRetryable, ErrInvalidRequest, ErrAccount} {
			if errors.Is(e, k) {
				n++
			}
		}
		if n > 1 || (code >= 400 && n != 1) {
			t.Errorf("status %d matches %d kinds", code, n)
		}
	}
}
