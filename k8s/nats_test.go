package k8s_test

// Tests of the NATS side of the deployment: config/nats-server.conf parses
// with the nats-server that go.mod pins, a server started from it lets each
// kreabus user do its job and nothing else, and the Helm values
// (k8s/nats/values.yaml) carry the same users and permissions.

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"
	"github.com/nats-io/nkeys"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"sigs.k8s.io/yaml"

	"github.com/kreabus/kreabus/internal/ledger"
	submittercfg "github.com/kreabus/kreabus/internal/submitter"
	"github.com/kreabus/kreabus/pkg/events"
)

const natsConfFile = "../config/nats-server.conf"

// The environment variables holding the users' public NKeys, as documented in
// config/nats-server.conf and k8s/README.md.
var natsUserEnv = []string{"NATS_SYS_NKEY", "KREABUS_BRIDGE_NKEY", "KREABUS_SUBMITTER_NKEY", "KREABUS_MIRROR_NKEY", "KREABUS_APP_NKEY"}

// natsUsers makes a fresh NKey pair per user and exports the public keys.
// Not parallel-safe (t.Setenv), like the server's own variable lookup.
func natsUsers(t *testing.T) map[string]nkeys.KeyPair {
	t.Helper()
	users := map[string]nkeys.KeyPair{}
	for _, env := range natsUserEnv {
		kp, err := nkeys.CreateUser()
		if err != nil {
			t.Fatal(err)
		}
		pub, err := kp.PublicKey()
		if err != nil {
			t.Fatal(err)
		}
		t.Setenv(env, pub)
		users[env] = kp
	}
	return users
}

func TestNATSConfigParses(t *testing.T) {
	users := natsUsers(t)
	opts, err := server.ProcessConfigFile(natsConfFile)
	if err != nil {
		t.Fatalf("%s: %v", natsConfFile, err)
	}
	if !opts.JetStream || opts.StoreDir == "" {
		t.Errorf("JetStream must be enabled with a store_dir")
	}
	if opts.JetStreamMaxStore <= 0 || opts.JetStreamMaxMemory <= 0 {
		t.Errorf("max_file_store and max_memory_store must be set")
	}
	// The bridge publishes webhook bodies of up to 1 MiB plus headers.
	if opts.MaxPayload <= 1<<20 {
		t.Errorf("max_payload %d leaves no room for a 1 MiB webhook plus headers", opts.MaxPayload)
	}
	if opts.MaxConn <= 0 || opts.MaxPending <= 0 || opts.WriteDeadline <= 0 {
		t.Errorf("max_connections, max_pending and write_deadline must be set")
	}
	if opts.SystemAccount != "SYS" {
		t.Errorf("system_account = %q, want SYS", opts.SystemAccount)
	}
	if opts.NoAuthUser != "" || len(opts.Users) > 0 || opts.Username != "" || opts.Authorization != "" {
		t.Errorf("only NKey users may connect (no anonymous, password or token users)")
	}
	if len(opts.Nkeys) != len(natsUserEnv) {
		t.Fatalf("got %d NKey users, want %d", len(opts.Nkeys), len(natsUserEnv))
	}
	for _, u := range opts.Nkeys {
		acc := u.Account.GetName()
		if acc == "SYS" {
			continue
		}
		if acc != "KREABUS" {
			t.Errorf("user %s is in account %s", u.Nkey, acc)
		}
		if u.Permissions == nil || u.Permissions.Publish == nil || len(u.Permissions.Publish.Allow) == 0 {
			t.Errorf("user %s has no publish allow-list", u.Nkey)
			continue
		}
		for _, s := range append(slices.Clone(u.Permissions.Publish.Allow), u.Permissions.Subscribe.Allow...) {
			if s == ">" || s == "$JS.API.>" || s == "$JS.>" {
				t.Errorf("user %s may use %q: far too broad", u.Nkey, s)
			}
		}
	}
	pub, _ := users["KREABUS_BRIDGE_NKEY"].PublicKey()
	if !slices.ContainsFunc(opts.Nkeys, func(u *server.NkeyUser) bool { return u.Nkey == pub }) {
		t.Errorf("the bridge's key from $KREABUS_BRIDGE_NKEY is not a user")
	}

	t.Run("missing key refuses to start", func(t *testing.T) {
		os.Unsetenv("KREABUS_SUBMITTER_NKEY") // restored by t.Setenv's cleanup
		if _, err := server.ProcessConfigFile(natsConfFile); err == nil {
			t.Fatal("config parsed without KREABUS_SUBMITTER_NKEY")
		}
	})
}

