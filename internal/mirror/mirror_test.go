package mirror

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/kreabus/kreabus/internal/natstest"
	"github.com/kreabus/kreabus/pkg/events"
	"github.com/kreabus/kreabus/pkg/krea/kreatest"
)

const (
	imagePath = "/generate/image/bfl/flux-1-dev"
	videoPath = "/generate/video/kling/kling-2.1"
)

// TestMirrorBytesEqual mirrors an image and a video, checks the event
// (headers, body) and that the bytes read back over NATS are the bytes the
// CDN served; then has both events delivered again and checks nothing is
// downloaded or announced twice.
func TestMirrorBytesEqual(t *testing.T) {
	const size = 3<<20 + 123
	e := newEnv(t, kreatest.Config{ResultSize: size})
	s := e.settings(nil)
	p := e.start(s)
	img, imgBody := e.job(imagePath)
	vid, vidBody := e.job(videoPath)
	e.publishCompleted(img, imgBody)
	e.publishCompleted(vid, vidBody)
	got := e.waitMirrored(20*time.Second, img, vid)

	for id, want := range map[string]struct{ ext, ct string }{img: {".png", "image/png"}, vid: {".mp4", "video/mp4"}} {
		ev := got[id]
		h := ev.Header
		if ev.Status != events.StatusMirrored || h.Get("Nats-Msg-Id") != id+":mirrored" || h.Get("Krea-Job-Id") != id ||
			h.Get("Krea-Status") != "mirrored" || h.Get("Kreabus-Source") != "mirror" || h.Get("Kreabus-Request-Id") != "req-"+id[:8] ||
			h.Get("Kreabus-Metadata") != `{"user":"42"}` || h.Get("ce-type") != "ai.krea.job.mirrored" || h.Get("ce-id") != id+":mirrored" {
			t.Errorf("job %s: headers %v", id, h)
		}
		objs := ev.Objects()
		if len(objs) != 1 {
			t.Fatalf("job %s: objects %+v", id, objs)
		}
		o := objs[0]
		if !o.OK() || o.Bucket != "KREA_RESULTS" || o.Name != id+"/0"+want.ext || o.Size != size || o.ContentType != want.ct ||
			!strings.HasPrefix(o.Digest, "SHA-256=") || !strings.HasPrefix(o.URL, e.sim.URL) {
			t.Errorf("job %s: object %+v", id, o)
		}
		// The bytes, read as a consumer would.
		r, err := events.OpenResult(testCtx(t), e.js, o)
		if err != nil {
			t.Fatal(err)
		}
		gotSum, n := sha256Of(t, r)
		r.Close()
		var ref bytes.Buffer
		if _, ok, err := e.sim.ResultFile(o.URL, &ref); !ok || err != nil {
			t.Fatal(ok, err)
		}
		if n != size || gotSum != sha256Sum(ref.Bytes()) {
			t.Errorf("job %s: %d bytes read back, differing from the CDN's", id, n)
		}
		// The object's own metadata.
		obs, _ := e.js.ObjectStore(testCtx(t), "KREA_RESULTS")
		info, err := obs.GetInfo(testCtx(t), o.Name)
		if err != nil {
			t.Fatal(err)
		}
		if info.Digest != o.Digest || info.Size != size || info.Headers.Get("Content-Type") != want.ct ||
			info.Headers.Get("Kreabus-Source-Url") != o.URL || info.Headers.Get("Krea-Job-Id") != id {
			t.Errorf("job %s: object info %+v", id, info)
		}
		if n := e.sim.ResultDownloads(o.URL); n != 1 {
			t.Errorf("job %s: downloaded %d times", id, n)
		}
	}

	// Deliver both completed events again: a new consumer replays them.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := p.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if err := e.js.DeleteConsumer(testCtx(t), events.StreamJobs, s.Consumer); err != nil {
		t.Fatal(err)
	}
	p2 := e.start(s)
	natstest.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		if n := count(p2.m.objects.WithLabelValues("existing")); n < 2 {
			return fmt.Errorf("%v objects found existing", n)
		}
		return nil
	})
	for id, ev := range e.waitMirrored(5*time.Second, img, vid) {
		if n := e.sim.ResultDownloads(ev.Objects()[0].URL); n != 1 {
			t.Errorf("job %s: downloaded %d times after redelivery", id, n)
		}
	}
	if n := count(p2.m.objects.WithLabelValues("stored")); n != 0 {
		t.Errorf("%v results stored again after redelivery", n)
	}
}

