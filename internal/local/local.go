// Package local runs the whole kreabus pipeline in one process for a
// laptop: an embedded JetStream server, the Krea API simulator, the bridge,
// the submitter (with its ledger and reconciler) and the mirror, wired
// exactly as in production but on loopback, plus a printer of job events.
package local

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kreabus/kreabus/internal/bridged"
	"github.com/kreabus/kreabus/internal/config"
	"github.com/kreabus/kreabus/internal/mirrord"
	"github.com/kreabus/kreabus/internal/submitterd"
	"github.com/kreabus/kreabus/pkg/events"
	"github.com/kreabus/kreabus/pkg/krea"
	"github.com/kreabus/kreabus/pkg/krea/kreatest"
)

// Defaults of a local run.
const (
	DefaultDataDir  = ".kreabus"
	DefaultNATSPort = 4222
	DefaultListen   = "127.0.0.1:8080"
	DefaultSamples  = 3
	// SampleTimeout bounds how long --exit waits for the samples to end.
	SampleTimeout = 2 * time.Minute
	// printerDurable is the consumer the event printer reads through.
	printerDurable = "kreabus-local-printer"
)

// Options configure a local run.
type Options struct {
	DataDir  string
	NATSPort int    // -1 picks a free port
	Listen   string // bridge webhook listener
	Samples  int
	Exit     bool // stop once the samples have ended
	// JobTime is how long a simulated job takes from queued to its end.
	JobTime time.Duration
	// Log receives the services' logs; Out the event lines.
	Log *slog.Logger
	Out io.Writer
}

