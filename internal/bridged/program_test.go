package bridged

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kreabus/kreabus/internal/bridge/bridgetest"
	"github.com/kreabus/kreabus/internal/natstest"
	"github.com/kreabus/kreabus/pkg/events"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kreabus/kreabus/internal/bridge"
	"github.com/kreabus/kreabus/internal/config"
	"github.com/kreabus/kreabus/internal/ledger"
	"github.com/kreabus/kreabus/internal/ledger/ledgertest"
	"github.com/kreabus/kreabus/internal/program"
	"github.com/kreabus/kreabus/pkg/krea"
)

// testSettings are the program's settings as config.Load makes them, for a
// NATS at url, on loopback ports.
func testSettings(t testing.TB, url string, extra map[string]string) Settings {
	t.Helper()
	env := map[string]string{
		"NATS_URL":                url,
		"KREABUS_WEBHOOK_SECRET":  testSecret,
		"KREABUS_LISTEN":          "127.0.0.1:0",
		"KREABUS_ADMIN_LISTEN":    "127.0.0.1:0",
		"KREABUS_PUBLISH_TIMEOUT": "1s",
	}
	for k, v := range extra {
		env[k] = v
	}
	var s Settings
	if err := config.Load(&s, "bridge", nil, func(k string) (string, bool) { v, ok := env[k]; return v, ok }); err != nil {
		t.Fatal(err)
	}
	return s
}

// startProgram starts the program with logs in a buffer, shut down (if
// still running) when the test ends.
func startProgram(t testing.TB, s Settings) (*Program, *natstest.Buffer) {
	t.Helper()
	logs := &natstest.Buffer{}
	log := slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	p, err := Start(s, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = p.Shutdown(ctx)
		if t.Failed() {
			t.Logf("program logs:\n%s", logs.String())
		}
	})
	return p, logs
}