// TestMirrorReportsFailures: a host not allowed, a 404 from the CDN, a
// result over the size limit and a stalled download each end in an error
// entry of the job's mirrored event (the consumer waiting for bytes learns
// it), with no object stored; the 404 is not retried, the stall is.
func TestMirrorReportsFailures(t *testing.T) {
	e := newEnv(t, kreatest.Config{})
	s := e.settings(map[string]string{
		"KREABUS_RESULTS_MAX_BYTES":    "4096",
		"KREABUS_RESULTS_IDLE_TIMEOUT": "300ms",
		"KREABUS_RESULTS_ATTEMPTS":     "2",
	})
	e.start(s)
	obs, _ := e.js.ObjectStore(testCtx(t), "KREA_RESULTS")

	// A job with two URLs: one fine, one from a host not on the list.
	okID, okBody := e.job(imagePath)
	var okURL string
	if ev, err := events.DecodeEvent("krea.jobs.completed", nil, okBody); err == nil {
		okURL = ev.Job.Result.URLs[0]
	}
	other := strings.Replace(okURL, "127.0.0.1", "localhost", 1)
	mixed := uuid.NewString()
	e.publishCompleted(mixed, completedBody(mixed, okURL, other))
	ev := e.waitMirrored(10*time.Second, mixed)[mixed]
	objs := ev.Objects()
	if len(objs) != 2 || !objs[0].OK() || objs[0].Name != mixed+"/0.png" || objs[1].OK() ||
		!strings.Contains(objs[1].Error, `host "localhost" is not in KREABUS_RESULTS_ALLOW_HOSTS`) || objs[1].URL != other {
		t.Fatalf("objects %+v", objs)
	}
	if _, err := events.OpenResult(testCtx(t), e.js, objs[1]); !errors.Is(err, events.ErrResultUnavailable) {
		t.Errorf("OpenResult of a failed result: %v", err)
	}
	if _, err := obs.GetInfo(testCtx(t), mixed+"/1"); !errors.Is(err, jetstream.ErrObjectNotFound) {
		t.Errorf("object of a refused URL: %v", err)
	}
	if n := e.sim.ResultDownloads(okURL); n != 1 {
		t.Errorf("allowed URL downloaded %d times", n)
	}
	_ = okID

	check := func(name string, faults kreatest.Faults, wantErr string, wantGets int) {
		t.Helper()
		e.sim.SetFaults(faults)
		id, body := e.job(imagePath)
		start := time.Now()
		e.publishCompleted(id, body)
		ev := e.waitMirrored(10*time.Second, id)[id]
		o := ev.Objects()
		if len(o) != 1 || o[0].OK() || !strings.Contains(o[0].Error, wantErr) || o[0].Size != 0 {
			t.Errorf("%s: objects %+v, want error %q", name, o, wantErr)
			return
		}
		if _, err := obs.GetInfo(testCtx(t), id+"/0.png"); !errors.Is(err, jetstream.ErrObjectNotFound) {
			t.Errorf("%s: an object was stored: %v", name, err)
		}
		if n := e.sim.ResultDownloads(o[0].URL); n != wantGets {
			t.Errorf("%s: %d downloads, want %d", name, n, wantGets)
		}
		t.Logf("%s: reported after %v: %s", name, time.Since(start).Round(time.Millisecond), o[0].Error)
	}
	check("404", kreatest.Faults{ResultNotFound: true}, "Not Found (404)", 1)
	check("stalled", kreatest.Faults{ResultStallAfter: 100}, "no data within KREABUS_RESULTS_IDLE_TIMEOUT", 2)
	check("slow to answer", kreatest.Faults{ResultLatency: 3 * time.Second}, "no data within KREABUS_RESULTS_IDLE_TIMEOUT", 2)
	e.sim.SetFaults(kreatest.Faults{})

	// Over the size limit: announced (Content-Length) or not (chunked).
	big := kreatest.NewServer(kreatest.Config{QueueTime: -1, RunTime: -1, ResultSize: 8192})
	defer big.Close()
	e.sim = big
	check("too large", kreatest.Faults{}, "larger than KREABUS_RESULTS_MAX_BYTES", 1)

	var chunkedGets atomic.Int32
	chunked := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		chunkedGets.Add(1)
		w.Header().Set("Content-Type", "image/png")
		for range 4 {
			_, _ = w.Write(make([]byte, 2000))
			w.(http.Flusher).Flush()
		}
	}))
	defer chunked.Close()
	id := uuid.NewString()
	e.publishCompleted(id, completedBody(id, chunked.URL+"/x.png"))
	o := e.waitMirrored(10*time.Second, id)[id].Objects()
	if len(o) != 1 || !strings.Contains(o[0].Error, "larger than KREABUS_RESULTS_MAX_BYTES") || chunkedGets.Load() != 1 {
		t.Errorf("chunked over the limit: %+v after %d requests", o, chunkedGets.Load())
	}
}