// startNATS runs a server from config/nats-server.conf on a random local
// port with a temporary store.
func startNATS(t *testing.T) (*server.Server, map[string]nkeys.KeyPair) {
	t.Helper()
	users := natsUsers(t)
	opts, err := server.ProcessConfigFile(natsConfFile)
	if err != nil {
		t.Fatal(err)
	}
	opts.Host, opts.Port = "127.0.0.1", -1
	opts.HTTPHost, opts.HTTPPort = "", 0
	opts.StoreDir = t.TempDir()
	opts.NoLog, opts.NoSigs = true, true
	s, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("NATS server not ready")
	}
	t.Cleanup(func() {
		s.Shutdown()
		s.WaitForShutdown()
	})
	return s, users
}

type natsClient struct {
	nc    *nats.Conn
	js    jetstream.JetStream
	async chan error
}

func connectAs(t *testing.T, s *server.Server, kp nkeys.KeyPair, name string) *natsClient {
	t.Helper()
	pub, err := kp.PublicKey()
	if err != nil {
		t.Fatal(err)
	}
	c := &natsClient{async: make(chan error, 16)}
	c.nc, err = nats.Connect(s.ClientURL(), nats.Name(name), nats.Nkey(pub, kp.Sign),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			select {
			case c.async <- err:
			default:
			}
		}))
	if err != nil {
		t.Fatalf("connect as %s: %v", name, err)
	}
	t.Cleanup(c.nc.Close)
	c.js, err = jetstream.New(c.nc)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// denied runs op with a short deadline and requires it to fail: a NATS
// permission violation either errors at once or leaves the request
// unanswered.
func denied(t *testing.T, what string, op func(ctx context.Context) error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	if err := op(ctx); err == nil {
		t.Errorf("%s: allowed, want a permissions violation", what)
	}
}

