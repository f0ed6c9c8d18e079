package events_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/kreabus/kreabus/pkg/events"
	"github.com/kreabus/kreabus/pkg/krea"
)

func TestResultObjectName(t *testing.T) {
	const job = "3f1e8b5a-7c2d-4e9f-a1b0-5d6c7e8f9a0b"
	for url, want := range map[string]string{
		"https://gen.krea.ai/images/x.png":            job + "/0.png",
		"https://gen.krea.ai/videos/x.MP4?sig=a.b":    job + "/0.mp4",
		"https://gen.krea.ai/x.tar.gz#frag":           job + "/0.gz",
		"https://gen.krea.ai/noext":                   job + "/0",
		"https://gen.krea.ai.png":                     job + "/0", // a host is no extension
		"https://gen.krea.ai/a.b/c":                   job + "/0",
		"https://gen.krea.ai/x.verylongext":           job + "/0",
		"https://gen.krea.ai/x.p/n/g":                 job + "/0",
		"https://gen.krea.ai/x.p%2Fg":                 job + "/0",
		"https://gen.krea.ai/x.":                      job + "/0",
		"https://gen.krea.ai/x.we bp":                 job + "/0",
		"https://gen.krea.ai/x.webp?download=a.jpg":   job + "/0.webp",
		"not a url at all.jpeg":                       job + "/0.jpeg",
		"https://gen.krea.ai/images/../../etc/passwd": job + "/0",
	} {
		if got := events.ResultObjectName(job, 0, url); got != want {
			t.Errorf("ResultObjectName(%q) = %q, want %q", url, got, want)
		}
	}
	if got := events.ResultObjectName(job, 12, "https://x/y.png"); got != job+"/12.png" {
		t.Errorf("n=12: %q", got)
	}
}

func FuzzResultObjectName(f *testing.F) {
	for _, s := range []string{"https://gen.krea.ai/images/x.png", "https://a/b.c?d.e", "x.PNG", "", ".", "https://h/x.é", "https://h/x.\x00"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, url string) {
		name := events.ResultObjectName("job", 3, url)
		ext, ok := strings.CutPrefix(name, "job/3")
		if !ok || len(ext) > 9 || (ext != "" && ext[0] != '.') {
			t.Fatalf("name %q", name)
		}
		for _, c := range []byte(strings.TrimPrefix(ext, ".")) {
			if (c < 'a' || c > 'z') && (c < '0' || c > '9') {
				t.Fatalf("name %q has %q", name, c)
			}
		}
	})
}

