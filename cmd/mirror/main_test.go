package main

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/kreabus/kreabus/internal/natstest"
	"github.com/kreabus/kreabus/pkg/events"
	"github.com/kreabus/kreabus/pkg/krea"
	"github.com/kreabus/kreabus/pkg/krea/kreatest"
)

// These tests run the mirror as a separate process, as it runs in
// production: one that can be SIGKILLed mid-upload, and whose memory can
// be measured while it copies a file far larger than its budget. NATS is
// a nats-server process too, and the Krea simulator serves the files.

type world struct {
	t   *testing.T
	ns  *natstest.Process
	js  jetstream.JetStream
	sim *kreatest.Server
	bin string
}

func newWorld(t *testing.T, cfg kreatest.Config) *world {
	t.Helper()
	bin := natstest.Binary(t, ".") // build first: a long build must not eat into deadlines
	ns := natstest.StartProcess(t)
	_, js := natstest.ConnectJetStream(t, ns.URL())
	if err := events.EnsureStreams(ctx(t), js, events.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	cfg.QueueTime, cfg.RunTime = -1, -1
	sim := kreatest.NewServer(cfg)
	t.Cleanup(sim.Close)
	return &world{t: t, ns: ns, js: js, sim: sim, bin: bin}
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return c
}

// mirror starts the mirror process; it is killed when the test ends.
func (w *world) mirror() *exec.Cmd {
	w.t.Helper()
	cmd := exec.Command(w.bin)
	cmd.Env = []string{
		"NATS_URL=" + w.ns.URL(),
		"KREABUS_ADMIN_LISTEN=127.0.0.1:0",
		"KREABUS_LOG_FORMAT=text",
		"KREABUS_RESULTS_ALLOW_HOSTS=127.0.0.1",
		"KREABUS_RESULTS_ALLOW_PRIVATE=true",
		"KREABUS_RESULTS_IDLE_TIMEOUT=60s",
		"KREABUS_MIRROR_ACK_WAIT=2s",
	}
	logs := &natstest.Buffer{}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		w.t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	w.t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-done
		if w.t.Failed() {
			w.t.Logf("mirror logs:\n%s", logs.String())
		}
	})
	// Consuming once its durable consumer exists.
	natstest.CheckFor(w.t, 20*time.Second, 20*time.Millisecond, func() error {
		_, err := w.js.Consumer(ctx(w.t), events.StreamJobs, "kreabus-mirror")
		return err
	})
	return cmd
}

// completed runs a job on the simulator and publishes its completed event.
func (w *world) completed() (jobID, url string) {
	w.t.Helper()
	res, err := w.sim.NewClient().Submit(ctx(w.t), "/generate/video/kling/kling-2.1", json.RawMessage(`{"prompt":"x"}`))
	if err != nil {
		w.t.Fatal(err)
	}
	var body []byte
	natstest.CheckFor(w.t, 10*time.Second, 5*time.Millisecond, func() error {
		j, _ := w.sim.Job(res.Job.JobID)
		if j.Status != krea.StatusCompleted {
			return fmt.Errorf("job %s", j.Status)
		}
		url = j.Result.URLs[0]
		body, _ = w.sim.JobJSON(j.JobID)
		return nil
	})
	msg := events.NewJobMsg(events.EventHeaders{JobID: res.Job.JobID, Status: krea.StatusCompleted, RequestID: "r1", Source: events.SourceWebhook}, body)
	if _, err := w.js.PublishMsg(ctx(w.t), msg); err != nil {
		w.t.Fatal(err)
	}
	return res.Job.JobID, url
}

// mirrored returns the stored mirrored events.
func (w *world) mirrored() []*events.Event {
	w.t.Helper()
	s, err := w.js.Stream(ctx(w.t), events.StreamJobs)
	if err != nil {
		w.t.Fatal(err)
	}
	var out []*events.Event
	var seq uint64
	for {
		m, err := s.GetMsg(ctx(w.t), seq+1, jetstream.WithGetMsgSubject(events.JobSubject(events.StatusMirrored)))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return out
		}
		if err != nil {
			w.t.Fatal(err)
		}
		seq = m.Sequence
		ev, err := events.DecodeEvent(m.Subject, m.Header, m.Data)
		if err != nil {
			w.t.Fatal(err)
		}
		out = append(out, ev)
	}
}

func (w *world) waitMirrored(within time.Duration) *events.Event {
	w.t.Helper()
	var ev *events.Event
	natstest.CheckFor(w.t, within, 50*time.Millisecond, func() error {
		evs := w.mirrored()
		if len(evs) == 0 {
			return errors.New("no mirrored event")
		}
		ev = evs[0]
		return nil
	})
	return ev
}

// refDigest is the Object Store digest of what the simulator serves at url.
func (w *world) refDigest(url string) string {
	w.t.Helper()
	h := sha256.New()
	if _, ok, err := w.sim.ResultFile(url, h); !ok || err != nil {
		w.t.Fatal(ok, err)
	}
	return "SHA-256=" + base64.URLEncoding.EncodeToString(h.Sum(nil))
}

