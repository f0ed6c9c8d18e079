package service_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"

	"github.com/kreabus/kreabus/internal/bridged"
	"github.com/kreabus/kreabus/internal/config"
	"github.com/kreabus/kreabus/internal/natstest"
	"github.com/kreabus/kreabus/internal/submitterd"
	"github.com/kreabus/kreabus/pkg/events"
	"github.com/kreabus/kreabus/pkg/krea"
	"github.com/kreabus/kreabus/pkg/krea/kreatest"
)

// env is the production wiring on loopback: embedded JetStream, the Krea
// simulator, the bridge and submitter programs.
type env struct {
	t    *testing.T
	url  string
	sim  *kreatest.Server
	nc   *nats.Conn
	js   jetstream.JetStream
	svc  *events.Service
	vars map[string]string
	subs []*submitterd.Program
}

func newEnv(t *testing.T) *env {
	t.Helper()
	ns := natstest.RunServer(t)
	sim := kreatest.NewServer(kreatest.Config{QueueTime: 20 * time.Millisecond, RunTime: time.Hour})
	t.Cleanup(sim.Close)
	e := &env{t: t, url: ns.ClientURL(), sim: sim, vars: map[string]string{
		"NATS_URL":                  ns.ClientURL(),
		"KREABUS_WEBHOOK_SECRET":    "0123456789abcdef0123456789abcdef",
		"KREABUS_LISTEN":            "127.0.0.1:0",
		"KREABUS_ADMIN_LISTEN":      "",
		"KREA_API_URL":              sim.URL,
		"KREA_API_TOKEN":            sim.Token(),
		"KREABUS_PAUSE_BACKOFF_MIN": "3s",
		"KREABUS_PAUSE_BACKOFF_MAX": "3s",
		"KREABUS_UNCERTAIN_SETTLE":  "300ms",
		"KREABUS_API_TIMEOUT":       "5s",
	}}
	var bs bridged.Settings
	e.load(&bs)
	b, err := bridged.Start(bs, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Shutdown(context.Background()) })
	e.vars["KREABUS_PUBLIC_URL"] = "http://" + b.Addr()
	e.startSubmitter()
	e.nc = natstest.Connect(t, e.url)
	if e.js, err = jetstream.New(e.nc); err != nil {
		t.Fatal(err)
	}
	if e.svc, err = events.NewService(e.nc); err != nil {
		t.Fatal(err)
	}
	return e
}

func (e *env) load(dst any) {
	e.t.Helper()
	err := config.Load(dst, "kreabus", nil, func(k string) (string, bool) { v, ok := e.vars[k]; return v, ok })
	if err != nil {
		e.t.Fatal(err)
	}
}

// startSubmitter starts one more submitter replica and waits for its
// service.
func (e *env) startSubmitter() *submitterd.Program {
	e.t.Helper()
	var ss submitterd.Settings
	e.load(&ss)
	p, err := submitterd.Start(ss, nil)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { _ = p.Shutdown(context.Background()) })
	natstest.CheckFor(e.t, 10*time.Second, 10*time.Millisecond, func() error {
		if p.Service() == nil {
			return errors.New("service not started")
		}
		return nil
	})
	e.subs = append(e.subs, p)
	return p
}

func (e *env) publish(id, prompt string) {
	e.t.Helper()
	req, err := events.NewRequest("/generate/image/bfl/flux-1-dev", map[string]any{"prompt": prompt})
	if err != nil {
		e.t.Fatal(err)
	}
	req.RequestID = id
	req.Metadata = json.RawMessage(`{"user":"42"}`)
	if _, err := events.PublishRequest(context.Background(), e.js, req); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) status(id string) (*events.RequestStatus, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return e.svc.RequestStatus(ctx, id)
}

func (e *env) cancel(req events.CancelRequest) (*events.CancelResult, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return e.svc.Cancel(ctx, req)
}

