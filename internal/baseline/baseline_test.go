package baseline

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kreabus/kreabus/internal/natstest"
	"github.com/kreabus/kreabus/pkg/events"
)

func TestBaselineAnswers(t *testing.T) {
	s := natstest.RunServer(t)
	b, err := New(t.Context(), Config{NATSURL: s.ClientURL(), Secret: "s3cret"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	srv := httptest.NewServer(b)
	t.Cleanup(srv.Close)
	tok, _ := events.NewTokenizer("s3cret", "")
	url := tok.URL(srv.URL, "req-1")
	job := uuid.NewString()
	body := `{"job_id":"` + job + `","status":"completed","result":{"urls":["https://gen.krea.ai/x.png"]},"extra":1}`

	post := func(url, body string) (int, map[string]any) {
		t.Helper()
		resp, err := http.Post(url, "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var m map[string]any
		b, _ := io.ReadAll(resp.Body)
		_ = json.Unmarshal(b, &m)
		return resp.StatusCode, m
	}
	if code, m := post(url, body); code != 200 || m["duplicate"] != false || m["job_id"] != job {
		t.Fatalf("first: %d %v", code, m)
	}
	if code, m := post(url, body); code != 200 || m["duplicate"] != true {
		t.Fatalf("repeat: %d %v", code, m)
	}
	if code, _ := post(srv.URL+events.WebhookPathPrefix+"req-1.bad", body); code != 401 {
		t.Fatalf("bad token: %d", code)
	}
	if code, _ := post(url, `{"job_id":"nope","status":"completed"}`); code != 400 {
		t.Fatalf("bad job id: %d", code)
	}
	if code, _ := post(url, `{"job_id":"`+job+`","status":"a.b"}`); code != 400 {
		t.Fatalf("bad status: %d", code)
	}
	if code, _ := post(url, `{"x":"`+strings.Repeat("a", MaxBody)+`"}`); code != 413 {
		t.Fatalf("big body: %d", code)
	}

	_, js := natstest.ConnectJetStream(t, s.ClientURL())
	st, err := js.Stream(t.Context(), events.StreamJobs)
	if err != nil {
		t.Fatal(err)
	}
	m, err := st.GetLastMsgForSubject(t.Context(), "krea.jobs.completed")
	if err != nil {
		t.Fatal(err)
	}
	if string(m.Data) != body || m.Header.Get(events.HeaderMsgID) != job || m.Header.Get(events.HeaderRequestID) != "req-1" {
		t.Fatalf("stored %q %v", m.Data, m.Header)
	}
	info, _ := st.Info(t.Context())
	if info.State.Msgs != 1 || info.Config.Storage != jetstream.FileStorage || info.Config.Duplicates != events.DefaultDuplicateWindow {
		t.Fatalf("stream %+v %+v", info.State, info.Config)
	}
}
