package bridge

import (
	"mime"
	"strings"

	"github.com/kreabus/kreabus/pkg/events"
)

// The checks of a webhook's headers (the body's are in parse.go; the token
// is verified by events.Tokenizer).

// tokenRequestID is the request ID part of a token that failed to verify,
// for the log: only when it is well formed, never the MAC.
func tokenRequestID(token string) string {
	dot := strings.LastIndexByte(token, '.')
	if dot <= 0 {
		return ""
	}
	if id := token[:dot]; events.ValidRequestID(id) {
		return id
	}
	return ""
}

// isJSONContentType accepts application/json and application/*+json, with
// parameters (charset).
func isJSONContentType(ct string) bool {
	if ct == "" {
		return false
	}
	if strings.IndexByte(ct, ';') >= 0 {
		mt, _, err := mime.ParseMediaType(ct)
		if err != nil {
			return false
		}
		ct = mt
	} else {
		ct = strings.TrimSpace(ct)
	}
	if strings.EqualFold(ct, "application/json") {
		return true
	}
	const app, suffix = "application/", "+json"
	if len(ct) > len(app)+len(suffix) && strings.EqualFold(ct[:len(app)], app) &&
		strings.EqualFold(ct[len(ct)-len(suffix):], suffix) {
		sub := ct[len(app) : len(ct)-len(suffix)]
		return !strings.ContainsAny(sub, "/ \t")
	}
	return false
}