// waitState polls the status endpoint until the request is in state.
func (e *env) waitState(id, state string) *events.RequestStatus {
	e.t.Helper()
	var st *events.RequestStatus
	natstest.CheckFor(e.t, 15*time.Second, 20*time.Millisecond, func() error {
		var err error
		if st, err = e.status(id); err != nil {
			return err
		}
		if st.State != state {
			return fmt.Errorf("%s is %s, want %s", id, st.State, state)
		}
		return nil
	})
	return st
}

// stored returns the events stored on subject for the request, read with
// an ordered consumer over the whole stream (the test's independent
// check of what the service reports).
func (e *env) stored(subject, requestID string) []jetstream.Msg {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := e.js.OrderedConsumer(ctx, events.StreamJobs, jetstream.OrderedConsumerConfig{FilterSubjects: []string{subject}})
	if err != nil {
		e.t.Fatal(err)
	}
	var out []jetstream.Msg
	for {
		batch, err := c.FetchNoWait(100)
		if err != nil {
			e.t.Fatal(err)
		}
		n := 0
		for m := range batch.Messages() {
			n++
			if m.Headers().Get(events.HeaderRequestID) == requestID {
				out = append(out, m)
			}
		}
		if n == 0 {
			return out
		}
	}
}

// wantCode checks err is the service error code.
func wantCode(t *testing.T, err error, code, contains string) {
	t.Helper()
	var se *events.ServiceError
	if !errors.As(err, &se) || se.Code != code || !strings.Contains(se.Description, contains) {
		t.Fatalf("error %v, want code %s mentioning %q", err, code, contains)
	}
}

func hasEvent(st *events.RequestStatus, subject string) bool {
	for _, ev := range st.Events {
		if ev.Subject == subject && ev.Seq > 0 && !ev.Time.IsZero() && ev.Source != "" {
			return true
		}
	}
	return false
}

func sentToAPI(sim *kreatest.Server, requestID string) int {
	n := 0
	for url, c := range sim.AttemptsByWebhookURL() {
		if strings.Contains(url, "/webhooks/krea/"+requestID+".") {
			n += c
		}
	}
	return n
}