func getStatus(url string) (int, string) {
	c := http.Client{Timeout: 5 * time.Second}
	res, err := c.Get(url)
	if err != nil {
		return 0, err.Error()
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, string(b)
}

func waitReadyz(t testing.TB, p *Program, want int) {
	t.Helper()
	natstest.CheckFor(t, 20*time.Second, 25*time.Millisecond, func() error {
		if code, body := getStatus("http://" + p.AdminAddr() + "/readyz"); code != want {
			return fmt.Errorf("readyz %d (%s), want %d", code, body, want)
		}
		return nil
	})
}

func programPost(t testing.TB, p *Program, requestID string, body []byte) response {
	t.Helper()
	tz, _ := events.NewTokenizer(testSecret, "")
	req, _ := http.NewRequest(http.MethodPost, "http://"+p.Addr()+events.WebhookPathPrefix+tz.Mint(requestID), bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	c := http.Client{Timeout: 20 * time.Second}
	res, err := c.Do(req)
	if err != nil {
		t.Fatalf("post: %v", err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return response{Code: res.StatusCode, Header: res.Header, Body: b}
}

// TestProgramNATSRestart stops the NATS server under the running bridge and
// starts it again: 503 with Retry-After within the bound and /readyz 503
// while it is down, 200s and /readyz 200 once it is back, with no restart.
func TestProgramNATSRestart(t *testing.T) {
	proc := natstest.StartProcess(t)
	s := testSettings(t, proc.URL(), nil)
	p, logs := startProgram(t, s)
	waitReadyz(t, p, http.StatusOK)

	first := uuid.NewString()
	programPost(t, p, "before", bridgetest.JobBody(first, krea.StatusCompleted)).OK(t)

	// /readyz answers within 100 ms at the moment NATS dies and after,
	// and turns 503.
	probes := make(chan time.Duration, 1)
	var probed atomic.Int32
	go func() {
		var slowest time.Duration
		defer func() { probes <- slowest }()
		for end := time.Now().Add(20 * time.Second); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
			start := time.Now()
			code, _ := getStatus("http://" + p.AdminAddr() + "/readyz")
			slowest = max(slowest, time.Since(start))
			probed.Add(1)
			if code == http.StatusServiceUnavailable {
				return
			}
		}
		slowest = time.Hour // never turned 503
	}()
	natstest.CheckFor(t, 10*time.Second, 5*time.Millisecond, func() error {
		if n := probed.Load(); n < 3 {
			return fmt.Errorf("%d probes before NATS dies", n)
		}
		return nil
	})
	proc.Stop()
	if slowest := <-probes; slowest > 100*time.Millisecond {
		t.Errorf("slowest /readyz around NATS dying: %v", slowest)
	}
	waitReadyz(t, p, http.StatusServiceUnavailable)
	for i := 0; i < 3; i++ {
		start := time.Now()
		r := programPost(t, p, "during", bridgetest.JobBody(uuid.NewString(), krea.StatusCompleted))
		if r.Code != http.StatusServiceUnavailable || r.Header.Get("Retry-After") == "" {
			t.Fatalf("NATS down: code %d Retry-After %q body %s", r.Code, r.Header.Get("Retry-After"), r.Body)
		}
		r.ErrMsg(t)
		if el := time.Since(start); el > s.Bridge.PublishTimeout+5*time.Second {
			t.Errorf("503 after %v", el)
		}
	}
	if code, body := getStatus("http://" + p.AdminAddr() + "/metrics"); code != 200 || !strings.Contains(body, "kreabus_nats_connected 0") {
		t.Errorf("metrics while down: %d, kreabus_nats_connected not 0", code)
	}

	proc.Start()
	var after string
	natstest.CheckFor(t, 20*time.Second, 50*time.Millisecond, func() error {
		after = uuid.NewString()
		r := programPost(t, p, "after", bridgetest.JobBody(after, krea.StatusCompleted))
		if r.Code != http.StatusOK {
			return fmt.Errorf("code %d", r.Code)
		}
		return nil
	})
	waitReadyz(t, p, http.StatusOK)

	_, js := natstest.ConnectJetStream(t, proc.URL())
	count := map[string]int{}
	for _, m := range natstest.StoredMsgs(t, js, events.StreamJobs) {
		count[m.Headers().Get(events.HeaderJobID)]++
	}
	if count[first] != 1 || count[after] != 1 {
		t.Errorf("stored counts: before %d, after %d", count[first], count[after])
	}
	for id, n := range count {
		if n != 1 {
			t.Errorf("job %s stored %d times", id, n)
		}
	}
	if !strings.Contains(logs.String(), "nats disconnected") {
		t.Errorf("no disconnect logged")
	}
}

// TestProgramStartsWithoutNATS: the program starts with NATS down, is not
// ready, answers 503, and becomes ready (creating KREA_JOBS with the
// configured duplicate window) once NATS comes up.
func TestProgramStartsWithoutNATS(t *testing.T) {
	proc := natstest.StartProcess(t)
	proc.Stop()
	s := testSettings(t, proc.URL(), map[string]string{"KREABUS_DUPLICATE_WINDOW": "90m"})
	p, _ := startProgram(t, s)
	waitReadyz(t, p, http.StatusServiceUnavailable)
	if r := programPost(t, p, "r", bridgetest.JobBody(uuid.NewString(), krea.StatusCompleted)); r.Code != http.StatusServiceUnavailable {
		t.Fatalf("code %d with NATS down", r.Code)
	}
	proc.Start()
	waitReadyz(t, p, http.StatusOK)
	programPost(t, p, "r", bridgetest.JobBody(uuid.NewString(), krea.StatusCompleted)).OK(t)

	_, js := natstest.ConnectJetStream(t, proc.URL())
	st, err := js.Stream(t.Context(), events.StreamJobs)
	if err != nil {
		t.Fatal(err)
	}
	if d := st.CachedInfo().Config.Duplicates; d != 90*time.Minute {
		t.Errorf("duplicate window %v, want 90m", d)
	}
}

// TestProgramStreamRecreated: KREA_JOBS deleted under the running bridge
// is created again after the first webhook that finds it missing.
func TestProgramStreamRecreated(t *testing.T) {
	srv := natstest.RunServer(t)
	p, _ := startProgram(t, testSettings(t, srv.ClientURL(), nil))
	waitReadyz(t, p, http.StatusOK)
	_, js := natstest.ConnectJetStream(t, srv.ClientURL())
	if err := js.DeleteStream(t.Context(), events.StreamJobs); err != nil {
		t.Fatal(err)
	}
	natstest.CheckFor(t, 20*time.Second, 100*time.Millisecond, func() error {
		if r := programPost(t, p, "r", bridgetest.JobBody(uuid.NewString(), krea.StatusCompleted)); r.Code != http.StatusOK {
			return fmt.Errorf("code %d", r.Code)
		}
		return nil
	})
	waitReadyz(t, p, http.StatusOK)
}

// TestProgramCreateStreamsOff: with stream creation off and no stream, the
// bridge is not ready and never creates it.
func TestProgramCreateStreamsOff(t *testing.T) {
	srv := natstest.RunServer(t)
	p, _ := startProgram(t, testSettings(t, srv.ClientURL(), map[string]string{"KREABUS_CREATE_STREAMS": "false"}))
	waitReadyz(t, p, http.StatusServiceUnavailable)
	if r := programPost(t, p, "r", bridgetest.JobBody(uuid.NewString(), krea.StatusCompleted)); r.Code != http.StatusServiceUnavailable {
		t.Fatalf("code %d without a stream", r.Code)
	}
	_, js := natstest.ConnectJetStream(t, srv.ClientURL())
	if _, err := js.Stream(t.Context(), events.StreamJobs); !errors.Is(err, jetstream.ErrStreamNotFound) {
		t.Fatalf("stream: %v", err)
	}
}

// TestProgramShutdown is SIGTERM: /readyz turns 503, the listener closes,
// the webhook in flight (its body still arriving) completes and is stored,
// the NATS connection is drained and closed, all within the timeout.
func TestProgramShutdown(t *testing.T) {
	srv := natstest.RunServer(t)
	s := testSettings(t, srv.ClientURL(), nil)
	p, logs := startProgram(t, s)
	waitReadyz(t, p, http.StatusOK)

	tz, _ := events.NewTokenizer(testSecret, "")
	body := bridgetest.JobBody(uuid.NewString(), krea.StatusCompleted)
	conn, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "POST %s%s HTTP/1.1\r\nHost: bridge\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n",
		events.WebhookPathPrefix, tz.Mint("slow"), len(body))
	if _, err := conn.Write(body[:10]); err != nil {
		t.Fatal(err)
	}
	natstest.CheckFor(t, 10*time.Second, 5*time.Millisecond, func() error {
		if n := p.Bridge().InFlight(); n != 1 {
			return fmt.Errorf("%d in flight", n)
		}
		return nil
	})

	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), s.ShutdownTimeout)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- p.Shutdown(ctx) }()
	waitReadyz(t, p, http.StatusServiceUnavailable)
	natstest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		c, err := net.Dial("tcp", p.Addr())
		if err == nil {
			c.Close()
			return errors.New("still accepting connections")
		}
		return nil
	})
	select {
	case err := <-done:
		t.Fatalf("Shutdown returned %v before the in-flight webhook finished", err)
	default:
	}

	if _, err := conn.Write(body[10:]); err != nil {
		t.Fatal(err)
	}
	res, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	rb, _ := io.ReadAll(res.Body)
	res.Body.Close()
	(response{Code: res.StatusCode, Body: rb}).OK(t)

	if err := <-done; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if el := time.Since(start); el > s.ShutdownTimeout {
		t.Errorf("shutdown took %v", el)
	}
	if !p.Conn().IsClosed() {
		t.Error("NATS connection not closed")
	}
	_, js := natstest.ConnectJetStream(t, srv.ClientURL())
	if msgs := natstest.StoredMsgs(t, js, events.StreamJobs); len(msgs) != 1 || !bytes.Equal(msgs[0].Data(), body) {
		t.Fatalf("%d stored", len(msgs))
	}
	if !strings.Contains(logs.String(), "bridge stopped") {
		t.Error("no stop line logged")
	}
}

