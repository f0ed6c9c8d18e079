package k8s_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/kreabus/kreabus/internal/config"
	"github.com/kreabus/kreabus/internal/mirrord"
	"github.com/kreabus/kreabus/internal/natstest"
	"github.com/kreabus/kreabus/pkg/events"
	"github.com/kreabus/kreabus/pkg/krea"
	"github.com/kreabus/kreabus/pkg/krea/kreatest"
)

// TestNATSConfigMirrorPermissions runs the real mirror as the NATS user
// "mirror" of config/nats-server.conf: it creates the results bucket, its
// consumer, stores a result and publishes krea.jobs.mirrored; the example
// application user reads the result; and neither can do the other's part.
func TestNATSConfigMirrorPermissions(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a NATS server")
	}
	s, users := startNATS(t)
	submitter := connectAs(t, s, users["KREABUS_SUBMITTER_NKEY"], "submitter")
	bridge := connectAs(t, s, users["KREABUS_BRIDGE_NKEY"], "bridge")
	app := connectAs(t, s, users["KREABUS_APP_NKEY"], "app")
	mir := connectAs(t, s, users["KREABUS_MIRROR_NKEY"], "mirror")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := events.EnsureStream(ctx, submitter.js, events.JobsStreamConfig(events.StreamOptions{})); err != nil {
		t.Fatal(err)
	}

	// The mirror program, authenticated with the user's seed file.
	seed, err := users["KREABUS_MIRROR_NKEY"].Seed()
	if err != nil {
		t.Fatal(err)
	}
	seedFile := filepath.Join(t.TempDir(), "user.nk")
	if err := os.WriteFile(seedFile, seed, 0o600); err != nil {
		t.Fatal(err)
	}
	vals := map[string]string{
		"NATS_URL": s.ClientURL(), "NATS_NKEY": seedFile, "KREABUS_ADMIN_LISTEN": "",
		"KREABUS_RESULTS_ALLOW_HOSTS": "127.0.0.1", "KREABUS_RESULTS_ALLOW_PRIVATE": "true",
	}
	var ms mirrord.Settings
	if err := config.Load(&ms, "mirror", nil, func(k string) (string, bool) { v, ok := vals[k]; return v, ok }); err != nil {
		t.Fatal(err)
	}
	p, err := mirrord.Start(ms, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = p.Shutdown(sctx)
	})

	// A completed job, as the bridge stores it.
	sim := kreatest.NewServer(kreatest.Config{QueueTime: -1, RunTime: -1})
	t.Cleanup(sim.Close)
	res, err := sim.NewClient().Submit(ctx, "/generate/image/bfl/flux-1-dev", json.RawMessage(`{"prompt":"x"}`))
	if err != nil {
		t.Fatal(err)
	}
	var body []byte
	natstest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		var ok bool
		if body, ok = sim.JobJSON(res.Job.JobID); !ok || !json.Valid(body) {
			return errors.New("no job")
		}
		if j, _ := sim.Job(res.Job.JobID); j.Status != krea.StatusCompleted {
			return fmt.Errorf("job %s", j.Status)
		}
		body, _ = sim.JobJSON(res.Job.JobID)
		return nil
	})
	msg := events.NewJobMsg(events.EventHeaders{JobID: res.Job.JobID, Status: krea.StatusCompleted, Source: events.SourceWebhook}, body)
	if _, err := bridge.js.PublishMsg(ctx, msg); err != nil {
		t.Fatal(err)
	}

	// The app waits for the mirrored event and reads the result over NATS.
	got := make(chan *events.Event, 1)
	ccfg, err := events.JobsConsumerConfig("app-results", events.WithStatuses(events.StatusMirrored))
	if err != nil {
		t.Fatal(err)
	}
	appCons, err := app.js.CreateOrUpdateConsumer(ctx, events.StreamJobs, ccfg)
	if err != nil {
		t.Fatalf("app creates its consumer: %v", err)
	}
	jc, err := events.ConsumeJobs(app.js.Conn(), appCons, func(_ context.Context, ev *events.Event) error {
		got <- ev
		return nil
	})
	if err != nil {
		t.Fatalf("app consumes mirrored events: %v", err)
	}
	defer jc.Stop()
	var ev *events.Event
	select {
	case ev = <-got:
	case <-ctx.Done():
		t.Fatal("no mirrored event")
	}
	objs := ev.Objects()
	if len(objs) != 1 || !objs[0].OK() {
		t.Fatalf("objects %+v", objs)
	}
	r, err := events.OpenResult(ctx, app.js, objs[0])
	if err != nil {
		t.Fatalf("app opens the result: %v", err)
	}
	b, err := io.ReadAll(r)
	r.Close()
	if err != nil || uint64(len(b)) != objs[0].Size {
		t.Fatalf("app read %d bytes (%v), want %d", len(b), err, objs[0].Size)
	}

	denied(t, "mirror publishes a completed event", func(ctx context.Context) error {
		_, err := mir.js.Publish(ctx, events.JobsPrefix+"completed", []byte(`{}`))
		return err
	})
	denied(t, "mirror deletes the results bucket", func(ctx context.Context) error {
		return mir.js.DeleteObjectStore(ctx, events.DefaultResultsBucket)
	})
	denied(t, "mirror reads the ledger's stream", func(ctx context.Context) error {
		_, err := mir.js.Stream(ctx, "KV_KREABUS_LEDGER")
		return err
	})
	denied(t, "mirror consumes requests", func(ctx context.Context) error {
		_, err := mir.js.CreateConsumer(ctx, events.StreamRequests, jetstream.ConsumerConfig{Durable: "evil"})
		return err
	})
	denied(t, "app writes a result", func(ctx context.Context) error {
		obs, err := app.js.ObjectStore(ctx, events.DefaultResultsBucket)
		if err != nil {
			return err
		}
		_, err = obs.PutString(ctx, ev.JobID+"/0.png", "forged")
		return err
	})
	denied(t, "app takes the mirror's events", func(ctx context.Context) error {
		c, err := app.js.Consumer(ctx, events.StreamJobs, "kreabus-mirror")
		if err != nil {
			return err
		}
		_, err = c.Fetch(1, jetstream.FetchMaxWait(200*time.Millisecond))
		return err
	})
	denied(t, "bridge writes a result", func(ctx context.Context) error {
		_, err := bridge.js.Publish(ctx, "$O.KREA_RESULTS.M.x", []byte(`{}`))
		return err
	})
}