// TestStatusAndCancel walks requests through each state the status
// endpoint reports, and cancels each kind of thing cancel takes.
func TestStatusAndCancel(t *testing.T) {
	e := newEnv(t)

	// Bad input: a precise 400, and 404 for what kreabus never saw.
	_, err := e.status("no.dots")
	wantCode(t, err, events.CodeBadRequest, "request_id")
	_, err = e.status("never-published")
	wantCode(t, err, events.CodeNotFound, "never-published")
	if !errors.Is(err, events.ErrServiceNotFound) {
		t.Errorf("errors.Is(%v, ErrServiceNotFound) = false", err)
	}
	_, err = e.cancel(events.CancelRequest{JobID: "a", RequestID: "b"})
	wantCode(t, err, events.CodeBadRequest, "not both")

	// Submitted, running: Krea's job now, then cancelled through kreabus.
	e.publish("run-1", "a red fox")
	st := e.waitState("run-1", events.StateSubmitted)
	if st.JobID == "" || st.Path != "/generate/image/bfl/flux-1-dev" || string(st.Metadata) != `{"user":"42"}` || st.Attempts != 1 {
		t.Fatalf("submitted status %+v", st)
	}
	jobID := st.JobID
	natstest.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		st, err = e.status("run-1")
		if err != nil || !hasEvent(st, "krea.jobs.submitted") {
			return fmt.Errorf("submitted event not listed: %+v %v", st, err)
		}
		return nil
	})
	ctx := context.Background()
	info, err := e.svc.Job(ctx, jobID)
	if err != nil || info.From != "krea" || info.RequestID != "run-1" || info.Status.IsTerminal() || !strings.Contains(string(info.Job), jobID) {
		t.Fatalf("jobs.get of a running job: %+v %v", info, err)
	}
	res, err := e.cancel(events.CancelRequest{RequestID: "run-1"})
	if err != nil || res.Outcome != events.OutcomeJobCancelled || res.JobID != jobID {
		t.Fatalf("cancel running job: %+v %v", res, err)
	}
	if c := e.sim.Cancellations(); len(c) != 1 || c[0].JobID != jobID || c[0].StatusCode != 200 {
		t.Fatalf("simulator cancellations %+v", c)
	}
	st = e.waitState("run-1", events.StateTerminal)
	if st.Job == nil || st.Job.Status != krea.StatusCancelled || !hasEvent(st, "krea.jobs.cancelled") {
		t.Fatalf("terminal status %+v", st)
	}
	if n := len(e.stored("krea.jobs.cancelled", "run-1")); n != 1 {
		t.Fatalf("%d cancelled events, want 1", n)
	}
	info, err = e.svc.Job(ctx, jobID)
	if err != nil || info.From != "ledger" || info.Status != krea.StatusCancelled || !strings.Contains(string(info.Job), `"cancelled"`) {
		t.Fatalf("jobs.get of a finished job: %+v %v", info, err)
	}
	// A finished job: a clear error, and no DELETE reaches Krea.
	_, err = e.cancel(events.CancelRequest{JobID: jobID})
	wantCode(t, err, events.CodeConflict, "already finished")
	e.publish("done-1", "a bowl of ramen")
	st = e.waitState("done-1", events.StateSubmitted)
	if err := e.sim.Finish(st.JobID, krea.StatusCompleted, ""); err != nil {
		t.Fatal(err)
	}
	e.waitState("done-1", events.StateTerminal)
	_, err = e.cancel(events.CancelRequest{RequestID: "done-1"})
	wantCode(t, err, events.CodeConflict, "completed")
	if c := e.sim.Cancellations(); len(c) != 1 {
		t.Fatalf("a cancel of a finished job reached Krea: %+v", c)
	}

	// Rejected: an invalid request, with its reason and rejected event.
	bad := []byte(`{"request_id":"bad-1","path":"/v1/admin","input":{}}`)
	if _, err := e.js.Publish(ctx, "krea.requests.image", bad); err != nil {
		t.Fatal(err)
	}
	st = e.waitState("bad-1", events.StateRejected)
	if !strings.Contains(st.Reason, "path") {
		t.Errorf("rejected reason %q", st.Reason)
	}

	// Sending: a call in flight cannot be cancelled yet.
	e.sim.SetFaults(kreatest.Faults{Latency: 2 * time.Second})
	e.publish("slow-1", "a lighthouse")
	e.waitState("slow-1", events.StateSending)
	_, err = e.cancel(events.CancelRequest{RequestID: "slow-1"})
	wantCode(t, err, events.CodeConflict, "being sent")
	e.waitState("slow-1", events.StateSubmitted)

	// Uncertain: a 5xx may have made a job.
	e.sim.SetFaults(kreatest.Faults{Rate5xx: 1})
	e.publish("unsure-1", "a cyberpunk market")
	e.waitState("unsure-1", events.StateUncertain)
	_, err = e.cancel(events.CancelRequest{RequestID: "unsure-1"})
	wantCode(t, err, events.CodeConflict, "unknown")
	e.sim.SetFaults(kreatest.Faults{})
	e.waitState("unsure-1", events.StateSubmitted)

	// Queued: an account error pauses the consumer; a request published
	// then waits in KREA_REQUESTS and is cancelled before it is sent.
	e.sim.SetFaults(kreatest.Faults{OutOfCredits: true})
	e.publish("paid-1", "first after credits ran out")
	natstest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if !e.subs[0].Submitter().Paused() {
			return errors.New("not paused")
		}
		return nil
	})
	e.publish("queued-1", "never to be sent")
	st = e.waitState("queued-1", events.StateQueued)
	if st.QueueSeq == 0 || !st.Paused || st.Path == "" || len(st.Events) != 0 {
		t.Fatalf("queued status %+v", st)
	}
	res, err = e.cancel(events.CancelRequest{RequestID: "queued-1"})
	if err != nil || res.Outcome != events.OutcomeRequestCancelled {
		t.Fatalf("cancel queued: %+v %v", res, err)
	}
	// Again: the same answer, nothing more published.
	if res, err = e.cancel(events.CancelRequest{RequestID: "queued-1"}); err != nil || res.Outcome != events.OutcomeRequestCancelled {
		t.Fatalf("second cancel: %+v %v", res, err)
	}
	e.sim.SetFaults(kreatest.Faults{})
	e.waitState("paid-1", events.StateSubmitted)
	natstest.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		st, err = e.status("queued-1")
		if err != nil || st.State != events.StateRejected || st.Reason != events.ReasonCancelled || !hasEvent(st, "krea.jobs.rejected") {
			return fmt.Errorf("cancelled status %+v %v", st, err)
		}
		return nil
	})
	rej := e.stored("krea.jobs.rejected", "queued-1")
	if len(rej) != 1 || rej[0].Headers().Get(events.HeaderReason) != events.ReasonCancelled {
		t.Fatalf("%d rejected events for the cancelled request, want 1 with reason cancelled", len(rej))
	}
	if n := sentToAPI(e.sim, "queued-1"); n != 0 {
		t.Fatalf("the cancelled request reached the API %d times", n)
	}
	if n := sentToAPI(e.sim, "paid-1"); n < 2 {
		t.Errorf("paid-1 sent %d times, want the 402 and the probe", n)
	}
}