// TestMirrorRetries5xx: a CDN answering 503 twice, then the file, gets
// three requests and the result is stored.
func TestMirrorRetries5xx(t *testing.T) {
	e := newEnv(t, kreatest.Config{})
	e.start(e.settings(map[string]string{"KREABUS_RESULTS_ATTEMPTS": "3"}))
	var gets atomic.Int32
	cdn := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if gets.Add(1) <= 2 {
			http.Error(w, "busy", http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "image/webp")
		_, _ = w.Write([]byte("RIFF....WEBP"))
	}))
	defer cdn.Close()
	id := uuid.NewString()
	e.publishCompleted(id, completedBody(id, cdn.URL+"/a/b/result.WEBP?sig=secret"))
	o := e.waitMirrored(10*time.Second, id)[id].Objects()
	if len(o) != 1 || !o[0].OK() || o[0].Size != 12 || o[0].ContentType != "image/webp" || o[0].Name != id+"/0.webp" || gets.Load() != 3 {
		t.Errorf("objects %+v after %d requests", o, gets.Load())
	}
}

// TestTwoReplicas: two mirrors sharing the durable consumer and 100
// completed jobs: every job is mirrored once (one download per URL, one
// mirrored event per job).
func TestTwoReplicas(t *testing.T) {
	e := newEnv(t, kreatest.Config{})
	s := e.settings(map[string]string{"KREABUS_MIRROR_CONCURRENCY": "3"})
	a, b := e.start(s), e.start(s)
	const jobs = 100
	ids := make([]string, jobs)
	for i := range ids {
		var body []byte
		ids[i], body = e.job(imagePath)
		e.publishCompleted(ids[i], body)
	}
	got := e.waitMirrored(30*time.Second, ids...)
	if len(got) != jobs {
		t.Fatalf("%d jobs mirrored, want %d", len(got), jobs)
	}
	for _, id := range ids {
		o := got[id].Objects()
		if len(o) != 1 || !o[0].OK() {
			t.Fatalf("job %s: %+v", id, o)
		}
		if n := e.sim.ResultDownloads(o[0].URL); n != 1 {
			t.Errorf("job %s downloaded %d times", id, n)
		}
	}
	// A handler counts its job once the event is published: the last
	// count may come a moment after the last event.
	var na, nb float64
	natstest.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		na, nb = count(a.m.jobs.WithLabelValues("mirrored")), count(b.m.jobs.WithLabelValues("mirrored"))
		if na+nb != jobs {
			return fmt.Errorf("replicas mirrored %v + %v jobs, want %d in all", na, nb, jobs)
		}
		return nil
	})
	if n := count(a.m.jobs.WithLabelValues("duplicate")) + count(b.m.jobs.WithLabelValues("duplicate")); n != 0 {
		t.Errorf("%v mirrored events published twice", n)
	}
	t.Logf("replica a mirrored %v jobs, b %v", na, nb)
}

func sha256Sum(b []byte) [32]byte { return sha256.Sum256(b) }

// count reads a counter.
func count(c prometheus.Counter) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		return -1
	}
	return m.GetCounter().GetValue()
}
