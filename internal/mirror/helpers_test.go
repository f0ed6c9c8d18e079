package mirror

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
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
	ns, _, js := natstest.JetStream(t)
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
func (e *env) settings(extra map[string]string) Config {
	e.t.Helper()
	vals := map[string]string{
		"KREABUS_RESULTS_ALLOW_HOSTS":   "127.0.0.1",
		"KREABUS_RESULTS_ALLOW_PRIVATE": "true",
		"KREABUS_RESULTS_IDLE_TIMEOUT":  "5s",
		"KREABUS_MIRROR_ACK_WAIT":       "3s",
	}
	for k, v := range extra {
		vals[k] = v
	}
	var c Config
	if err := config.Load(&c, "mirror", nil, func(k string) (string, bool) { v, ok := vals[k]; return v, ok }); err != nil {
		e.t.Fatal(err)
	}
	c.RetryBackoff = 20 * time.Millisecond
	return c
}

// running is a started mirror: a Mirror handling the completed events of
// a durable consumer, as internal/mirrord wires it (this stand-in uses
// jetstream's own Consume, so the test does not depend on events'
// consuming helpers).
type running struct {
	mr     *Mirror
	cc     jetstream.ConsumeContext
	m      *metrics
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// Shutdown takes no new event, lets the copies in flight finish, then
// stops.
func (r *running) Shutdown(ctx context.Context) error {
	r.cc.Drain()
	var err error
	select {
	case <-r.cc.Closed():
	case <-ctx.Done():
		r.cc.Stop()
		err = ctx.Err()
	}
	r.wg.Wait()
	r.cancel()
	r.mr.Close()
	return err
}

// start starts a mirror, with its own metrics, and stops it when the test
// ends.
func (e *env) start(c Config) *running {
	e.t.Helper()
	ctx := testCtx(e.t)
	obs, err := events.EnsureResultsStore(ctx, e.js, events.ResultsStoreConfig(events.ResultsOptions{Bucket: c.Bucket, TTL: c.TTL, Replicas: c.Replicas}))
	if err != nil {
		e.t.Fatal(err)
	}
	mr, err := New(c, e.js, obs, slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
	if err != nil {
		e.t.Fatal(err)
	}
	cons, err := e.js.CreateOrUpdateConsumer(ctx, events.StreamJobs, jetstream.ConsumerConfig{
		Durable:       mr.cfg.Consumer,
		FilterSubject: events.JobSubject(krea.StatusCompleted),
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       mr.cfg.AckWait,
		MaxAckPending: 2 * mr.cfg.Concurrency,
	})
	if err != nil {
		mr.Close()
		e.t.Fatal(err)
	}
	hctx, cancel := context.WithCancel(context.Background())
	r := &running{mr: mr, m: mr.m, cancel: cancel}
	slots := make(chan struct{}, mr.cfg.Concurrency)
	r.cc, err = cons.Consume(func(m jetstream.Msg) {
		slots <- struct{}{}
		r.wg.Add(1)
		go func() {
			defer func() { <-slots; r.wg.Done() }()
			ev, err := events.DecodeEvent(m.Subject(), m.Headers(), m.Data())
			if err != nil {
				_ = m.Term()
				return
			}
			if err := mr.Handle(hctx, ev); err != nil {
				_ = m.NakWithDelay(50 * time.Millisecond)
				return
			}
			_ = m.Ack()
		}()
	})
	if err != nil {
		cancel()
		mr.Close()
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = r.Shutdown(ctx)
	})
	return r
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
