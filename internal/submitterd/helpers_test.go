package submitterd

import (
	"encoding/json"

	"github.com/kreabus/kreabus/pkg/events"
)

const (
	testSecret  = "test-webhook-secret"
	traceParent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
)

func goodRequest(id string) *events.Request {
	return &events.Request{
		RequestID: id,
		Path:      "/generate/image/bfl/flux-1-dev",
		Input:     json.RawMessage(`{"prompt":"a serene mountain landscape at sunset","width":1024,"height":576}`),
		Metadata:  json.RawMessage(`{"user":"42","n":"` + id + `"}`),
	}
}
