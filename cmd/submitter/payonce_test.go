package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http/httptest"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/kreabus/kreabus/internal/bridged"
	"github.com/kreabus/kreabus/internal/config"
	"github.com/kreabus/kreabus/internal/natstest"
	"github.com/kreabus/kreabus/pkg/events"
	"github.com/kreabus/kreabus/pkg/krea/kreatest"
)

// These tests run the whole pipeline with the submitter as a separate
// process that can be SIGKILLed mid-call: an embedded JetStream, the real
// bridge (in this process) receiving the simulator's webhooks, and the Krea
// simulator completing every call the submitter started even when the
// submitter gave up on it or died (Faults.CompleteAbandoned), as the real
// API does. Each checks the promise a paying user cares about: every request
// ends in exactly one terminal or rejected event, and Krea made exactly one
// job per request that was not rejected.

const paySecret = "pay-once-test-secret-0123456789abcdef"

// submitterBinary builds this command once per test run.
func submitterBinary(t *testing.T) string { return natstest.Binary(t, ".") }

type pipeline struct {
	t      *testing.T
	url    string
	js     jetstream.JetStream
	sim    *kreatest.Server
	api    *httptest.Server
	public string
	tok    *events.Tokenizer
	env    []string
}

// newPipeline starts NATS, the simulator with faults and the bridge; env
// adds submitter settings.
func newPipeline(t *testing.T, faults kreatest.Faults, env ...string) *pipeline {
	t.Helper()
	submitterBinary(t) // build first: a long build must not eat into deadlines
	ns, _, js := natstest.JetStream(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := events.EnsureStreams(ctx, js, events.StreamOptions{}); err != nil {
		t.Fatal(err)
	}

	bs := map[string]string{
		"NATS_URL":               ns.ClientURL(),
		"KREABUS_WEBHOOK_SECRET": paySecret,
		"KREABUS_LISTEN":         "127.0.0.1:0",
		"KREABUS_ADMIN_LISTEN":   "127.0.0.1:0",
	}
	var s bridged.Settings
	if err := config.Load(&s, "bridge", nil, func(k string) (string, bool) { v, ok := bs[k]; return v, ok }); err != nil {
		t.Fatal(err)
	}
	logs := &natstest.Buffer{}
	bp, err := bridged.Start(s, slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelInfo})))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = bp.Shutdown(ctx)
		if t.Failed() {
			t.Logf("bridge logs (warnings and errors):\n%s", grepLevels(logs.String()))
		}
	})

	faults.CompleteAbandoned = true
	sim, err := kreatest.New(kreatest.Config{Concurrency: 1000, Seed: 7, Faults: faults})
	if err != nil {
		t.Fatal(err)
	}
	api := httptest.NewServer(sim)
	t.Cleanup(func() { api.Close(); sim.Close() })
	tok, _ := events.NewTokenizer(paySecret, "")
	p := &pipeline{t: t, url: ns.ClientURL(), js: js, sim: sim, api: api, public: "http://" + bp.Addr(), tok: tok}
	p.env = append([]string{
		"PATH=" + os.Getenv("PATH"),
		"HOME=" + t.TempDir(),
		"NATS_URL=" + p.url,
		"KREA_API_URL=" + api.URL,
		"KREA_API_TOKEN=" + sim.Token(),
		"KREABUS_PUBLIC_URL=" + p.public,
		"KREABUS_WEBHOOK_SECRET=" + paySecret,
		"KREABUS_ADMIN_LISTEN=127.0.0.1:0",
		"KREABUS_LOG_FORMAT=text",
		"KREABUS_SUBMIT_CONCURRENCY=16",
		"KREABUS_ACK_WAIT=3s",
		"KREABUS_API_TIMEOUT=2s",
		"KREABUS_UNCERTAIN_SETTLE=500ms",
		"KREABUS_UNCERTAIN_WAIT=5m",
		"KREABUS_RETRY_BACKOFF_MIN=50ms",
		"KREABUS_RETRY_BACKOFF_MAX=1s",
		"KREABUS_WEBHOOK_GRACE=5s",
		"KREABUS_POLL_INTERVAL=500ms",
	}, env...)
	return p
}

// grepLevels keeps the warning and error lines of a JSON log.
func grepLevels(logs string) string {
	var b strings.Builder
	for _, l := range strings.Split(logs, "\n") {
		if strings.Contains(l, `"level":"WARN"`) || strings.Contains(l, `"level":"ERROR"`) {
			b.WriteString(l)
			b.WriteByte('\n')
		}
	}
	return b.String()
}