// TestKilledMidUpload: a mirror SIGKILLed while an object is half stored
// leaves no object that looks complete and no mirrored event; once
// restarted it copies the job again, completely, and exactly one mirrored
// event exists.
func TestKilledMidUpload(t *testing.T) {
	const size = 48 << 20
	w := newWorld(t, kreatest.Config{ResultSize: size, Faults: kreatest.Faults{ResultStallAfter: 16 << 20}})
	first := w.mirror()
	jobID, url := w.completed()
	name := jobID + "/0.mp4"

	// Wait until a good part of the file is in the bucket's stream.
	natstest.CheckFor(t, 30*time.Second, 10*time.Millisecond, func() error {
		s, err := w.js.Stream(ctx(t), "OBJ_KREA_RESULTS")
		if err != nil {
			return err
		}
		if b := s.CachedInfo().State.Bytes; b < 12<<20 {
			return fmt.Errorf("%d bytes stored", b)
		}
		return nil
	})
	if err := first.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_, _ = first.Process.Wait()

	obs, err := w.js.ObjectStore(ctx(t), "KREA_RESULTS")
	if err != nil {
		t.Fatal(err)
	}
	if info, err := obs.GetInfo(ctx(t), name); !errors.Is(err, jetstream.ErrObjectNotFound) {
		t.Fatalf("after the kill: object %+v, %v; want none", info, err)
	}
	if _, err := obs.Get(ctx(t), name); !errors.Is(err, jetstream.ErrObjectNotFound) {
		t.Fatalf("after the kill: Get = %v", err)
	}
	if evs := w.mirrored(); len(evs) != 0 {
		t.Fatalf("mirrored events after the kill: %d", len(evs))
	}

	w.sim.SetFaults(kreatest.Faults{}) // the CDN recovers
	w.mirror()
	ev := w.waitMirrored(40 * time.Second)
	o := ev.Objects()
	if ev.JobID != jobID || len(o) != 1 || !o[0].OK() || o[0].Name != name || o[0].Size != size || o[0].Digest != w.refDigest(url) {
		t.Fatalf("mirrored %s: %+v", ev.JobID, o)
	}
	info, err := obs.GetInfo(ctx(t), name)
	if err != nil || info.Size != size || info.Digest != o[0].Digest {
		t.Fatalf("object %+v, %v", info, err)
	}
	// The completed event is acknowledged: nothing will deliver it again.
	natstest.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		c, err := w.js.Consumer(ctx(t), events.StreamJobs, "kreabus-mirror")
		if err != nil {
			return err
		}
		if st := c.CachedInfo(); st.NumAckPending != 0 || st.NumPending != 0 {
			return fmt.Errorf("consumer: %d pending, %d unacknowledged", st.NumPending, st.NumAckPending)
		}
		return nil
	})
	if evs := w.mirrored(); len(evs) != 1 {
		t.Fatalf("%d mirrored events, want 1", len(evs))
	}
	if n := w.sim.ResultDownloads(url); n != 2 {
		t.Errorf("%d downloads, want 2 (the killed one and the complete one)", n)
	}
}

// TestLargeResultBoundedMemory copies a 200 MB result and measures the
// mirror process's peak resident memory before and after (VmHWM): the
// growth stays under 64 MB, whatever the file size.
func TestLargeResultBoundedMemory(t *testing.T) {
	if _, err := os.Stat("/proc/self/status"); err != nil {
		t.Skip("needs /proc")
	}
	const size = 200 << 20
	w := newWorld(t, kreatest.Config{ResultSize: size})
	cmd := w.mirror()
	before := vmHWM(t, cmd.Process.Pid)
	start := time.Now()
	_, url := w.completed()
	ev := w.waitMirrored(60 * time.Second)
	took := time.Since(start)
	after := vmHWM(t, cmd.Process.Pid)
	o := ev.Objects()
	if len(o) != 1 || !o[0].OK() || o[0].Size != size || o[0].Digest != w.refDigest(url) {
		t.Fatalf("objects %+v", o)
	}
	growth := after - before
	t.Logf("200 MiB mirrored in %v (%.0f MiB/s); mirror VmHWM %d KiB before, %d KiB after: +%d KiB",
		took.Round(time.Millisecond), float64(size>>20)/took.Seconds(), before>>10, after>>10, growth>>10)
	if growth >= 64<<20 {
		t.Errorf("peak RSS grew by %d MiB while copying 200 MiB, want < 64 MiB", growth>>20)
	}
}

// vmHWM reads a process's peak resident set size, in bytes.
func vmHWM(t *testing.T, pid int) int64 {
	t.Helper()
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb << 10
		}
	}
	t.Fatal("no VmHWM")
	return 0
}
