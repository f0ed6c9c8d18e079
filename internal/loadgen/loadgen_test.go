package loadgen

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kreabus/kreabus/internal/natstest"
	"github.com/kreabus/kreabus/pkg/events"
	"github.com/kreabus/kreabus/pkg/krea"
)

const testSecret = "loadgen-test-secret"

// setup starts an embedded JetStream server and the baseline bridge on it.
func setup(t *testing.T) (jetstream.JetStream, string) {
	t.Helper()
	ctx := t.Context()
	s := natstest.RunServer(t)
	tg, err := startInProcessBaseline(ctx, s.ClientURL(), testSecret, 1)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(tg.stop)
	_, js := natstest.ConnectJetStream(t, s.ClientURL())
	return js, tg.url
}

func TestRunBaselineAndCheck(t *testing.T) {
	js, url := setup(t)
	ctx := t.Context()
	from, err := StartSeq(ctx, js)
	if err != nil {
		t.Fatal(err)
	}
	measured := false
	res, err := Run(ctx, Config{
		URL:            url,
		Secret:         testSecret,
		Concurrency:    8,
		Duration:       1500 * time.Millisecond,
		Warmup:         200 * time.Millisecond,
		RepeatShare:    0.2,
		Seed:           42,
		OnMeasureStart: func() { measured = true },
	})
	if err != nil {
		t.Fatal(err)
	}
	r := res.Report
	r.Check = Check(ctx, js, from, res.Jobs)
	var sb strings.Builder
	r.WriteText(&sb)
	t.Log("\n" + sb.String())

	if !measured {
		t.Error("OnMeasureStart not called")
	}
	if !r.Check.Pass || !r.Passed() {
		t.Fatalf("check failed: %+v", r.Check)
	}
	if r.Requests < 50 || r.OK != r.Requests || r.ErrorCount() != 0 {
		t.Errorf("requests %d, ok %d, errors %v", r.Requests, r.OK, r.Errors)
	}
	if r.Repeats == 0 || r.Duplicates != r.Repeats {
		t.Errorf("repeats %d answered as duplicates %d", r.Repeats, r.Duplicates)
	}
	if r.Throughput <= 0 || r.Elapsed < Millis(time.Second) || r.Elapsed > Millis(5*time.Second) {
		t.Errorf("throughput %.0f over %v", r.Throughput, r.Elapsed)
	}
	l := r.Latency
	if l.Count != uint64(r.OK) || l.P50 <= 0 || l.P50 > l.P90 || l.P90 > l.P99 || l.P99 > l.P999 || l.P999 > l.Max || l.Min > l.P50 {
		t.Errorf("latency not monotone: %+v", l)
	}
	if r.Check.Expected != r.Jobs || r.Check.Stored != r.Jobs {
		t.Errorf("check: %d expected, %d stored, %d jobs", r.Check.Expected, r.Check.Stored, r.Jobs)
	}
	if _, err := json.Marshal(r); err != nil {
		t.Error(err)
	}

	// A job stored a second time under another message id must fail the
	// check, as must a job answered 200 that is not in the stream.
	j := res.Jobs[0]
	m := events.NewJobMsg(events.EventHeaders{JobID: j.ID, Status: j.Status, Source: events.SourceWebhook}, j.Body)
	m.Header.Set(events.HeaderMsgID, j.ID+"-again")
	if _, err := js.PublishMsg(ctx, m); err != nil {
		t.Fatal(err)
	}
	ghost := &Job{ID: uuid.NewString(), Status: krea.StatusCompleted}
	ghost.ok.Store(1)
	c := Check(ctx, js, from, append(res.Jobs, ghost))
	if c.Pass || len(c.Twice) != 1 || c.Twice[0] != j.ID || len(c.Missing) != 1 || c.Missing[0] != ghost.ID {
		t.Fatalf("check with a job stored twice and one missing: %+v", c)
	}
	sb.Reset()
	c.WriteText(&sb)
	if !strings.Contains(sb.String(), "FAIL") {
		t.Errorf("no FAIL in %q", sb.String())
	}
}

