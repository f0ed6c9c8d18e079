package mirrord

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/kreabus/kreabus/internal/config"
	"github.com/kreabus/kreabus/internal/natstest"
	"github.com/kreabus/kreabus/internal/program"
	"github.com/kreabus/kreabus/pkg/events"
	"github.com/kreabus/kreabus/pkg/krea"
	"github.com/kreabus/kreabus/pkg/krea/kreatest"
)

// TestProgram: the program creates KREA_JOBS and the results bucket,
// turns ready, mirrors a completed job, and stops cleanly.
func TestProgram(t *testing.T) {
	ns := natstest.RunServer(t)
	sim := kreatest.NewServer(kreatest.Config{QueueTime: -1, RunTime: -1})
	t.Cleanup(sim.Close)
	env := map[string]string{
		"NATS_URL":                      ns.ClientURL(),
		"KREABUS_ADMIN_LISTEN":          "127.0.0.1:0",
		"KREABUS_RESULTS_ALLOW_HOSTS":   "127.0.0.1",
		"KREABUS_RESULTS_ALLOW_PRIVATE": "true",
	}
	var s Settings
	if err := config.Load(&s, "mirror", nil, func(k string) (string, bool) { v, ok := env[k]; return v, ok }); err != nil {
		t.Fatal(err)
	}
	if s.ShutdownTimeout != program.DefaultShutdownTimeout || !s.Streams.CreateStreams || s.Mirror.Consumer == "" {
		t.Fatalf("defaults not loaded: %+v", s)
	}
	p, err := Start(s, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			_ = p.Shutdown(context.Background())
		}
	})
	natstest.CheckFor(t, 15*time.Second, 20*time.Millisecond, func() error {
		res, err := http.Get("http://" + p.AdminAddr() + "/readyz")
		if err != nil {
			return err
		}
		defer res.Body.Close()
		if b, _ := io.ReadAll(res.Body); res.StatusCode != http.StatusOK {
			return fmt.Errorf("readyz %d %s", res.StatusCode, b)
		}
		return nil
	})

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	jobID := submit(t, sim)
	var body []byte
	natstest.CheckFor(t, 10*time.Second, 5*time.Millisecond, func() error {
		if j, _ := sim.Job(jobID); j.Status != krea.StatusCompleted {
			return fmt.Errorf("job is %s", j.Status)
		}
		body, _ = sim.JobJSON(jobID)
		return nil
	})
	_, js := natstest.ConnectJetStream(t, ns.ClientURL())
	msg := events.NewJobMsg(events.EventHeaders{JobID: jobID, Status: krea.StatusCompleted, RequestID: "req-1", Source: events.SourceWebhook}, body)
	if _, err := js.PublishMsg(ctx, msg); err != nil {
		t.Fatal(err)
	}
	natstest.CheckFor(t, 15*time.Second, 20*time.Millisecond, func() error {
		st, err := js.Stream(ctx, events.StreamJobs)
		if err != nil {
			return err
		}
		m, err := st.GetLastMsgForSubject(ctx, events.JobSubject(events.StatusMirrored))
		if err != nil {
			return err
		}
		ev, err := events.DecodeEvent(m.Subject, m.Header, m.Data)
		if err != nil {
			return err
		}
		if objs := ev.Objects(); ev.JobID != jobID || len(objs) != 1 || !objs[0].OK() {
			return fmt.Errorf("mirrored event %+v", ev)
		}
		return nil
	})

	sctx, scancel := context.WithTimeout(context.Background(), p.ShutdownTimeout())
	defer scancel()
	stopped = true
	if err := p.Shutdown(sctx); err != nil {
		t.Fatal(err)
	}
}

// submit makes a job on the simulator, over HTTP as Krea's API is called.
func submit(t *testing.T, sim *kreatest.Server) string {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, sim.URL+"/generate/image/bfl/flux-1-dev", strings.NewReader(`{"prompt":"x"}`))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+sim.Token())
	req.Header.Set("Content-Type", "application/json")
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var job struct {
		JobID string `json:"job_id"`
	}
	if err := json.NewDecoder(res.Body).Decode(&job); err != nil || res.StatusCode != http.StatusOK || job.JobID == "" {
		t.Fatalf("submit: %d %v %+v", res.StatusCode, err, job)
	}
	return job.JobID
}

// TestMainBadSettings: settings errors are one line naming every setting
// at fault, and program.ExitConfig.
func TestMainBadSettings(t *testing.T) {
	env := map[string]string{"KREABUS_RESULTS_ATTEMPTS": "-1", "KREABUS_SHUTDOWN_TIMEOUT": "-1s"}
	var stderr bytes.Buffer
	code := Main(t.Context(), nil, func(k string) (string, bool) { v, ok := env[k]; return v, ok }, &stderr)
	out := stderr.String()
	if code != program.ExitConfig || strings.Count(out, "\n") != 1 ||
		!strings.Contains(out, "KREABUS_RESULTS_ATTEMPTS") || !strings.Contains(out, "KREABUS_SHUTDOWN_TIMEOUT") {
		t.Errorf("exit %d, stderr %q", code, out)
	}
}