// TestNATSConfigPermissions walks through kreabus's real traffic on a server
// running config/nats-server.conf, with the JetStream calls the programs
// make (stream and consumer names from their packages): each user can do its
// part of the flow, and the obvious abuses are refused.
func TestNATSConfigPermissions(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a NATS server")
	}
	s, users := startNATS(t)
	submitter := connectAs(t, s, users["KREABUS_SUBMITTER_NKEY"], "submitter")
	bridge := connectAs(t, s, users["KREABUS_BRIDGE_NKEY"], "bridge")
	app := connectAs(t, s, users["KREABUS_APP_NKEY"], "app")
	connectAs(t, s, users["NATS_SYS_NKEY"], "sys")

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	must := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	fetchAck := func(who string, cons jetstream.Consumer, want int) {
		t.Helper()
		batch, err := cons.Fetch(want, jetstream.FetchMaxWait(5*time.Second))
		must(who+" fetches", err)
		got := 0
		for msg := range batch.Messages() {
			got++
			must(who+" acks", msg.DoubleAck(ctx))
		}
		must(who+" batch", batch.Error())
		if got != want {
			t.Fatalf("%s fetched %d messages, want %d", who, got, want)
		}
	}

	// Submitter start-up: streams, the ledger bucket, its two durables.
	_, err := events.EnsureStream(ctx, submitter.js, events.RequestsStreamConfig(events.StreamOptions{}))
	must("submitter creates KREA_REQUESTS", err)
	_, err = events.EnsureStream(ctx, submitter.js, events.JobsStreamConfig(events.StreamOptions{}))
	must("submitter creates KREA_JOBS", err)
	_, err = submitter.js.AccountInfo(ctx)
	must("submitter account info", err)
	_, err = submitter.js.KeyValue(ctx, ledger.DefaultBucket)
	if !errors.Is(err, jetstream.ErrBucketNotFound) {
		t.Fatalf("submitter looks up the ledger: %v", err)
	}
	kv, err := submitter.js.CreateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket: ledger.DefaultBucket, History: 1, TTL: time.Hour,
		LimitMarkerTTL: time.Minute, Storage: jetstream.FileStorage,
	})
	must("submitter creates the ledger", err)
	watch, err := kv.WatchAll(ctx)
	must("submitter watches the ledger", err)
	defer watch.Stop()
	reqCons, err := submitter.js.CreateConsumer(ctx, events.StreamRequests, jetstream.ConsumerConfig{
		Durable: submittercfg.DefaultConsumer, AckPolicy: jetstream.AckExplicitPolicy, MaxDeliver: -1,
	})
	must("submitter creates its requests consumer", err)
	_, err = submitter.js.UpdateConsumer(ctx, events.StreamRequests, jetstream.ConsumerConfig{
		Durable: submittercfg.DefaultConsumer, AckPolicy: jetstream.AckExplicitPolicy, MaxDeliver: -1, AckWait: time.Minute,
	})
	must("submitter updates its requests consumer", err)
	_, err = submitter.js.Consumer(ctx, events.StreamRequests, submittercfg.DefaultConsumer)
	must("submitter binds its requests consumer", err)
	recCons, err := submitter.js.CreateConsumer(ctx, events.StreamJobs, jetstream.ConsumerConfig{
		Durable: ledger.ConsumerName, AckPolicy: jetstream.AckExplicitPolicy, FilterSubject: events.JobsSubjects,
	})
	must("submitter creates the ledger recorder's consumer", err)

	// Bridge start-up: KREA_JOBS, and read access to ledger keys.
	_, err = events.EnsureStream(ctx, bridge.js, events.JobsStreamConfig(events.StreamOptions{}))
	must("bridge checks KREA_JOBS", err)
	bkv, err := bridge.js.KeyValue(ctx, ledger.DefaultBucket)
	must("bridge opens the ledger", err)
	jobFeed, err := bridge.nc.SubscribeSync(ledger.JobChangesSubject(ledger.DefaultBucket))
	must("bridge hears job records", err)
	defer jobFeed.Unsubscribe()

	// App: follows the stored job events, without a consumer.
	follow, err := app.nc.SubscribeSync(events.FollowSubjects)
	must("app subscribes to the follow subjects", err)
	defer follow.Unsubscribe()
	must("app flushes", app.nc.Flush())

	// App: publishes a generation request.
	ack, err := app.js.Publish(ctx, events.RequestsPrefix+"image", []byte(`{"request_id":"req-1"}`), jetstream.WithMsgID("req-1"))
	must("app publishes a request", err)
	if ack.Stream != events.StreamRequests {
		t.Errorf("request stored in %s", ack.Stream)
	}

	// Submitter: takes it, records it, publishes krea.jobs.submitted.
	fetchAck("submitter", reqCons, 1)
	reqStream, err := submitter.js.Stream(ctx, events.StreamRequests)
	must("submitter stream info", err)
	if info, err := reqStream.Info(ctx); err != nil || info.State.Msgs != 0 {
		t.Errorf("work queue after ack: %v, err %v", info, err)
	}
	rev, err := kv.Create(ctx, "req.req-1", []byte(`{}`))
	must("submitter records the request", err)
	_, err = kv.Update(ctx, "req.req-1", []byte(`{"job_id":"j"}`), rev)
	must("submitter updates the record", err)
	_, err = kv.Get(ctx, "req.req-1")
	must("submitter reads the ledger", err)
	_, err = submitter.js.Publish(ctx, events.JobsPrefix+"submitted", []byte(`{}`), jetstream.WithMsgID("job-1:submitted"))
	must("submitter publishes krea.jobs.submitted", err)

	// Bridge: reads the ledger, publishes the webhook once.
	_, err = bkv.Get(ctx, "req.req-1")
	must("bridge reads the ledger", err)
	ack, err = bridge.js.Publish(ctx, events.JobsPrefix+"completed", []byte(`{}`), jetstream.WithMsgID("job-1"))
	must("bridge publishes a webhook", err)
	if ack.Duplicate {
		t.Error("first webhook reported as duplicate")
	}
	ack, err = bridge.js.Publish(ctx, events.JobsPrefix+"completed", []byte(`{}`), jetstream.WithMsgID("job-1"))
	must("bridge publishes a repeated webhook", err)
	if !ack.Duplicate {
		t.Error("repeated webhook not reported as duplicate")
	}
	done := make(chan struct{})
	pa, err := bridge.js.PublishAsync(events.JobsPrefix+"failed", []byte(`{}`), jetstream.WithMsgID("job-2"))
	must("bridge publishes asynchronously", err)
	go func() {
		defer close(done)
		select {
		case <-pa.Ok():
		case err := <-pa.Err():
			t.Errorf("bridge async publish: %v", err)
		case <-ctx.Done():
			t.Error("bridge async publish: no ack")
		}
	}()
	<-done

	// App: hears each stored event once on the follow subjects, in order:
	// the repeated webhook was not stored, so not republished (it would
	// come before failed).
	for _, want := range []string{"submitted", "completed", "failed"} {
		m, err := follow.NextMsg(5 * time.Second)
		must("app hears "+want, err)
		if m.Subject != events.FollowPrefix+want {
			t.Errorf("app heard %s, want %s", m.Subject, events.FollowPrefix+want)
		}
	}

	// Submitter: the ledger recorder sees all three events.
	fetchAck("ledger recorder", recCons, 3)

	// Submitter: pauses and resumes its requests consumer (account errors),
	// reads a queued request and a stored event by sequence, deletes a
	// cancelled request from the queue.
	_, err = submitter.js.PauseConsumer(ctx, events.StreamRequests, submittercfg.DefaultConsumer, time.Now().Add(time.Minute))
	must("submitter pauses its requests consumer", err)
	_, err = submitter.js.ResumeConsumer(ctx, events.StreamRequests, submittercfg.DefaultConsumer)
	must("submitter resumes its requests consumer", err)
	ack, err = app.js.Publish(ctx, events.RequestsPrefix+"image", []byte(`{"request_id":"req-2"}`), jetstream.WithMsgID("req-2"))
	must("app publishes a request to cancel", err)
	_, err = reqStream.GetMsg(ctx, ack.Sequence)
	must("submitter reads a queued request", err)
	must("submitter deletes a cancelled request", reqStream.DeleteMsg(ctx, ack.Sequence))
	jobsStream, err := submitter.js.Stream(ctx, events.StreamJobs)
	must("submitter KREA_JOBS info", err)
	_, err = jobsStream.GetMsg(ctx, 1)
	must("submitter reads a stored event", err)

	// Submitter runs the kreabus service; the app calls it and discovers it.
	svc, err := micro.AddService(submitter.nc, micro.Config{Name: events.ServiceName, Version: "0.0.1"})
	must("submitter adds the service", err)
	defer svc.Stop()
	must("submitter adds an endpoint", svc.AddEndpoint("status", micro.HandlerFunc(func(r micro.Request) {
		_ = r.Respond([]byte(`{}`))
	}), micro.WithEndpointSubject(events.SubjectRequestStatus)))
	must("submitter flush", submitter.nc.Flush())
	_, err = app.nc.Request(events.SubjectRequestStatus, []byte(`{"request_id":"req-1"}`), 5*time.Second)
	must("app calls the service", err)
	ping, _ := micro.ControlSubject(micro.PingVerb, events.ServiceName, "")
	_, err = app.nc.Request(ping, nil, 5*time.Second)
	must("app pings the service", err)

	// App: reads the job events with its own consumer (events.ConsumeJobs).
	got := make(chan struct{}, 8)
	ccfg, err := events.JobsConsumerConfig("app")
	must("app consumer config", err)
	appCons, err := app.js.CreateOrUpdateConsumer(ctx, events.StreamJobs, ccfg)
	must("app creates its consumer", err)
	jc, err := events.ConsumeJobs(app.js.Conn(), appCons, func(context.Context, *events.Event) error {
		got <- struct{}{}
		return nil
	})
	must("app consumes job events", err)
	for i := 0; i < 3; i++ {
		select {
		case <-got:
		case <-ctx.Done():
			t.Fatalf("app got %d of 3 job events", i)
		}
	}
	jc.Stop()
	must("app deletes its consumer", app.js.DeleteConsumer(ctx, events.StreamJobs, "app"))

	// And what each user must not do.
	denied(t, "bridge publishes a request", func(ctx context.Context) error {
		_, err := bridge.js.Publish(ctx, events.RequestsPrefix+"image", []byte(`{}`))
		return err
	})
	denied(t, "bridge watches the ledger", func(ctx context.Context) error {
		w, err := bkv.WatchAll(ctx)
		if err != nil {
			return err
		}
		defer w.Stop()
		select {
		case <-w.Updates():
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	})
	denied(t, "bridge writes the ledger", func(ctx context.Context) error {
		_, err := bkv.Put(ctx, "req.req-2", []byte(`{}`))
		return err
	})
	denied(t, "bridge consumes requests", func(ctx context.Context) error {
		_, err := bridge.js.CreateConsumer(ctx, events.StreamRequests, jetstream.ConsumerConfig{Durable: "evil"})
		return err
	})
	denied(t, "bridge deletes KREA_JOBS", func(ctx context.Context) error {
		return bridge.js.DeleteStream(ctx, events.StreamJobs)
	})
	denied(t, "bridge purges KREA_JOBS", func(ctx context.Context) error {
		st, err := bridge.js.Stream(ctx, events.StreamJobs)
		if err != nil {
			return err
		}
		return st.Purge(ctx)
	})
	denied(t, "submitter deletes KREA_REQUESTS", func(ctx context.Context) error {
		return submitter.js.DeleteStream(ctx, events.StreamRequests)
	})
	denied(t, "submitter reconfigures KREA_JOBS", func(ctx context.Context) error {
		_, err := submitter.js.UpdateStream(ctx, events.JobsStreamConfig(events.StreamOptions{JobsMaxAge: time.Hour}))
		return err
	})
	denied(t, "submitter creates another consumer", func(ctx context.Context) error {
		_, err := submitter.js.CreateConsumer(ctx, events.StreamRequests, jetstream.ConsumerConfig{Durable: "evil"})
		return err
	})
	denied(t, "submitter publishes a request", func(ctx context.Context) error {
		_, err := submitter.js.Publish(ctx, events.RequestsPrefix+"image", []byte(`{}`))
		return err
	})
	denied(t, "app publishes a job event", func(ctx context.Context) error {
		_, err := app.js.Publish(ctx, events.JobsPrefix+"completed", []byte(`{}`))
		return err
	})
	denied(t, "app consumes requests", func(ctx context.Context) error {
		_, err := app.js.CreateConsumer(ctx, events.StreamRequests, jetstream.ConsumerConfig{Durable: "evil"})
		return err
	})
	denied(t, "app pulls from the ledger recorder's consumer", func(ctx context.Context) error {
		c, err := app.js.Consumer(ctx, events.StreamJobs, ledger.ConsumerName)
		if err != nil {
			return err
		}
		_, err = c.Fetch(1, jetstream.FetchMaxWait(300*time.Millisecond))
		return err
	})
	denied(t, "app opens the ledger", func(ctx context.Context) error {
		_, err := app.js.KeyValue(ctx, ledger.DefaultBucket)
		return err
	})
	denied(t, "app creates a stream", func(ctx context.Context) error {
		_, err := app.js.CreateStream(ctx, jetstream.StreamConfig{Name: "OTHER", Subjects: []string{"other.>"}})
		return err
	})

	// Core subscriptions outside the inboxes are refused too.
	if _, err := bridge.nc.SubscribeSync("krea.requests.>"); err != nil {
		t.Fatal(err)
	}
	bridge.nc.Flush()
	deadline := time.After(2 * time.Second)
	for violation := false; !violation; {
		select {
		case err := <-bridge.async:
			violation = errors.Is(err, nats.ErrPermissionViolation) && strings.Contains(err.Error(), "krea.requests.>")
		case <-deadline:
			t.Fatal("bridge may subscribe to krea.requests.>")
		}
	}

	// Nobody gets in without a key.
	if nc, err := nats.Connect(s.ClientURL()); err == nil {
		nc.Close()
		t.Error("anonymous connection accepted")
	}
}