func TestCheckFailsOnDuplicateFromAnotherProducer(t *testing.T) {
	// A job of someone else's stored twice on a terminal subject fails too.
	js, _ := setup(t)
	ctx := t.Context()
	id := uuid.NewString()
	for _, msgID := range []string{id, id + ":x"} {
		m := nats.NewMsg(events.JobsPrefix + "completed")
		m.Header.Set(events.HeaderMsgID, msgID)
		m.Header.Set(events.HeaderJobID, id)
		m.Data = []byte(`{}`)
		if _, err := js.PublishMsg(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	c := Check(ctx, js, 1, nil)
	if c.Pass || len(c.Twice) != 1 {
		t.Fatalf("%+v", c)
	}
}

func TestOpenLoopAndE2E(t *testing.T) {
	js, url := setup(t)
	ctx := t.Context()
	from, err := StartSeq(ctx, js)
	if err != nil {
		t.Fatal(err)
	}
	rep, err := E2E(ctx, js, Config{
		URL:         url,
		Secret:      testSecret,
		Concurrency: 8,
		Rate:        200,
		Duration:    time.Second,
		Warmup:      100 * time.Millisecond,
	}, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var sb strings.Builder
	rep.WriteText(&sb)
	t.Log("\n" + sb.String())
	if rep.Load.Mode != "open" || rep.Load.Requests < 150 || rep.Load.Requests > 250 {
		t.Errorf("open loop at 200/s for 1 s answered %d requests", rep.Load.Requests)
	}
	if rep.Expected == 0 || rep.Received != rep.Expected || rep.E2E.Count != uint64(rep.Received) {
		t.Errorf("e2e received %d of %d (%d samples)", rep.Received, rep.Expected, rep.E2E.Count)
	}
	if rep.E2E.P50 <= 0 || rep.E2E.P50 > rep.E2E.Max {
		t.Errorf("e2e latency %+v", rep.E2E)
	}
	if c := Check(ctx, js, from, rep.Jobs); !c.Pass {
		t.Errorf("check: %+v", c)
	}
}

func TestRunRequestCountAndErrors(t *testing.T) {
	_, url := setup(t)
	// A wrong secret: every request is a 401, counted by status code.
	res, err := Run(t.Context(), Config{URL: url, Secret: "wrong", Concurrency: 4, Requests: 40, RepeatShare: -1})
	if err != nil {
		t.Fatal(err)
	}
	r := res.Report
	if r.Requests != 40 || r.OK != 0 || r.Errors["401"] != 40 || r.Repeats != 0 {
		t.Fatalf("requests %d ok %d errors %v repeats %d", r.Requests, r.OK, r.Errors, r.Repeats)
	}
}

func TestCeiling(t *testing.T) {
	s := natstest.RunServer(t)
	r, err := Ceiling(context.Background(), CeilingConfig{URL: s.ClientURL(), Clients: 4, Duration: 500 * time.Millisecond, Size: 100, Dedup: true})
	if err != nil {
		t.Fatal(err)
	}
	if r.Msgs == 0 || r.Errors != 0 || r.Throughput <= 0 || r.Latency.Count != uint64(r.Msgs) {
		t.Fatalf("%+v", r)
	}
	if !strings.Contains(r.NATSCommand, "nats bench js pub sync") || !strings.Contains(r.NATSCommand, "--clients 4 --size 100") {
		t.Errorf("command %q", r.NATSCommand)
	}
}

func TestJobBody(t *testing.T) {
	now := time.Now()
	for _, size := range []int{0, 250, 300, 1000, 4096} {
		for _, st := range []krea.Status{krea.StatusCompleted, krea.StatusFailed} {
			id := uuid.NewString()
			b := jobBody(id, st, size, now)
			if size >= naturalBodySize() && len(b) != size {
				t.Errorf("size %d %s: got %d bytes", size, st, len(b))
			}
			j, err := krea.ParseJob(b)
			if err != nil || j.JobID != id || j.Status != st {
				t.Errorf("size %d %s: %v %+v\n%s", size, st, err, j, b)
			}
			if st == krea.StatusCompleted && (j.Result == nil || len(j.Result.URLs) != 2) {
				t.Errorf("no result.urls in %s", b)
			}
		}
	}
}

func TestDuplicateFlag(t *testing.T) {
	for in, want := range map[string]bool{
		`{"job_id":"x","status":"completed","duplicate":true}`:          true,
		`{"job_id":"x","status":"completed","duplicate":false}`:         false,
		"{\"duplicate\" :\n true}":                                      true,
		`{"job_id":"x"}`:                                                false,
		`{"duplicate":"true"}`:                                          false,
		`{"job_id":"x","status":"completed","duplicate": true }` + "\n": true,
	} {
		if got := duplicateFlag([]byte(in)); got != want {
			t.Errorf("%q: %v", in, got)
		}
	}
}

func TestNATSConf(t *testing.T) {
	c := NATSConf("nats-2", 4222, "/tmp/s", NATSOptions{Nodes: 3, SyncAlways: true}, []int{6001, 6002, 6003}, 1)
	for _, want := range []string{"server_name: nats-2", "listen: 127.0.0.1:4222", "sync_interval: always", "nats-route://127.0.0.1:6001", "nats-route://127.0.0.1:6003", "listen: 127.0.0.1:6002"} {
		if !strings.Contains(c, want) {
			t.Errorf("conf lacks %q:\n%s", want, c)
		}
	}
	if strings.Contains(c, "nats-route://127.0.0.1:6002") {
		t.Errorf("conf routes to itself:\n%s", c)
	}
}
