package mirror

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kreabus/kreabus/internal/config"
	"github.com/kreabus/kreabus/internal/natstest"
	"github.com/kreabus/kreabus/pkg/events"
	"github.com/kreabus/kreabus/pkg/krea"
	"github.com/kreabus/kreabus/pkg/krea/kreatest"
)

// env is a test world: an embedded JetStream server with the kreabus
// streams, and the Krea simulator serving result files.
type env struct {
	t   *testing.T
	url string
	js  jetstream.JetStream
	sim *kreatest.Server
}

func newEnv(t *testing.T, simCfg kreatest.Config) *env {
	t.Helper()
	ns := natstest.RunServer(t)
	nc := natstest.Connect(t, ns.ClientURL())
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	if err := events.EnsureStreams(testCtx(t), js, events.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	if simCfg.Concurrency == 0 {
		simCfg.Concurrency = 200
	}
	if simCfg.QueueTime == 0 {
		simCfg.QueueTime, simCfg.RunTime = -1, -1
	}
	sim := kreatest.NewServer(simCfg)
	t.Cleanup(sim.Close)
	return &env{t: t, url: ns.ClientURL(), js: js, sim: sim}
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// settings loads the mirror's settings the way cmd/mirror does, for this
// world: loopback allowed, short waits.
func (e *env) settings(extra map[string]string) Settings {
	e.t.Helper()
	vals := map[string]string{
		"NATS_URL":                      e.url,
		"KREABUS_ADMIN_LISTEN":          "",
		"KREABUS_RESULTS_ALLOW_HOSTS":   "127.0.0.1",
		"KREABUS_RESULTS_ALLOW_PRIVATE": "true",
		"KREABUS_RESULTS_IDLE_TIMEOUT":  "5s",
		"KREABUS_MIRROR_ACK_WAIT":       "3s",
	}
	for k, v := range extra {
		vals[k] = v
	}
	var s Settings
	if err := config.Load(&s, "mirror", nil, func(k string) (string, bool) { v, ok := vals[k]; return v, ok }); err != nil {
		e.t.Fatal(err)
	}
	s.RetryBackoff = 20 * time.Millisecond
	return s
}

// start starts a mirror and stops it when the test ends.
func (e *env) start(s Settings) *Program {
	e.t.Helper()
	p, err := Start(s, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = p.Shutdown(ctx)
	})
	natstest.CheckFor(e.t, 10*time.Second, 10*time.Millisecond, func() error { return p.checkReady(context.Background()) })
	return p
}

// job runs one job on the simulator and returns its completed body.
func (e *env) job(path string) (string, []byte) {
	e.t.Helper()
	res, err := e.sim.NewClient().Submit(testCtx(e.t), path, json.RawMessage(`{"prompt":"x"}`))
	if err != nil {
		e.t.Fatal(err)
	}
	var body []byte
	natstest.CheckFor(e.t, 10*time.Second, 5*time.Millisecond, func() error {
		if j, _ := e.sim.Job(res.Job.JobID); j.Status != krea.StatusCompleted {
			return fmt.Errorf("job %s is %s", res.Job.JobID, j.Status)
		}
		body, _ = e.sim.JobJSON(res.Job.JobID)
		return nil
	})
	return res.Job.JobID, body
}

// publishCompleted stores a completed event as the bridge does.
func (e *env) publishCompleted(jobID string, body []byte) {
	e.t.Helper()
	msg := events.NewJobMsg(events.EventHeaders{
		JobID: jobID, Status: krea.StatusCompleted, RequestID: "req-" + jobID[:8], Source: events.SourceWebhook,
		Metadata: json.RawMessage(`{"user":"42"}`),
	}, body)
	if _, err := e.js.PublishMsg(testCtx(e.t), msg); err != nil {
		e.t.Fatal(err)
	}
}

// completedBody is a completed job object with the given result URLs.
func completedBody(jobID string, urls ...string) []byte {
	b, _ := json.Marshal(map[string]any{"job_id": jobID, "status": "completed", "result": map[string]any{"urls": urls}})
	return b
}

// stored is a stored mirrored event and its headers.
type stored struct {
	*events.Event
	Header nats.Header
}

// mirrored reads every krea.jobs.mirrored event stored, by job ID, and
// fails on a job that has more than one.
func (e *env) mirrored() map[string]stored {
	e.t.Helper()
	return readMirrored(e.t, e.js)
}

func readMirrored(t testing.TB, js jetstream.JetStream) map[string]stored {
	t.Helper()
	ctx := testCtxTB(t)
	s, err := js.Stream(ctx, events.StreamJobs)
	if err != nil {
		t.Fatal(err)
	}
	subj := events.JobSubject(events.StatusMirrored)
	out := map[string]stored{}
	var seq uint64
	for {
		m, err := s.GetMsg(ctx, seq+1, jetstream.WithGetMsgSubject(subj))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		seq = m.Sequence
		ev, err := events.DecodeEvent(m.Subject, m.Header, m.Data)
		if err != nil {
			t.Fatalf("mirrored event %d: %v", seq, err)
		}
		if _, dup := out[ev.JobID]; dup {
			t.Fatalf("job %s has two mirrored events", ev.JobID)
		}
		out[ev.JobID] = stored{ev, m.Header}
	}
}

func testCtxTB(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// waitMirrored waits until every job in ids has its mirrored event.
func (e *env) waitMirrored(within time.Duration, ids ...string) map[string]stored {
	e.t.Helper()
	var got map[string]stored
	natstest.CheckFor(e.t, within, 20*time.Millisecond, func() error {
		got = e.mirrored()
		for _, id := range ids {
			if got[id].Event == nil {
				return fmt.Errorf("job %s not mirrored (%d of %d)", id, len(got), len(ids))
			}
		}
		return nil
	})
	return got
}

// sha256Of hashes r to its end.
func sha256Of(t testing.TB, r io.Reader) ([32]byte, int64) {
	t.Helper()
	h := sha256.New()
	n, err := io.Copy(h, r)
	if err != nil {
		t.Fatal(err)
	}
	return [32]byte(h.Sum(nil)), n
}