// proc is a submitter process.
type proc struct {
	cmd    *exec.Cmd
	out    *natstest.Buffer
	exited chan struct{}
}

func (p *pipeline) startSubmitter() *proc {
	p.t.Helper()
	cmd := exec.Command(submitterBinary(p.t))
	cmd.Env = p.env
	out := &natstest.Buffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		p.t.Fatal(err)
	}
	sp := &proc{cmd: cmd, out: out, exited: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(sp.exited) }()
	p.t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-sp.exited:
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			<-sp.exited
		}
		if p.t.Failed() {
			p.t.Logf("submitter output (warnings and errors):\n%s", grepText(out.String()))
		}
	})
	return sp
}

func grepText(logs string) string {
	var b strings.Builder
	for _, l := range strings.Split(logs, "\n") {
		if strings.Contains(l, "level=WARN") || strings.Contains(l, "level=ERROR") {
			b.WriteString(l)
			b.WriteByte('\n')
		}
	}
	return b.String()
}

func (sp *proc) kill(t *testing.T) {
	t.Helper()
	if err := sp.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-sp.exited
}

// publish publishes n requests and returns their IDs.
func (p *pipeline) publish(n int) []string {
	p.t.Helper()
	ids := make([]string, n)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for i := range ids {
		ids[i] = fmt.Sprintf("pay-%03d", i)
		req := &events.Request{
			RequestID: ids[i],
			Path:      "/generate/image/bfl/flux-1-dev",
			Input:     json.RawMessage(`{"prompt":"a lighthouse at dusk"}`),
			Metadata:  json.RawMessage(fmt.Sprintf(`{"n":%d}`, i)),
		}
		if _, err := events.PublishRequest(ctx, p.js, req); err != nil {
			p.t.Fatal(err)
		}
	}
	return ids
}

// outcome is what KREA_JOBS holds for one request.
type outcome struct {
	terminal, rejected, extra, submitted int
	jobs                                 map[string]bool
}

func (p *pipeline) outcomes() map[string]*outcome {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := p.js.Stream(ctx, events.StreamJobs)
	if err != nil {
		p.t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		p.t.Fatal(err)
	}
	out := map[string]*outcome{}
	for seq := info.State.FirstSeq; info.State.Msgs > 0 && seq <= info.State.LastSeq; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if err != nil {
			p.t.Fatal(err)
		}
		ev, err := events.DecodeEvent(m.Subject, m.Header, m.Data)
		if err != nil {
			p.t.Fatalf("seq %d: %v", seq, err)
		}
		o := out[ev.RequestID]
		if o == nil {
			o = &outcome{jobs: map[string]bool{}}
			out[ev.RequestID] = o
		}
		switch {
		case ev.ExtraJob:
			o.extra++
		case ev.Status == events.StatusRejected:
			o.rejected++
		case ev.Status == events.StatusSubmitted:
			o.submitted++
			o.jobs[ev.JobID] = true
		case ev.Status.IsTerminal():
			o.terminal++
			o.jobs[ev.JobID] = true
		}
	}
	return out
}

// settle waits until every request has its one outcome and the work queue
// is empty, then checks the promise: exactly one terminal or rejected event
// per request, no extra job, and one job per request at Krea (none for a
// rejected one).
func (p *pipeline) settle(ids []string, within time.Duration) map[string]*outcome {
	p.t.Helper()
	var got map[string]*outcome
	natstest.CheckFor(p.t, within, 250*time.Millisecond, func() error {
		// First the work queue: a request leaves it once its submitted or
		// rejected event is stored, so the events read next are complete.
		if err := p.requestsLeft(); err != nil {
			return err
		}
		got = p.outcomes()
		done := 0
		for _, id := range ids {
			if o := got[id]; o != nil && o.terminal+o.rejected > 0 {
				done++
			}
		}
		if done < len(ids) {
			return fmt.Errorf("%d of %d requests have their outcome; %d jobs made", done, len(ids), p.sim.Submissions())
		}
		return nil
	})
	jobs := p.sim.SubmissionsByWebhookURL()
	for _, id := range ids {
		o := got[id]
		n := jobs[p.tok.URL(p.public, id)]
		if o.terminal+o.rejected != 1 || o.extra != 0 {
			p.t.Errorf("%s: %d terminal, %d rejected, %d extra-job events; want one outcome", id, o.terminal, o.rejected, o.extra)
		}
		if want := 1 - o.rejected; n != want {
			p.t.Errorf("%s: Krea made %d jobs, want %d", id, n, want)
		}
		if o.rejected == 0 && (o.submitted != 1 || len(o.jobs) != 1) {
			t := p.t
			t.Errorf("%s: %d submitted events, jobs %v", id, o.submitted, o.jobs)
		}
	}
	return got
}