// TestMainMissingSecret: without KREABUS_WEBHOOK_SECRET the program stops
// at once with one line naming it.
func TestMainMissingSecret(t *testing.T) {
	var stderr bytes.Buffer
	code := Main(t.Context(), nil, func(k string) (string, bool) {
		if k == "NATS_URL" {
			return "nats://127.0.0.1:1", true
		}
		return "", false
	}, &stderr)
	if code != program.ExitConfig {
		t.Errorf("exit code %d, want %d", code, program.ExitConfig)
	}
	out := stderr.String()
	if strings.Count(out, "\n") != 1 || !strings.Contains(out, "KREABUS_WEBHOOK_SECRET") {
		t.Errorf("stderr %q: want one line naming KREABUS_WEBHOOK_SECRET", out)
	}
}

// TestMainBadSetting: a malformed setting is one line naming it too, and
// the secret never appears.
func TestMainBadSetting(t *testing.T) {
	var stderr bytes.Buffer
	env := map[string]string{"KREABUS_WEBHOOK_SECRET": "very-secret-value", "KREABUS_PUBLISH_TIMEOUT": "soon"}
	code := Main(t.Context(), nil, func(k string) (string, bool) { v, ok := env[k]; return v, ok }, &stderr)
	out := stderr.String()
	if code != program.ExitConfig || strings.Count(out, "\n") != 1 || !strings.Contains(out, "KREABUS_PUBLISH_TIMEOUT") {
		t.Errorf("code %d stderr %q", code, out)
	}
	if strings.Contains(out, "very-secret-value") {
		t.Error("secret printed")
	}
	stderr.Reset()
	env["KREABUS_PUBLISH_TIMEOUT"] = "40s" // longer than the write timeout
	if code := Main(t.Context(), nil, func(k string) (string, bool) { v, ok := env[k]; return v, ok }, &stderr); code != program.ExitConfig ||
		!strings.Contains(stderr.String(), "KREABUS_WRITE_TIMEOUT") {
		t.Errorf("code %d stderr %q", code, stderr.String())
	}
}