// ---------------------------------------------------------------------------
// Helm values
// ---------------------------------------------------------------------------

func loadHelmValues(t *testing.T) map[string]any {
	t.Helper()
	data, err := os.ReadFile(helmValuesFile)
	if err != nil {
		t.Fatal(err)
	}
	var v map[string]any
	if err := yaml.UnmarshalStrict(data, &v); err != nil {
		t.Fatalf("%s: %v", helmValuesFile, err)
	}
	return v
}

// lookup walks nested maps: lookup(v, "config", "cluster", "replicas").
func lookup(v any, path ...string) any {
	for _, p := range path {
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = m[p]
	}
	return v
}

func baseConfigMap(t *testing.T) *corev1.ConfigMap {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(baseDir, "configmap.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var cm corev1.ConfigMap
	if err := decodeStrict(data, &cm); err != nil {
		t.Fatal(err)
	}
	return &cm
}

func TestHelmValues(t *testing.T) {
	v := loadHelmValues(t)
	cm := baseConfigMap(t)

	// NATS_URL in the kreabus ConfigMap names the chart's Service.
	u, err := url.Parse(cm.Data["NATS_URL"])
	if err != nil {
		t.Fatal(err)
	}
	if name := lookup(v, "fullnameOverride"); u.Hostname() != name || u.Port() != "4222" {
		t.Errorf("NATS_URL %s does not reach the chart's Service %v:4222", cm.Data["NATS_URL"], name)
	}

	// 3-node cluster; kreabus streams get one replica per node.
	if lookup(v, "config", "cluster", "enabled") != true {
		t.Error("config.cluster.enabled must be true")
	}
	replicas, _ := lookup(v, "config", "cluster", "replicas").(float64)
	if replicas != 3 {
		t.Errorf("config.cluster.replicas = %v, want 3", replicas)
	}
	for _, key := range []string{"KREABUS_STREAM_REPLICAS", "KREABUS_LEDGER_REPLICAS"} {
		if r, err := strconv.Atoi(cm.Data[key]); err != nil || r < 1 || float64(r) > replicas {
			t.Errorf("%s = %q: want 1..%v", key, cm.Data[key], replicas)
		} else if r != 3 {
			t.Errorf("%s = %d; the 3-node cluster should keep 3 copies", key, r)
		}
	}

	// JetStream on a file store PVC, with a memory store.
	for _, path := range [][]string{
		{"config", "jetstream", "enabled"},
		{"config", "jetstream", "fileStore", "enabled"},
		{"config", "jetstream", "fileStore", "pvc", "enabled"},
		{"config", "jetstream", "memoryStore", "enabled"},
	} {
		if lookup(v, path...) != true {
			t.Errorf("%s must be true", strings.Join(path, "."))
		}
	}
	quantity := func(path ...string) resource.Quantity {
		s, _ := lookup(v, path...).(string)
		q, err := resource.ParseQuantity(s)
		if err != nil || q.IsZero() {
			t.Errorf("%s = %q: want a size", strings.Join(path, "."), s)
		}
		return q
	}
	pvc := quantity("config", "jetstream", "fileStore", "pvc", "size")
	maxFile := quantity("config", "jetstream", "fileStore", "maxSize")
	quantity("config", "jetstream", "memoryStore", "maxSize")
	if maxFile.Cmp(pvc) >= 0 {
		t.Errorf("fileStore.maxSize %s must stay below the PVC size %s", maxFile.String(), pvc.String())
	}

	// Pinned image, resources, non-root.
	if tag, _ := lookup(v, "container", "image", "tag").(string); tag == "" || strings.Contains(tag, "latest") {
		t.Errorf("container.image.tag = %q: pin a version", tag)
	}
	for _, path := range [][]string{
		{"container", "merge", "resources", "requests", "cpu"},
		{"container", "merge", "resources", "requests", "memory"},
		{"container", "merge", "resources", "limits", "memory"},
	} {
		if lookup(v, path...) == nil {
			t.Errorf("%s must be set", strings.Join(path, "."))
		}
	}
	if lookup(v, "podTemplate", "merge", "spec", "securityContext", "runAsNonRoot") != true {
		t.Error("NATS pods must run as non-root (the kreabus namespace enforces the restricted profile)")
	}
}

// natsConfText writes a Helm "config.merge" value as NATS configuration, the
// way the chart does: "<< x >>" strings are written raw.
func natsConfText(v any) string {
	switch x := v.(type) {
	case map[string]any:
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		var b strings.Builder
		b.WriteString("{\n")
		for _, k := range keys {
			fmt.Fprintf(&b, "%s: %s\n", strconv.Quote(k), natsConfText(x[k]))
		}
		b.WriteString("}")
		return b.String()
	case []any:
		var b strings.Builder
		b.WriteString("[\n")
		for _, e := range x {
			b.WriteString(natsConfText(e))
			b.WriteString("\n")
		}
		b.WriteString("]")
		return b.String()
	case string:
		if strings.HasPrefix(x, "<<") && strings.HasSuffix(x, ">>") {
			return strings.TrimSpace(x[2 : len(x)-2])
		}
		return strconv.Quote(x)
	case float64:
		if x == float64(int64(x)) {
			return strconv.FormatInt(int64(x), 10)
		}
		return strconv.FormatFloat(x, 'f', -1, 64)
	default:
		return fmt.Sprint(x)
	}
}

// userPermissions summarises the users of a parsed config by public key.
func userPermissions(opts *server.Options) map[string]string {
	out := map[string]string{}
	list := func(sp *server.SubjectPermission) string {
		if sp == nil {
			return "-"
		}
		a, d := slices.Sorted(slices.Values(sp.Allow)), slices.Sorted(slices.Values(sp.Deny))
		return fmt.Sprintf("allow%v deny%v", a, d)
	}
	for _, u := range opts.Nkeys {
		p := "none"
		if u.Permissions != nil {
			p = fmt.Sprintf("pub %s sub %s resp %v", list(u.Permissions.Publish), list(u.Permissions.Subscribe), u.Permissions.Response != nil)
		}
		out[u.Nkey] = u.Account.GetName() + " " + p
	}
	return out
}

// TestHelmValuesMatchNATSConfig: the Kubernetes NATS (Helm values) and the
// standalone NATS (config/nats-server.conf) give every user the same account
// and permissions, so kreabus behaves the same on both.
func TestHelmValuesMatchNATSConfig(t *testing.T) {
	natsUsers(t)
	v := loadHelmValues(t)
	merge, ok := lookup(v, "config", "merge").(map[string]any)
	if !ok {
		t.Fatal("config.merge missing")
	}
	conf := natsConfText(merge)
	conf = strings.TrimSuffix(strings.TrimPrefix(conf, "{\n"), "}")
	file := filepath.Join(t.TempDir(), "helm.conf")
	if err := os.WriteFile(file, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	helm, err := server.ProcessConfigFile(file)
	if err != nil {
		t.Fatalf("config.merge of %s as NATS config: %v\n%s", helmValuesFile, err, conf)
	}
	standalone, err := server.ProcessConfigFile(natsConfFile)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := userPermissions(helm), userPermissions(standalone); !reflect.DeepEqual(got, want) {
		for k := range want {
			if got[k] != want[k] {
				t.Errorf("user %s:\n helm:       %s\n standalone: %s", k, got[k], want[k])
			}
		}
		if len(got) != len(want) {
			t.Errorf("helm has %d users, standalone %d", len(got), len(want))
		}
	}
	if helm.MaxPayload != standalone.MaxPayload {
		t.Errorf("max_payload: helm %d, standalone %d", helm.MaxPayload, standalone.MaxPayload)
	}
	if helm.SystemAccount != standalone.SystemAccount {
		t.Errorf("system_account: helm %q, standalone %q", helm.SystemAccount, standalone.SystemAccount)
	}
}