func (o *Options) setDefaults() {
	if o.DataDir == "" {
		o.DataDir = DefaultDataDir
	}
	if o.NATSPort == 0 {
		o.NATSPort = DefaultNATSPort
	}
	if o.Listen == "" {
		o.Listen = DefaultListen
	}
	if o.JobTime <= 0 {
		o.JobTime = 2 * time.Second
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.Out == nil {
		o.Out = os.Stdout
	}
}

// Pipeline is a running local pipeline.
type Pipeline struct {
	o         Options
	ns        *server.Server
	sim       *kreatest.Server
	bridge    *bridged.Program
	submitter *submitterd.Program
	mirror    *mirrord.Program
	nc        *nats.Conn
	js        jetstream.JetStream
	printer   *events.ConsumeContext

	mu       sync.Mutex
	started  map[string]time.Time // request id → publish time
	ended    map[string]bool      // request ids that reached an end
	allDone  chan struct{}
	doneOnce sync.Once // Done reports the first time all samples ended
	want     int
}

// Start brings the pipeline up. Close it when done.
func Start(ctx context.Context, o Options) (_ *Pipeline, err error) {
	o.setDefaults()
	p := &Pipeline{o: o, started: map[string]time.Time{}, ended: map[string]bool{}, allDone: make(chan struct{})}
	defer func() {
		if err != nil {
			p.Close()
		}
	}()
	if err := os.MkdirAll(o.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("data folder: %w", err)
	}
	secret, err := loadSecret(filepath.Join(o.DataDir, "webhook-secret"))
	if err != nil {
		return nil, err
	}

	port := o.NATSPort
	if port < 0 {
		port = server.RANDOM_PORT
	}
	p.ns, err = server.NewServer(&server.Options{
		ServerName: "kreabus-local",
		Host:       "127.0.0.1",
		Port:       port,
		JetStream:  true,
		StoreDir:   filepath.Join(o.DataDir, "jetstream"),
		NoSigs:     true,
		NoLog:      true,
		// Room for the bridge's largest webhook (1 MiB) plus its headers,
		// as config/nats-server.conf gives a production server.
		MaxPayload: 2 << 20,
	})
	if err != nil {
		return nil, fmt.Errorf("embedded NATS: %w", err)
	}
	go p.ns.Start()
	if !p.ns.ReadyForConnections(10 * time.Second) {
		return nil, fmt.Errorf("embedded NATS did not start on 127.0.0.1:%d (is the port taken? try --nats-port)", o.NATSPort)
	}

	p.sim = kreatest.NewServer(kreatest.Config{
		QueueTime: o.JobTime / 4,
		RunTime:   o.JobTime * 3 / 4,
		RunJitter: o.JobTime / 2,
	})

	env := map[string]string{
		"NATS_URL":               p.ns.ClientURL(),
		"KREABUS_WEBHOOK_SECRET": secret,
		"KREABUS_LISTEN":         o.Listen,
		"KREABUS_ADMIN_LISTEN":   "",
		"KREABUS_LOG_FORMAT":     "text",
		"KREA_API_URL":           p.sim.URL,
		"KREA_API_TOKEN":         p.sim.Token(),
		// A local run wants to see lost webhooks recovered in seconds.
		"KREABUS_WEBHOOK_GRACE": "10s",
	}
	var bs bridged.Settings
	if err := loadSettings(&bs, env); err != nil {
		return nil, err
	}
	if p.bridge, err = bridged.Start(bs, o.Log.With("service", "bridge")); err != nil {
		return nil, fmt.Errorf("bridge: %w", err)
	}
	env["KREABUS_PUBLIC_URL"] = "http://" + p.bridge.Addr()
	var ss submitterd.Settings
	if err := loadSettings(&ss, env); err != nil {
		return nil, err
	}
	if p.submitter, err = submitterd.Start(ss, o.Log.With("service", "submitter")); err != nil {
		return nil, fmt.Errorf("submitter: %w", err)
	}
	// The simulator serves the result files itself, on loopback over
	// http: the mirror may fetch from there and nowhere else.
	simURL, err := url.Parse(p.sim.URL)
	if err != nil {
		return nil, err
	}
	env["KREABUS_RESULTS_ALLOW_HOSTS"] = simURL.Hostname()
	env["KREABUS_RESULTS_ALLOW_PRIVATE"] = "true"
	var ms mirrord.Settings
	if err := loadSettings(&ms, env); err != nil {
		return nil, err
	}
	if p.mirror, err = mirrord.Start(ms, o.Log.With("service", "mirror")); err != nil {
		return nil, fmt.Errorf("mirror: %w", err)
	}

	if p.nc, err = nats.Connect(p.ns.ClientURL(), nats.Name("kreabus-local")); err != nil {
		return nil, err
	}
	if p.js, err = jetstream.New(p.nc); err != nil {
		return nil, err
	}
	if err := events.EnsureStreams(ctx, p.js, events.StreamOptions{}); err != nil {
		return nil, err
	}
	// Start the printer at the newest event: a rerun on the same data
	// folder should not replay yesterday's jobs.
	_ = p.js.DeleteConsumer(ctx, events.StreamJobs, printerDurable)
	ccfg, err := events.JobsConsumerConfig(printerDurable, events.WithDeliverPolicy(jetstream.DeliverNewPolicy))
	if err != nil {
		return nil, err
	}
	cons, err := p.js.CreateOrUpdateConsumer(ctx, events.StreamJobs, ccfg)
	if err != nil {
		return nil, fmt.Errorf("event printer: %w", err)
	}
	p.printer, err = events.ConsumeJobs(p.nc, cons, p.print)
	if err != nil {
		return nil, fmt.Errorf("event printer: %w", err)
	}
	return p, nil
}

// loadSettings fills a service's settings from its documented defaults and
// env, the one way every program loads them.
func loadSettings(dst any, env map[string]string) error {
	return config.Load(dst, "kreabus", nil, func(k string) (string, bool) {
		v, ok := env[k]
		return v, ok
	})
}

// loadSecret keeps one random webhook secret per data folder, so webhooks
// in flight across a restart still verify.
func loadSecret(path string) (string, error) {
	if b, err := os.ReadFile(path); err == nil && len(strings.TrimSpace(string(b))) >= 32 {
		return strings.TrimSpace(string(b)), nil
	}
	buf := make([]byte, 32)
	if _, err := rand.Read(buf); err != nil {
		return "", err
	}
	s := hex.EncodeToString(buf)
	if err := os.WriteFile(path, []byte(s+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("webhook secret: %w", err)
	}
	return s, nil
}

// NATSURL is the embedded server's client URL.
func (p *Pipeline) NATSURL() string { return p.ns.ClientURL() }

// BridgeAddr is the bridge's webhook listener.
func (p *Pipeline) BridgeAddr() string { return p.bridge.Addr() }

// Simulator is the Krea API simulator the submitter calls.
func (p *Pipeline) Simulator() *kreatest.Server { return p.sim }

// Samples are the prompts the sample requests use; the last one asks the
// simulator to fail, to show a failed job too.
var samplePrompts = []string{
	"a serene mountain landscape at sunset",
	"a red fox in fresh snow, golden hour",
	"a lighthouse in a storm, oil painting " + kreatest.DirectiveFail,
	"a bowl of ramen, studio lighting",
	"a cyberpunk street market at night",
}

// PublishSamples publishes n sample requests and returns their IDs.
func (p *Pipeline) PublishSamples(ctx context.Context, n int) ([]string, error) {
	p.mu.Lock()
	p.want += n
	p.mu.Unlock()
	ids := make([]string, 0, n)
	for i := 0; i < n; i++ {
		req, err := events.NewRequest("/generate/image/bfl/flux-1-dev", map[string]any{
			"prompt": samplePrompts[i%len(samplePrompts)], "width": 1024, "height": 576,
		})
		if err != nil {
			return ids, err
		}
		req.RequestID = "sample-" + strconv.Itoa(i+1) + "-" + req.RequestID[:8]
		req.Metadata = []byte(`{"sample":` + strconv.Itoa(i+1) + `}`)
		p.mu.Lock()
		p.started[req.RequestID] = time.Now()
		p.mu.Unlock()
		if _, err := events.PublishRequest(ctx, p.js, req); err != nil {
			return ids, err
		}
		p.Printf("%s  published  %-24s  %s\n", stamp(time.Now()), req.RequestID, req.Path)
		ids = append(ids, req.RequestID)
	}
	return ids, nil
}

// Printf writes to the pipeline's output, never in the middle of an event
// line.
func (p *Pipeline) Printf(format string, args ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprintf(p.o.Out, format, args...)
}

// Done is closed once every published sample reached an end: its results
// mirrored, or a failed, cancelled or rejected event.
func (p *Pipeline) Done() <-chan struct{} { return p.allDone }

func (p *Pipeline) print(_ context.Context, ev *events.Event) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	since := ""
	if t, ok := p.started[ev.RequestID]; ok {
		since = "+" + time.Since(t).Round(time.Millisecond).String()
	}
	line := fmt.Sprintf("%s  %-10s %-24s  job %-36s  %-8s  via %s", stamp(time.Now()), ev.Status, ev.RequestID, ev.JobID, since, ev.Source)
	if ev.Job.Result != nil && len(ev.Job.Result.URLs) > 0 {
		line += "  " + strings.Join(ev.Job.Result.URLs, " ")
	}
	for _, o := range ev.Objects() {
		if o.OK() {
			line += fmt.Sprintf("  %s/%s (%d bytes, %s)", o.Bucket, o.Name, o.Size, o.ContentType)
		} else {
			line += "  " + o.URL + " not copied: " + o.Error
		}
	}
	if r := reason(ev); r != "" {
		line += "  reason: " + r
	}
	fmt.Fprintln(p.o.Out, line)
	// Done is closed only after the line is out, so whoever waits on it
	// has seen every sample's end: a completed job ends once its results
	// are mirrored.
	if ended(ev.Status) {
		if _, ours := p.started[ev.RequestID]; ours && !p.ended[ev.RequestID] {
			p.ended[ev.RequestID] = true
			if len(p.ended) == p.want {
				p.doneOnce.Do(func() { close(p.allDone) })
			}
		}
	}
	return nil
}

// ended reports whether an event of this status is the last of a sample.
func ended(s krea.Status) bool {
	return s == events.StatusMirrored || s == events.StatusRejected || (s.IsTerminal() && s != krea.StatusCompleted)
}

func reason(ev *events.Event) string {
	if ev.Reason != "" {
		return ev.Reason
	}
	if ev.Status == krea.StatusFailed {
		return ev.Job.FailureReason()
	}
	return ""
}

func stamp(t time.Time) string { return t.Format("15:04:05.000") }

// Close stops everything in reverse order of start.
func (p *Pipeline) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	var errs []error
	if p.printer != nil {
		p.printer.Drain()
		select {
		case <-p.printer.Closed():
		case <-ctx.Done():
			p.printer.Stop()
			errs = append(errs, ctx.Err())
		}
	}
	if p.nc != nil {
		p.nc.Close()
	}
	if p.mirror != nil {
		errs = append(errs, p.mirror.Shutdown(ctx))
	}
	if p.submitter != nil {
		errs = append(errs, p.submitter.Shutdown(ctx))
	}
	if p.bridge != nil {
		errs = append(errs, p.bridge.Shutdown(ctx))
	}
	if p.sim != nil {
		p.sim.Close()
	}
	if p.ns != nil {
		p.ns.Shutdown()
		p.ns.WaitForShutdown()
	}
	return errors.Join(errs...)
}