// TestSettingsDefaults: loaded settings start from the groups' defaults,
// and a zero domain setting means its default.
func TestSettingsDefaults(t *testing.T) {
	s := testSettings(t, "nats://127.0.0.1:4222", map[string]string{"KREABUS_LISTEN": "", "KREABUS_PUBLISH_TIMEOUT": bridge.DefaultPublishTimeout.String()})
	if err := s.Validate(); err != nil {
		t.Fatal(err)
	}
	var want bridge.Config
	want.SetDefaults()
	want.Secret = testSecret
	if s.Bridge != want {
		t.Errorf("loaded %+v\nwant   %+v", s.Bridge, want)
	}
	if s.Admin.Listen != "127.0.0.1:0" || s.Streams.DuplicateWindow != time.Hour || !s.Streams.CreateStreams ||
		s.ShutdownTimeout != program.DefaultShutdownTimeout || s.Ledger.Bucket != ledger.DefaultBucket || s.DrainDelay != 0 {
		t.Errorf("groups not loaded: %+v", s)
	}
	for _, st := range config.Settings(&s) {
		if (st.Env == "KREABUS_WEBHOOK_SECRET" || st.Env == "KREABUS_WEBHOOK_SECRET_PREVIOUS") != st.Secret {
			t.Errorf("%s secret=%v", st.Env, st.Secret)
		}
	}
}

// TestProgramShutdownNATSDown: SIGTERM while NATS has never been reachable
// still stops promptly and cleanly.
func TestProgramShutdownNATSDown(t *testing.T) {
	p, _ := startProgram(t, testSettings(t, "nats://127.0.0.1:1", nil))
	waitReadyz(t, p, http.StatusServiceUnavailable)
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := p.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if el := time.Since(start); el > 8*time.Second { // the promise is 10 s
		t.Errorf("shutdown took %v", el)
	}
}