func TestMirroredBody(t *testing.T) {
	m := events.Mirrored{JobID: "j1", RequestID: "r1", Objects: []events.ResultObject{
		{URL: "https://gen.krea.ai/a.png", Bucket: "KREA_RESULTS", Name: "j1/0.png", Size: 0, Digest: "SHA-256=x", ContentType: "image/png"},
		{URL: "https://gen.krea.ai/b.png", Error: "GET https://gen.krea.ai/b.png: Not Found (404)", Size: 7},
	}}
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"job_id":"j1","request_id":"r1","objects":[` +
		`{"url":"https://gen.krea.ai/a.png","bucket":"KREA_RESULTS","name":"j1/0.png","size":0,"digest":"SHA-256=x","content_type":"image/png"},` +
		`{"url":"https://gen.krea.ai/b.png","error":"GET https://gen.krea.ai/b.png: Not Found (404)"}]}`
	if string(b) != want {
		t.Fatalf("body\n%s\nwant\n%s", b, want)
	}
	msg := events.NewJobMsg(events.EventHeaders{JobID: "j1", Status: events.StatusMirrored, RequestID: "r1", Source: events.SourceMirror, TraceParent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}, b)
	if msg.Subject != "krea.jobs.mirrored" || msg.Header.Get(events.HeaderMsgID) != "j1:mirrored" || msg.Header.Get(events.HeaderCEType) != "ai.krea.job.mirrored" {
		t.Errorf("message %s %v", msg.Subject, msg.Header)
	}
	ev, err := events.DecodeEvent(msg.Subject, msg.Header, msg.Data)
	if err != nil {
		t.Fatal(err)
	}
	if ev.Status != events.StatusMirrored || ev.Source != events.SourceMirror || ev.JobID != "j1" || ev.TraceParent == "" || len(ev.Objects()) != 2 ||
		!ev.Objects()[0].OK() || ev.Objects()[1].OK() || ev.Objects()[1].Size != 0 || ev.Job.JobID != "" {
		t.Errorf("decoded %+v %+v", ev, ev.Objects())
	}
	if (&events.Event{}).Objects() != nil {
		t.Error("Objects of a non-mirrored event")
	}
	if !events.IsKreabusStatus(events.StatusMirrored) || events.IsKreabusStatus(krea.StatusCompleted) || events.StatusMirrored.IsTerminal() {
		t.Error("mirrored must be a kreabus status, not a terminal Krea one")
	}
	for _, bad := range []string{``, `{}`, `{"job_id":"j"}`, `{"job_id":"j","objects":[{"url":""}]}`,
		`{"job_id":"j","objects":[{"url":"u"}]}`, `{"job_id":"j","objects":[]} x`, `[1]`} {
		if _, err := events.DecodeEvent("krea.jobs.mirrored", nil, []byte(bad)); err == nil {
			t.Errorf("DecodeEvent accepted %q", bad)
		}
	}
	if _, err := events.DecodeEvent("krea.jobs.mirrored", nil, []byte(`{"job_id":"j","objects":[]}`)); err != nil {
		t.Errorf("a job without results: %v", err)
	}
}

// TestOpenResult stores an object as the mirror does and reads it back;
// a failed entry and a missing object are ErrResultUnavailable.
func TestOpenResult(t *testing.T) {
	js := startStreams(t)
	obs, err := events.EnsureResultsStore(testCtx(t), js, events.ResultsStoreConfig(events.ResultsOptions{TTL: time.Hour}))
	if err != nil {
		t.Fatal(err)
	}
	// Again: the existing bucket is opened.
	if _, err := events.EnsureResultsStore(testCtx(t), js, events.ResultsStoreConfig(events.ResultsOptions{})); err != nil {
		t.Fatal(err)
	}
	data := strings.Repeat("pixels", 100_000)
	info, err := obs.PutString(testCtx(t), "j1/0.png", data)
	if err != nil {
		t.Fatal(err)
	}
	r, err := events.OpenResult(testCtx(t), js, events.ResultObject{URL: "u", Bucket: "KREA_RESULTS", Name: "j1/0.png", Size: info.Size, Digest: info.Digest})
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(r)
	r.Close()
	if err != nil || string(got) != data {
		t.Fatalf("read %d bytes, %v", len(got), err)
	}
	_, err = events.OpenResult(testCtx(t), js, events.ResultObject{URL: "u", Error: "GET u: Not Found (404)"})
	var re *events.ResultError
	if !errors.Is(err, events.ErrResultUnavailable) || !errors.As(err, &re) || !strings.Contains(err.Error(), "404") {
		t.Errorf("failed entry: %v", err)
	}
	_, err = events.OpenResult(testCtx(t), js, events.ResultObject{URL: "u", Name: "j2/0.png"}) // default bucket, no such object
	if !errors.Is(err, events.ErrResultUnavailable) || !errors.Is(err, jetstream.ErrObjectNotFound) {
		t.Errorf("missing object: %v", err)
	}
	cfg := events.ResultsStoreConfig(events.ResultsOptions{})
	if cfg.Bucket != "KREA_RESULTS" || cfg.TTL != 7*24*time.Hour || cfg.Replicas != 1 {
		t.Errorf("defaults %+v", cfg)
	}
}

// TestInProgress: a handler that reports progress keeps its event past
// the ack wait (no redelivery, its context alive), and one that does not
// loses it.
func TestInProgress(t *testing.T) {
	js := startStreams(t)
	publishEvent(t, js, "slow", krea.StatusCompleted)
	var deliveries atomic.Int32
	done := make(chan error, 1)
	c := consume(t, js, "progress", func(ctx context.Context, ev *events.Event) error {
		if deliveries.Add(1) > 1 {
			return nil
		}
		dl0, _ := ctx.Deadline()
		for range 6 { // 1.8 s of work against a 1 s ack wait
			time.Sleep(300 * time.Millisecond)
			if err := events.InProgress(ctx); err != nil {
				done <- err
				return err
			}
		}
		if dl, _ := ctx.Deadline(); !dl.After(dl0) || ctx.Err() != nil {
			done <- errors.New("deadline not moved")
			return nil
		}
		done <- nil
		return nil
	}, events.WithAckWait(time.Second))
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	waitSettled(t, c)
	if n := deliveries.Load(); n != 1 {
		t.Errorf("%d deliveries, want 1", n)
	}
	if err := events.InProgress(context.Background()); !errors.Is(err, events.ErrNotHandling) {
		t.Errorf("InProgress outside a handler: %v", err)
	}

	publishEvent(t, js, "silent", krea.StatusCompleted)
	ended := make(chan error, 1)
	consume(t, js, "silent", func(ctx context.Context, ev *events.Event) error {
		if ev.JobID != "silent" {
			return nil
		}
		<-ctx.Done()
		select {
		case ended <- ctx.Err():
		default:
		}
		return events.InProgress(ctx)
	}, events.WithAckWait(500*time.Millisecond), events.WithStatuses(krea.StatusCompleted), events.WithErrorHandler(nil))
	select {
	case err := <-ended:
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("context ended with %v, want deadline exceeded", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("handler context did not end at the ack wait")
	}
}
