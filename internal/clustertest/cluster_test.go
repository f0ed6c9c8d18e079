// Package clustertest runs the kreabus pipeline against a three-node
// JetStream cluster, with replicated streams and ledger, and loses a node.
package clustertest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kreabus/kreabus/internal/bridged"
	"github.com/kreabus/kreabus/internal/config"
	"github.com/kreabus/kreabus/internal/ledger"
	"github.com/kreabus/kreabus/internal/natstest"
	"github.com/kreabus/kreabus/internal/submitterd"
	"github.com/kreabus/kreabus/pkg/events"
	"github.com/kreabus/kreabus/pkg/krea"
	"github.com/kreabus/kreabus/pkg/krea/kreatest"
)

const (
	batch       = 20
	replicas    = 3
	settleWait  = 60 * time.Second
	pollEvery   = 50 * time.Millisecond
	modelPath   = "/generate/image/bfl/flux-1-dev"
	completedOn = "krea.jobs.completed"
)

// seen counts the terminal events the test's consumer received, by request.
type seen struct {
	mu        sync.Mutex
	completed map[string]int
	failed    map[string]int
}

func (s *seen) handle(_ context.Context, ev *events.Event) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch ev.Status {
	case krea.StatusCompleted:
		s.completed[ev.RequestID]++
	default:
		s.failed[ev.RequestID]++
	}
	return nil
}

// missing lists the ids without a completed event, and fails on any id
// that got a failed event.
func (s *seen) missing(ids []string) ([]string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for _, id := range ids {
		if n := s.failed[id]; n > 0 {
			return nil, fmt.Errorf("request %s got %d failed events", id, n)
		}
		if s.completed[id] == 0 {
			out = append(out, id)
		}
	}
	return out, nil
}