// TestProgramDrainDelay: on shutdown /readyz turns 503 at once, but the
// bridge keeps storing webhooks for KREABUS_DRAIN_DELAY, so a load balancer
// that still routes here meanwhile loses nothing.
func TestProgramDrainDelay(t *testing.T) {
	srv := natstest.RunServer(t)
	s := testSettings(t, srv.ClientURL(), map[string]string{"KREABUS_DRAIN_DELAY": "3s"})
	p, _ := startProgram(t, s)
	waitReadyz(t, p, http.StatusOK)

	ctx, cancel := context.WithTimeout(context.Background(), s.ShutdownTimeout)
	defer cancel()
	done := make(chan error, 1)
	start := time.Now()
	go func() { done <- p.Shutdown(ctx) }()
	waitReadyz(t, p, http.StatusServiceUnavailable)
	if r := programPost(t, p, "during-drain", bridgetest.JobBody(uuid.NewString(), krea.StatusCompleted)); r.Code != http.StatusOK {
		t.Fatalf("webhook during the drain delay: %d %s", r.Code, r.Body)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < time.Second {
		t.Fatalf("shutdown took %v, less than the drain delay", d)
	}
}

// TestProgramLedgerNotLoaded: a bridge started on a ledger already holding
// 20 000 jobs is ready at once (it loads nothing) and answers webhooks for
// jobs recorded before it started exactly as for any other: a terminal
// one's repeat is a duplicate however late, another request's job is 403, a
// running one is stored with its request's metadata, and a second job of a
// request is stored marked extra.
func TestProgramLedgerNotLoaded(t *testing.T) {
	const jobs, open = 20_000, 10
	url, js, _ := ledgertest.Filled(t, jobs, open)
	start := time.Now()
	p, _ := startProgram(t, testSettings(t, url, nil))
	waitReadyz(t, p, http.StatusOK)
	ready := time.Since(start)
	t.Logf("ready %v after start on a ledger of %d jobs", ready, jobs+open)
	if ready > 5*time.Second {
		t.Errorf("ready after %v: the bridge must not load the ledger", ready)
	}

	settledReq, settledJob := ledgertest.FillIDs(42)
	if r := programPost(t, p, settledReq, bridgetest.JobBody(settledJob, krea.StatusCompleted)); r.Code != http.StatusOK || !*r.OK(t).Duplicate {
		t.Fatalf("late repeat of a settled job: %d %s", r.Code, r.Body)
	}
	otherReq, _ := ledgertest.FillIDs(43)
	if r := programPost(t, p, otherReq, bridgetest.JobBody(settledJob, krea.StatusCompleted)); r.Code != http.StatusForbidden {
		t.Fatalf("another request's job: %d %s", r.Code, r.Body)
	}
	openReq, openJob := ledgertest.FillIDs(jobs + 3)
	body := bridgetest.JobBody(openJob, krea.StatusCompleted)
	if r := programPost(t, p, openReq, body); r.Code != http.StatusOK || *r.OK(t).Duplicate {
		t.Fatalf("running job's webhook: %d %s", r.Code, r.Body)
	}
	extra := uuid.NewString()
	if r := programPost(t, p, openReq, bridgetest.JobBody(extra, krea.StatusCompleted)); r.Code != http.StatusOK || *r.OK(t).Duplicate {
		t.Fatalf("second job's webhook: %d %s", r.Code, r.Body)
	}
	msgs := natstest.StoredMsgs(t, js, events.StreamJobs)
	if len(msgs) != 2 {
		t.Fatalf("%d events stored, want 2", len(msgs))
	}
	bridgetest.CheckEvent(t, msgs[0], openJob, krea.StatusCompleted, openReq, body)
	if md := msgs[0].Headers().Get(events.HeaderMetadata); !strings.Contains(md, "campaign") {
		t.Errorf("metadata header %q: want the request's metadata from the ledger", md)
	}
	if x := msgs[1].Headers().Get(events.HeaderExtraJob); x != "true" {
		t.Errorf("second job's %s header %q", events.HeaderExtraJob, x)
	}
}