func (p *pipeline) requestsLeft() error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := p.js.Stream(ctx, events.StreamRequests)
	if err != nil {
		return err
	}
	info, err := s.Info(ctx)
	if err != nil {
		return err
	}
	if info.State.Msgs != 0 {
		return fmt.Errorf("%d requests still in %s", info.State.Msgs, events.StreamRequests)
	}
	return nil
}

// killWhen SIGKILLs sp once Krea has made at least n jobs, and starts a new
// submitter.
func (p *pipeline) killWhen(sp *proc, n int) *proc {
	p.t.Helper()
	natstest.CheckFor(p.t, 60*time.Second, 5*time.Millisecond, func() error {
		if got := p.sim.Submissions(); got < n {
			return fmt.Errorf("%d jobs so far", got)
		}
		return nil
	})
	sp.kill(p.t)
	p.t.Logf("submitter SIGKILLed after %d jobs", p.sim.Submissions())
	return p.startSubmitter()
}

// count is how many log lines of the submitters contain msg.
func count(msg string, sps ...*proc) int {
	n := 0
	for _, sp := range sps {
		n += strings.Count(sp.out.String(), msg)
	}
	return n
}

// uncertainReport logs how uncertain calls were settled, and fails when
// no request's call had an unknown outcome, or was cut by a kill and came
// back already settled by its webhook: the test would prove nothing.
func uncertainReport(t *testing.T, sps ...*proc) {
	t.Helper()
	unknown, settled := count("call outcome unknown", sps...), count("request already submitted (ledger)", sps...)
	t.Logf("uncertain calls %d; redeliveries settled by the ledger (a webhook) %d, proven jobless by the listing %d, waiting rounds %d",
		unknown, settled, count("made no job", sps...), count("waiting for their webhooks", sps...))
	if unknown+settled == 0 {
		t.Error("no call's outcome was unknown and no request came back: the test proves nothing")
	}
}

// (a) SIGKILL mid-run: calls in flight at the kill reached Krea and made
// jobs; their requests come back to the next submitter, which must not send
// them again.
func TestPayOnceSubmitterKilled(t *testing.T) {
	p := newPipeline(t, kreatest.Faults{Latency: 300 * time.Millisecond})
	first := p.startSubmitter()
	ids := p.publish(300)
	second := p.killWhen(first, 100)
	p.settle(ids, 120*time.Second)
	uncertainReport(t, first, second)
}

// (b) A third of the calls answer after the submitter's API timeout: Krea
// makes the job all the same. A slow API must not multiply jobs.
func TestPayOnceSlowAPI(t *testing.T) {
	// 50 ms + [0, 675 ms): a third above the 500 ms timeout.
	p := newPipeline(t, kreatest.Faults{Latency: 50 * time.Millisecond, LatencyJitter: 675 * time.Millisecond},
		"KREABUS_API_TIMEOUT=500ms")
	sp := p.startSubmitter()
	ids := p.publish(300)
	p.settle(ids, 120*time.Second)
	uncertainReport(t, sp)
}

// (c) 10 % of the answers are lost after Krea made the job (502).
func TestPayOnceLostAnswers(t *testing.T) {
	p := newPipeline(t, kreatest.Faults{LostAnswerRate: 0.1, Latency: 20 * time.Millisecond})
	sp := p.startSubmitter()
	ids := p.publish(300)
	p.settle(ids, 120*time.Second)
	uncertainReport(t, sp)
}

// (d) 30 % 429 or 5xx (made no job), and a kill mid-run.
func TestPayOnceErrorsAndKill(t *testing.T) {
	p := newPipeline(t, kreatest.Faults{Rate429: 0.15, Rate5xx: 0.15, Latency: 100 * time.Millisecond})
	first := p.startSubmitter()
	ids := p.publish(300)
	second := p.killWhen(first, 100)
	p.settle(ids, 120*time.Second)
	uncertainReport(t, first, second)
}