// TestPipelineOnCluster runs the simulator, the bridge and the submitter on
// a three-node JetStream cluster with R3 streams and ledger: 20 requests
// each end in exactly one completed event; then one node is killed and 20
// more requests still each end in exactly one completed event, with Krea
// called exactly once per request.
func TestPipelineOnCluster(t *testing.T) {
	logs := &natstest.Buffer{}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("program logs:\n%s", logs.String())
		}
	})
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelWarn}))

	start := time.Now()
	phase := func(what string) { t.Logf("%6.2fs %s", time.Since(start).Seconds(), what) }
	servers := natstest.RunCluster(t, replicas)
	phase("cluster up")
	url := natstest.ClusterURL(servers)

	sim := kreatest.NewServer(kreatest.Config{
		QueueTime: 20 * time.Millisecond,
		RunTime:   50 * time.Millisecond,
		RunJitter: 50 * time.Millisecond,
	})
	t.Cleanup(sim.Close)

	env := map[string]string{
		"NATS_URL":                url,
		"KREABUS_STREAM_REPLICAS": fmt.Sprint(replicas),
		"KREABUS_ADMIN_LISTEN":    "127.0.0.1:0",
		"KREABUS_LISTEN":          "127.0.0.1:0",
		"KREABUS_WEBHOOK_SECRET":  "clustertest-webhook-secret-0123456789abcdef",
		"KREA_API_URL":            sim.URL,
		"KREA_API_TOKEN":          sim.Token(),
		"KREABUS_LOG_LEVEL":       "error",
	}
	var bs bridged.Settings
	loadSettings(t, &bs, env)
	br, err := bridged.Start(bs, log.With("service", "bridge"))
	if err != nil {
		t.Fatalf("bridge: %v", err)
	}
	t.Cleanup(func() { shutdown(t, "bridge", br.Shutdown) })
	env["KREABUS_PUBLIC_URL"] = "http://" + br.Addr()
	var ss submitterd.Settings
	loadSettings(t, &ss, env)
	sub, err := submitterd.Start(ss, log.With("service", "submitter"))
	if err != nil {
		t.Fatalf("submitter: %v", err)
	}
	t.Cleanup(func() { shutdown(t, "submitter", sub.Shutdown) })

	nc, err := nats.Connect(url, nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		t.Fatalf("nats connect: %v", err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()

	// The programs create the streams and the ledger bucket; all R3.
	natstest.CheckFor(t, 30*time.Second, pollEvery, func() error {
		// A JetStream API request can go unanswered while the cluster
		// settles: bound each attempt, not only the whole wait.
		ctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		for _, name := range []string{events.StreamRequests, events.StreamJobs} {
			if err := checkReplicas(ctx, js, name); err != nil {
				return err
			}
		}
		kv, err := js.KeyValue(ctx, ledger.DefaultBucket)
		if err != nil {
			return fmt.Errorf("bucket %s: %w", ledger.DefaultBucket, err)
		}
		st, err := kv.Status(ctx)
		if err != nil {
			return err
		}
		bst, ok := st.(*jetstream.KeyValueBucketStatus)
		if !ok {
			return fmt.Errorf("bucket status is %T", st)
		}
		if got := bst.StreamInfo().Config.Replicas; got != replicas {
			return fmt.Errorf("bucket %s has %d replicas, want %d", ledger.DefaultBucket, got, replicas)
		}
		return nil
	})

	got := &seen{completed: map[string]int{}, failed: map[string]int{}}
	ccfg, err := events.JobsConsumerConfig("clustertest", events.WithStatuses(events.StatusCompleted, events.StatusFailed))
	if err != nil {
		t.Fatal(err)
	}
	jc, err := js.CreateOrUpdateConsumer(ctx, events.StreamJobs, ccfg)
	if err != nil {
		t.Fatalf("consumer: %v", err)
	}
	cons, err := events.ConsumeJobs(js.Conn(), jc, got.handle)
	if err != nil {
		t.Fatalf("consume jobs: %v", err)
	}
	t.Cleanup(func() {
		shutdown(t, "consumer", func(ctx context.Context) error {
			cons.Drain()
			select {
			case <-cons.Closed():
				return nil
			case <-ctx.Done():
				cons.Stop()
				return ctx.Err()
			}
		})
	})

	phase("streams R3")
	first := publish(t, js, "before", batch)
	phase("published first")
	waitCompleted(t, got, first)
	phase("first completed")
	checkExactlyOnce(t, js, first, batch)
	phase("first checked")

	// Lose a node (a hard shutdown, its store stays behind). The clients
	// connected to it reconnect to the others; any stream or consumer it
	// led elects a new leader among the remaining two.
	victim := servers[0]
	t.Logf("killing %s; meta leader: %v; it leads: %v", victim.Name(), victim.JetStreamIsLeader(), leads(ctx, js, victim.Name()))
	victim.Shutdown()
	victim.WaitForShutdown()

	phase("node killed")
	second := publish(t, js, "after", batch)
	phase("published second")
	waitCompleted(t, got, second)
	phase("second completed")
	checkExactlyOnce(t, js, append(first, second...), 2*batch)
	phase("second checked")

	if n := sim.Submissions(); n != 2*batch {
		t.Fatalf("Krea saw %d submissions, want %d", n, 2*batch)
	}
}

// leads lists the streams and consumers whose leader is the server named
// name, for the log: losing a leader is what makes the node loss bite.
func leads(ctx context.Context, js jetstream.JetStream, name string) []string {
	var out []string
	for _, stream := range []string{events.StreamRequests, events.StreamJobs, "KV_" + ledger.DefaultBucket} {
		s, err := js.Stream(ctx, stream)
		if err != nil {
			continue
		}
		if info, err := s.Info(ctx); err == nil && info.Cluster != nil && info.Cluster.Leader == name {
			out = append(out, stream)
		}
		cl := s.ListConsumers(ctx)
		for ci := range cl.Info() {
			if ci.Cluster != nil && ci.Cluster.Leader == name {
				out = append(out, stream+"/"+ci.Name)
			}
		}
	}
	return out
}

func loadSettings(t *testing.T, dst any, env map[string]string) {
	t.Helper()
	err := config.Load(dst, "kreabus", nil, func(k string) (string, bool) {
		v, ok := env[k]
		return v, ok
	})
	if err != nil {
		t.Fatalf("settings: %v", err)
	}
}

func shutdown(t *testing.T, name string, f func(context.Context) error) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := f(ctx); err != nil {
		t.Errorf("%s shutdown: %v", name, err)
	}
}

