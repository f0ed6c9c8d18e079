package events_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kreabus/kreabus/internal/natstest"
	"github.com/kreabus/kreabus/pkg/events"
)

// startJS runs an embedded JetStream server for the test and returns a
// JetStream context on it.
func startJS(t *testing.T) jetstream.JetStream {
	t.Helper()
	_, _, js := natstest.JetStream(t)
	return js
}

// startStreams is startJS with both kreabus streams in place.
func startStreams(t *testing.T) jetstream.JetStream {
	t.Helper()
	js := startJS(t)
	if err := events.EnsureStreams(testCtx(t), js, events.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	return js
}

// testCtx is a context ending with the test, bounded to 20 s.
func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestJobsStreamConfigDefaults(t *testing.T) {
	cfg := events.JobsStreamConfig(events.StreamOptions{})
	if cfg.Name != "KREA_JOBS" || len(cfg.Subjects) != 1 || cfg.Subjects[0] != "krea.jobs.>" {
		t.Errorf("name/subjects = %s %v", cfg.Name, cfg.Subjects)
	}
	if cfg.Duplicates != time.Hour {
		t.Errorf("Duplicates = %v, want 1h (not the server's 2m default)", cfg.Duplicates)
	}
	if cfg.MaxAge != 7*24*time.Hour {
		t.Errorf("MaxAge = %v, want 7 days", cfg.MaxAge)
	}
	if cfg.Retention != jetstream.LimitsPolicy || cfg.Storage != jetstream.FileStorage || cfg.Replicas != 1 {
		t.Errorf("retention %v storage %v replicas %d", cfg.Retention, cfg.Storage, cfg.Replicas)
	}

	cfg = events.JobsStreamConfig(events.StreamOptions{DuplicateWindow: 3 * time.Hour, JobsMaxAge: 24 * time.Hour, Replicas: 3, Storage: jetstream.MemoryStorage})
	if cfg.Duplicates != 3*time.Hour || cfg.MaxAge != 24*time.Hour || cfg.Replicas != 3 || cfg.Storage != jetstream.MemoryStorage {
		t.Errorf("options not applied: %+v", cfg)
	}
	// The server refuses a duplicate window longer than MaxAge.
	cfg = events.JobsStreamConfig(events.StreamOptions{DuplicateWindow: 2 * time.Hour, JobsMaxAge: time.Hour})
	if cfg.Duplicates != time.Hour {
		t.Errorf("Duplicates = %v, want clamped to MaxAge 1h", cfg.Duplicates)
	}

	req := events.RequestsStreamConfig(events.StreamOptions{})
	if req.Name != "KREA_REQUESTS" || req.Subjects[0] != "krea.requests.>" || req.Retention != jetstream.WorkQueuePolicy || req.Storage != jetstream.FileStorage {
		t.Errorf("requests stream config = %+v", req)
	}
}

func TestEnsureStreamCreatesAndIsIdempotent(t *testing.T) {
	js := startJS(t)
	ctx := testCtx(t)
	want := events.JobsStreamConfig(events.StreamOptions{})

	s, err := events.EnsureStream(ctx, js, want)
	if err != nil {
		t.Fatal(err)
	}
	got := s.CachedInfo().Config
	if got.Duplicates != time.Hour || got.MaxAge != want.MaxAge || got.Retention != jetstream.LimitsPolicy || got.Storage != jetstream.FileStorage {
		t.Errorf("created %+v", got)
	}
	// Store something: ensuring again must neither fail nor touch it.
	if _, err := js.PublishMsg(ctx, events.NewJobMsg(events.EventHeaders{JobID: "j1", Status: "completed", Source: events.SourcePoll}, []byte(`{}`))); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		s, err = events.EnsureStream(ctx, js, want)
		if err != nil {
			t.Fatalf("second EnsureStream: %v", err)
		}
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 1 {
		t.Errorf("stream holds %d messages after re-ensuring, want 1", info.State.Msgs)
	}
}

func TestEnsureStreamLeavesCompatibleStreamAlone(t *testing.T) {
	js := startJS(t)
	ctx := testCtx(t)
	// An operator's own KREA_JOBS: other max age, memory storage.
	own := events.JobsStreamConfig(events.StreamOptions{JobsMaxAge: 48 * time.Hour, Storage: jetstream.MemoryStorage})
	if _, err := js.CreateStream(ctx, own); err != nil {
		t.Fatal(err)
	}
	s, err := events.EnsureStream(ctx, js, events.JobsStreamConfig(events.StreamOptions{}))
	if err != nil {
		t.Fatalf("compatible stream rejected: %v", err)
	}
	if cfg := s.CachedInfo().Config; cfg.MaxAge != 48*time.Hour || cfg.Storage != jetstream.MemoryStorage {
		t.Errorf("existing stream changed: %+v", cfg)
	}
}

func TestEnsureStreamRejectsIncompatible(t *testing.T) {
	for _, tc := range []struct {
		name     string
		existing jetstream.StreamConfig
		want     jetstream.StreamConfig
	}{
		{"jobs with work-queue retention", jetstream.StreamConfig{Name: events.StreamJobs, Subjects: []string{events.JobsSubjects}, Retention: jetstream.WorkQueuePolicy}, events.JobsStreamConfig(events.StreamOptions{})},
		{"jobs on other subjects", jetstream.StreamConfig{Name: events.StreamJobs, Subjects: []string{"other.jobs.>"}}, events.JobsStreamConfig(events.StreamOptions{})},
		{"requests with limits retention", jetstream.StreamConfig{Name: events.StreamRequests, Subjects: []string{events.RequestsSubjects}}, events.RequestsStreamConfig(events.StreamOptions{})},
	} {
		t.Run(tc.name, func(t *testing.T) {
			js := startJS(t)
			ctx := testCtx(t)
			if _, err := js.CreateStream(ctx, tc.existing); err != nil {
				t.Fatal(err)
			}
			_, err := events.EnsureStream(ctx, js, tc.want)
			if !errors.Is(err, events.ErrIncompatibleStream) {
				t.Fatalf("err = %v, want ErrIncompatibleStream", err)
			}
			// Left alone.
			s, err := js.Stream(ctx, tc.existing.Name)
			if err != nil {
				t.Fatal(err)
			}
			if got := s.CachedInfo().Config; got.Retention != tc.existing.Retention || got.Subjects[0] != tc.existing.Subjects[0] {
				t.Errorf("incompatible stream was changed: %+v", got)
			}
		})
	}
}

func TestEnsureStreams(t *testing.T) {
	js := startJS(t)
	ctx := testCtx(t)
	if err := events.EnsureStreams(ctx, js, events.StreamOptions{DuplicateWindow: 30 * time.Minute}); err != nil {
		t.Fatal(err)
	}
	if err := events.EnsureStreams(ctx, js, events.StreamOptions{}); err != nil {
		t.Fatalf("second EnsureStreams: %v", err)
	}
	for name, ret := range map[string]jetstream.RetentionPolicy{events.StreamRequests: jetstream.WorkQueuePolicy, events.StreamJobs: jetstream.LimitsPolicy} {
		s, err := js.Stream(ctx, name)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if s.CachedInfo().Config.Retention != ret {
			t.Errorf("%s retention = %v", name, s.CachedInfo().Config.Retention)
		}
	}
	jobs, _ := js.Stream(ctx, events.StreamJobs)
	if d := jobs.CachedInfo().Config.Duplicates; d != 30*time.Minute {
		t.Errorf("KREA_JOBS duplicate window = %v, want 30m", d)
	}
}

func TestEnsureStreamsReportsBoth(t *testing.T) {
	js := startJS(t)
	ctx := testCtx(t)
	for _, cfg := range []jetstream.StreamConfig{
		{Name: events.StreamRequests, Subjects: []string{"x.>"}},
		{Name: events.StreamJobs, Subjects: []string{"y.>"}},
	} {
		if _, err := js.CreateStream(ctx, cfg); err != nil {
			t.Fatal(err)
		}
	}
	err := events.EnsureStreams(ctx, js, events.StreamOptions{})
	if !errors.Is(err, events.ErrIncompatibleStream) {
		t.Fatalf("err = %v", err)
	}
	var joined interface{ Unwrap() []error }
	if !errors.As(err, &joined) || len(joined.Unwrap()) != 2 {
		t.Errorf("want both streams reported, got %v", err)
	}
}

// TestFollowSubjects: KREA_JOBS republishes what it stores to
// kreabus.events.<status>: a core subscriber there hears an event
// published twice once (a subscriber of krea.jobs.> hears both publishes),
// with the event's headers and its stream sequence. A KREA_JOBS made
// without the RePublish (an older release) gets it, and nothing else
// changes.
func TestFollowSubjects(t *testing.T) {
	_, nc, js := natstest.JetStream(t)
	ctx := testCtx(t)
	old := events.JobsStreamConfig(events.StreamOptions{JobsMaxAge: 48 * time.Hour})
	old.RePublish = nil
	if _, err := js.CreateStream(ctx, old); err != nil {
		t.Fatal(err)
	}
	st, err := events.EnsureStream(ctx, js, events.JobsStreamConfig(events.StreamOptions{}))
	if err != nil {
		t.Fatal(err)
	}
	cfg := st.CachedInfo().Config
	if cfg.RePublish == nil || cfg.RePublish.Source != events.JobsSubjects || cfg.RePublish.Destination != events.FollowSubjects || cfg.MaxAge != 48*time.Hour {
		t.Fatalf("after EnsureStream: RePublish %+v, MaxAge %v", cfg.RePublish, cfg.MaxAge)
	}

	follow := make(chan *nats.Msg, 16)
	raw := make(chan *nats.Msg, 16)
	if _, err := nc.ChanSubscribe(events.FollowSubjects, follow); err != nil {
		t.Fatal(err)
	}
	if _, err := nc.ChanSubscribe(events.JobsSubjects, raw); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	const jobID = "4d0e5f97-9721-4422-b88c-73a9032d7de1"
	ev := func(id string) *nats.Msg {
		return events.NewJobMsg(events.EventHeaders{JobID: id, Status: "completed", RequestID: "req-1", Source: events.SourceWebhook}, []byte(`{"job_id":"`+id+`"}`))
	}
	for i := range 2 {
		ack, err := js.PublishMsg(ctx, ev(jobID))
		if err != nil || ack.Duplicate != (i == 1) {
			t.Fatalf("publish %d: %+v, %v", i, ack, err)
		}
	}
	// A last event: once it is heard, anything before it has been.
	const lastID = "5e1f6a08-0832-4533-c99d-84b0143e8ef2"
	if _, err := js.PublishMsg(ctx, ev(lastID)); err != nil {
		t.Fatal(err)
	}
	collect := func(ch chan *nats.Msg) []*nats.Msg {
		var got []*nats.Msg
		for {
			select {
			case m := <-ch:
				got = append(got, m)
				if m.Header.Get(events.HeaderJobID) == lastID {
					return got
				}
			case <-time.After(10 * time.Second):
				t.Fatalf("the last event never came; got %d", len(got))
			}
		}
	}
	got := collect(follow)
	if len(got) != 2 || got[0].Header.Get(events.HeaderJobID) != jobID {
		t.Fatalf("follow subject: %d events, want 2 (the repeat dropped)", len(got))
	}
	m := got[0]
	if m.Subject != events.FollowPrefix+"completed" || m.Header.Get(events.HeaderMsgID) != jobID || m.Header.Get("Nats-Sequence") != "1" ||
		m.Header.Get("Nats-Subject") != "krea.jobs.completed" || m.Header.Get(events.HeaderCEType) != "ai.krea.job.completed" ||
		string(m.Data) != `{"job_id":"`+jobID+`"}` {
		t.Errorf("republished event: %s %v %q", m.Subject, m.Header, m.Data)
	}
	if n := len(collect(raw)); n != 3 {
		t.Errorf("krea.jobs.> subscriber heard %d publishes, want 3 (core NATS delivers the repeat too)", n)
	}
}