// TestReplicasAndDiscovery: two submitter replicas answer as one service
// (each request once, shared by the queue group) and discovery shows
// both instances with their request counts.
func TestReplicasAndDiscovery(t *testing.T) {
	e := newEnv(t)
	second := e.startSubmitter()
	const n = 40
	for i := range n {
		_, err := e.status(fmt.Sprintf("nobody-%d", i))
		wantCode(t, err, events.CodeNotFound, "nobody")
	}
	// micro counts a request once its handler has returned, after the
	// reply is sent: the last counts may come a moment after the replies.
	natstest.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		total, each := 0, []int{}
		for _, p := range []*submitterd.Program{e.subs[0], second} {
			for _, ep := range p.Service().Stats().Endpoints {
				if ep.Subject == events.SubjectRequestStatus {
					total += ep.NumRequests
					each = append(each, ep.NumRequests)
					if ep.NumErrors != ep.NumRequests {
						return fmt.Errorf("errors %d of %d requests", ep.NumErrors, ep.NumRequests)
					}
				}
			}
		}
		if total != n || len(each) != 2 || each[0] == 0 || each[1] == 0 {
			return fmt.Errorf("status requests per replica %v (total %d), want %d shared by both", each, total, n)
		}
		return nil
	})

	// $SRV.PING.kreabus: one answer per instance.
	inbox := nats.NewInbox()
	sub, err := e.nc.SubscribeSync(inbox)
	if err != nil {
		t.Fatal(err)
	}
	subj, _ := micro.ControlSubject(micro.PingVerb, events.ServiceName, "")
	if err := e.nc.PublishRequest(subj, inbox, nil); err != nil {
		t.Fatal(err)
	}
	ids := map[string]bool{}
	for range 2 {
		m, err := sub.NextMsg(5 * time.Second)
		if err != nil {
			t.Fatal(err)
		}
		var ping micro.Ping
		if err := json.Unmarshal(m.Data, &ping); err != nil || ping.Name != events.ServiceName || ping.Version == "" {
			t.Fatalf("ping %s: %v", m.Data, err)
		}
		ids[ping.ID] = true
	}
	if len(ids) != 2 {
		t.Fatalf("ping answered by %d instances, want 2", len(ids))
	}

	// The nats CLI, where installed, finds it as an operator would.
	natsCLI, err := exec.LookPath("nats")
	if err != nil {
		t.Log("nats CLI not on PATH: discovery checked with micro only")
		return
	}
	for _, args := range [][]string{{"micro", "ls"}, {"micro", "info", "kreabus"}, {"micro", "stats", "kreabus"}} {
		out, err := exec.Command(natsCLI, append([]string{"--server", e.url}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("nats %v: %v\n%s", args, err, out)
		}
		if !strings.Contains(string(out), "kreabus") {
			t.Errorf("nats %v does not show kreabus:\n%s", args, out)
		}
		if args[1] == "info" && !strings.Contains(string(out), events.SubjectJobCancel) {
			t.Errorf("nats micro info lacks %s:\n%s", events.SubjectJobCancel, out)
		}
	}
}