func checkReplicas(ctx context.Context, js jetstream.JetStream, name string) error {
	s, err := js.Stream(ctx, name)
	if err != nil {
		return fmt.Errorf("stream %s: %w", name, err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		return fmt.Errorf("stream %s: %w", name, err)
	}
	if info.Config.Replicas != replicas {
		return fmt.Errorf("stream %s has %d replicas, want %d", name, info.Config.Replicas, replicas)
	}
	return nil
}

// publish publishes n requests, retrying each (safely: Nats-Msg-Id is the
// request id) while the cluster elects leaders.
func publish(t *testing.T, js jetstream.JetStream, prefix string, n int) []string {
	t.Helper()
	ids := make([]string, 0, n)
	for i := 0; i < n; i++ {
		req, err := events.NewRequest(modelPath, map[string]any{"prompt": fmt.Sprintf("%s %d", prefix, i)})
		if err != nil {
			t.Fatal(err)
		}
		req.RequestID = fmt.Sprintf("%s-%02d-%s", prefix, i, req.RequestID[:8])
		natstest.CheckFor(t, settleWait, pollEvery, func() error {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			_, err := events.PublishRequest(ctx, js, req)
			return err
		})
		ids = append(ids, req.RequestID)
	}
	return ids
}

func waitCompleted(t *testing.T, got *seen, ids []string) {
	t.Helper()
	natstest.CheckFor(t, settleWait, pollEvery, func() error {
		missing, err := got.missing(ids)
		if err != nil {
			return err
		}
		if len(missing) > 0 {
			return fmt.Errorf("%d of %d requests without a completed event: %v", len(missing), len(ids), missing)
		}
		return nil
	})
}

// checkExactlyOnce reads every completed event in KREA_JOBS and checks that
// there are want of them: one per request of ids, one per job.
func checkExactlyOnce(t *testing.T, js jetstream.JetStream, ids []string, want int) {
	t.Helper()
	var byRequest, byJob map[string]int
	natstest.CheckFor(t, 30*time.Second, pollEvery, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		s, err := js.Stream(ctx, events.StreamJobs)
		if err != nil {
			return err
		}
		info, err := s.Info(ctx, jetstream.WithSubjectFilter(completedOn))
		if err != nil {
			return err
		}
		if n := info.State.Subjects[completedOn]; n != uint64(want) {
			return fmt.Errorf("%s has %d events, want %d", completedOn, n, want)
		}
		c, err := s.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{FilterSubjects: []string{completedOn}})
		if err != nil {
			return err
		}
		byRequest, byJob = map[string]int{}, map[string]int{}
		for read := 0; read < want; {
			batch, err := c.Fetch(want-read, jetstream.FetchMaxWait(5*time.Second))
			if err != nil {
				return err
			}
			before := read
			for m := range batch.Messages() {
				byRequest[m.Headers().Get(events.HeaderRequestID)]++
				byJob[m.Headers().Get(events.HeaderJobID)]++
				read++
			}
			if err := batch.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) {
				return err
			}
			if read == before {
				return fmt.Errorf("read %d of %d completed events", read, want)
			}
		}
		return nil
	})
	var bad []string
	for _, id := range ids {
		if byRequest[id] != 1 {
			bad = append(bad, fmt.Sprintf("request %s: %d completed events", id, byRequest[id]))
		}
	}
	if len(byRequest) != len(ids) {
		bad = append(bad, fmt.Sprintf("%d requests have completed events, want %d", len(byRequest), len(ids)))
	}
	for job, n := range byJob {
		if job == "" || n != 1 {
			bad = append(bad, fmt.Sprintf("job %q: %d completed events", job, n))
		}
	}
	if len(byJob) != want {
		bad = append(bad, fmt.Sprintf("%d jobs have completed events, want %d", len(byJob), want))
	}
	if len(bad) > 0 {
		sort.Strings(bad)
		t.Fatalf("not exactly once:\n%v", bad)
	}
}
