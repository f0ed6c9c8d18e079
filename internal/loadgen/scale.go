package loadgen

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kreabus/kreabus/internal/ledger"
	"github.com/kreabus/kreabus/internal/ledger/ledgertest"
	"github.com/kreabus/kreabus/pkg/events"
)

// ScaleConfig is one fill-and-measure run: a fresh nats-server whose job
// ledger is filled with Jobs product-shaped jobs (a request record and a
// terminal job record each, as the submitter and the Recorder leave them)
// and Open jobs still running and overdue for a poll; then the bridge and
// the submitter are started on it and measured.
type ScaleConfig struct {
	NATSBin, BridgeBin, SubmitterBin, KreasimBin string
	// WorkDir holds the servers' stores and logs.
	WorkDir string
	Jobs    int
	Open    int     // default 10
	Secret  string  // default: made up
	Rate    float64 // webhook probe rate (default 500/s)
	Probe   time.Duration
	// Rounds is how many idle poll rounds the submitter's CPU is measured
	// over (default 20, one per second).
	Rounds int
	Logf   func(format string, args ...any)
}

// ScaleReport is what a fill-and-measure run found.
type ScaleReport struct {
	Jobs            int     `json:"jobs"`
	Open            int     `json:"open"`
	FillSeconds     float64 `json:"fill_s"`
	LedgerMsgs      uint64  `json:"ledger_msgs"`
	LedgerBytes     uint64  `json:"ledger_bytes"`
	StoreDiskBytes  int64   `json:"store_disk_bytes"`
	NATSRSS         int64   `json:"nats_rss_peak_bytes"`
	NATSRSSEnd      int64   `json:"nats_rss_end_bytes"`
	BridgeReady     Millis  `json:"bridge_ready_ms"`
	BridgeRSSReady  int64   `json:"bridge_rss_ready_bytes"`
	BridgeRSSPeak   int64   `json:"bridge_rss_peak_bytes"`
	Webhook         Latency `json:"webhook_latency"`
	WebhookRate     float64 `json:"webhook_rate"`
	EventBytes      float64 `json:"krea_jobs_bytes_per_event"`
	FirstPoll       Millis  `json:"submitter_first_poll_ms"`
	AllDuePolled    Millis  `json:"submitter_all_due_polled_ms"`
	CPUPerRound     Millis  `json:"submitter_cpu_per_round_ms"`
	SubmitterRSS    int64   `json:"submitter_rss_peak_bytes"`
	SubmitterRounds int     `json:"submitter_rounds"`
}

func (c *ScaleConfig) logf(format string, args ...any) {
	if c.Logf != nil {
		c.Logf(format, args...)
	}
}

// Scale runs one fill-and-measure run.
func Scale(ctx context.Context, cfg ScaleConfig) (*ScaleReport, error) {
	if cfg.Open <= 0 {
		cfg.Open = 10
	}
	if cfg.Secret == "" {
		cfg.Secret = "scale-" + uuid.NewString()
	}
	if cfg.Rate <= 0 {
		cfg.Rate = 500
	}
	if cfg.Probe <= 0 {
		cfg.Probe = 10 * time.Second
	}
	if cfg.Rounds <= 0 {
		cfg.Rounds = 20
	}
	dir, err := os.MkdirTemp(cfg.WorkDir, fmt.Sprintf("scale-%d-", cfg.Jobs))
	if err != nil {
		return nil, err
	}
	ns, err := StartNATS(ctx, cfg.NATSBin, dir, NATSOptions{Nodes: 1})
	if err != nil {
		return nil, err
	}
	defer ns.Stop()
	nc, err := nats.Connect(ns.URL())
	if err != nil {
		return nil, err
	}
	defer nc.Close()
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(8192))
	if err != nil {
		return nil, err
	}
	if err := events.EnsureStreams(ctx, js, events.StreamOptions{}); err != nil {
		return nil, err
	}
	rep := &ScaleReport{Jobs: cfg.Jobs, Open: cfg.Open}

	start := time.Now()
	led, err := ledgertest.Fill(ctx, js, cfg.Jobs, cfg.Open, cfg.logf)
	if err != nil {
		return nil, err
	}
	rep.FillSeconds = time.Since(start).Seconds()
	st, err := js.Stream(ctx, "KV_"+led.Bucket())
	if err != nil {
		return nil, err
	}
	info, err := st.Info(ctx)
	if err != nil {
		return nil, err
	}
	rep.LedgerMsgs, rep.LedgerBytes = info.State.Msgs, info.State.Bytes
	rep.StoreDiskBytes = diskUsage(dir)
	if len(ns.Procs) > 0 {
		rep.NATSRSS, _ = PeakRSS(ns.Procs[0].PID())
	}
	cfg.logf("filled %d jobs in %.1f s: %d ledger messages, %d bytes; store on disk %d bytes",
		cfg.Jobs, rep.FillSeconds, rep.LedgerMsgs, rep.LedgerBytes, rep.StoreDiskBytes)

	// The bridge: ready time, memory, and a webhook probe at a fixed rate.
	bport, err := FreePort()
	if err != nil {
		return nil, err
	}
	aport, err := FreePort()
	if err != nil {
		return nil, err
	}
	listen, admin := "127.0.0.1:"+strconv.Itoa(bport), "127.0.0.1:"+strconv.Itoa(aport)
	bstart := time.Now()
	bridge, err := StartProc("bridge", dir, cfg.BridgeBin, nil, []string{
		"NATS_URL=" + ns.URL(), "KREABUS_WEBHOOK_SECRET=" + cfg.Secret,
		"KREABUS_LISTEN=" + listen, "KREABUS_ADMIN_LISTEN=" + admin,
	})
	if err != nil {
		return nil, err
	}
	defer bridge.Stop(15 * time.Second)
	if err := WaitHTTP(ctx, "http://"+admin+"/readyz", bridge, 10*time.Minute); err != nil {
		return nil, fmt.Errorf("bridge: %w\n%s", err, bridge.LogTail())
	}
	rep.BridgeReady = Millis(time.Since(bstart))
	rep.BridgeRSSReady, _ = RSS(bridge.PID())
	evStart, _ := StartSeq(ctx, js)
	res, err := Run(ctx, Config{URL: "http://" + listen, Secret: cfg.Secret, Rate: cfg.Rate, Concurrency: 64,
		Duration: cfg.Probe, Warmup: time.Second})
	if err != nil {
		return nil, err
	}
	if chk := Check(ctx, js, evStart, res.Jobs); !chk.Pass {
		return nil, fmt.Errorf("%w: stream check after the webhook probe: %+v", ErrFailed, chk)
	}
	rep.Webhook, rep.WebhookRate = res.Report.Latency, res.Report.Throughput
	rep.BridgeRSSPeak, _ = PeakRSS(bridge.PID())
	if jst, err := js.Stream(ctx, events.StreamJobs); err == nil {
		if ji, err := jst.Info(ctx); err == nil && ji.State.Msgs > 0 {
			rep.EventBytes = float64(ji.State.Bytes) / float64(ji.State.Msgs)
		}
	}
	cfg.logf("bridge ready in %v, RSS %d MiB; webhooks p50 %v p99 %v at %.0f/s; peak RSS %d MiB",
		time.Duration(rep.BridgeReady), rep.BridgeRSSReady>>20, time.Duration(rep.Webhook.P50), time.Duration(rep.Webhook.P99),
		rep.WebhookRate, rep.BridgeRSSPeak>>20)

	// The submitter: time to its first poll, and CPU per idle poll round.
	kport, err := FreePort()
	if err != nil {
		return nil, err
	}
	sim, err := StartProc("kreasim", dir, cfg.KreasimBin, []string{"-listen", "127.0.0.1:" + strconv.Itoa(kport)},
		[]string{"KREA_API_TOKEN=scale-token"})
	if err != nil {
		return nil, err
	}
	defer sim.Stop(5 * time.Second)
	if err := WaitTCP(ctx, "127.0.0.1:"+strconv.Itoa(kport), sim, time.Minute); err != nil {
		return nil, fmt.Errorf("simulator: %w\n%s", err, sim.LogTail())
	}
	sport, err := FreePort()
	if err != nil {
		return nil, err
	}
	sadmin := "127.0.0.1:" + strconv.Itoa(sport)
	subEnv := func(grace string) []string {
		return []string{
			"NATS_URL=" + ns.URL(), "KREABUS_WEBHOOK_SECRET=" + cfg.Secret,
			"KREA_API_URL=http://127.0.0.1:" + strconv.Itoa(kport), "KREA_API_TOKEN=scale-token",
			"KREABUS_PUBLIC_URL=http://" + listen, "KREABUS_ADMIN_LISTEN=" + sadmin,
			"KREABUS_WEBHOOK_GRACE=" + grace, "KREABUS_POLL_INTERVAL=1s", "KREABUS_POLL_RATE=100",
		}
	}
	// A first run, polling nothing (grace 1 h), lets the ledger Recorder's
	// durable consumer catch up with the probe's events and stops: what is
	// measured next is a restart, as in production, where the durable
	// keeps its place and only events since the last ack are applied.
	warm, err := StartProc("submitter-warm", dir, cfg.SubmitterBin, nil, subEnv("1h"))
	if err != nil {
		return nil, err
	}
	caughtUp := func() bool {
		c, err := js.Consumer(ctx, events.StreamJobs, ledger.ConsumerName)
		if err != nil {
			return false
		}
		ci, err := c.Info(ctx)
		return err == nil && ci.NumPending == 0 && ci.NumAckPending == 0
	}
	if err := waitFor(ctx, 10*time.Minute, warm, caughtUp); err != nil {
		return nil, fmt.Errorf("ledger recorder catching up: %w\n%s", err, warm.LogTail())
	}
	warm.Stop(15 * time.Second)
	sstart := time.Now()
	sub, err := StartProc("submitter", dir, cfg.SubmitterBin, nil, subEnv("1s"))
	if err != nil {
		return nil, err
	}
	defer sub.Stop(15 * time.Second)
	metrics := "http://" + sadmin + "/metrics"
	polled := func() float64 { return metricSum(metrics, "kreabus_reconciler_polls_total") }
	if err := waitFor(ctx, 10*time.Minute, sub, func() bool { return polled() >= 1 }); err != nil {
		return nil, fmt.Errorf("submitter first poll: %w\n%s", err, sub.LogTail())
	}
	rep.FirstPoll = Millis(time.Since(sstart))
	if err := waitFor(ctx, 10*time.Minute, sub, func() bool { return polled() >= float64(cfg.Open) }); err != nil {
		return nil, fmt.Errorf("submitter polls: %w\n%s", err, sub.LogTail())
	}
	rep.AllDuePolled = Millis(time.Since(sstart))
	// Idle rounds: every job held is settled; a round must cost the same
	// whatever the ledger holds.
	cpu0, _ := CPUTime(sub.PID())
	t0 := time.Now()
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-time.After(time.Duration(cfg.Rounds) * time.Second):
	}
	cpu1, _ := CPUTime(sub.PID())
	rep.SubmitterRounds = int(time.Since(t0) / time.Second)
	rep.CPUPerRound = Millis((cpu1 - cpu0) / time.Duration(max(rep.SubmitterRounds, 1)))
	rep.SubmitterRSS, _ = PeakRSS(sub.PID())
	if len(ns.Procs) > 0 {
		rep.NATSRSSEnd, _ = RSS(ns.Procs[0].PID())
	}
	cfg.logf("submitter first poll after %v, all %d due polled after %v; %v CPU per idle round; peak RSS %d MiB",
		time.Duration(rep.FirstPoll), cfg.Open, time.Duration(rep.AllDuePolled), time.Duration(rep.CPUPerRound), rep.SubmitterRSS>>20)
	return rep, nil
}

// RSS returns the process' resident set size (VmRSS) in bytes.
func RSS(pid int) (int64, error) { return procStatusKB(pid, "VmRSS:") }

func procStatusKB(pid int, field string) (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), field); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kb << 10, err
		}
	}
	return 0, fmt.Errorf("/proc/%d/status: no %s", pid, field)
}

func diskUsage(dir string) int64 {
	var n int64
	_ = filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			if fi, err := d.Info(); err == nil {
				n += fi.Size()
			}
		}
		return nil
	})
	return n
}

// metricSum is the sum of a Prometheus metric's samples at url; 0 when it
// cannot be read.
func metricSum(url, name string) float64 {
	c := http.Client{Timeout: 2 * time.Second}
	res, err := c.Get(url)
	if err != nil {
		return 0
	}
	defer res.Body.Close()
	body, _ := io.ReadAll(res.Body)
	sum := 0.0
	for _, l := range strings.Split(string(body), "\n") {
		if !strings.HasPrefix(l, name+"{") && !strings.HasPrefix(l, name+" ") {
			continue
		}
		f := strings.Fields(l)
		if v, err := strconv.ParseFloat(f[len(f)-1], 64); err == nil {
			sum += v
		}
	}
	return sum
}

// waitFor waits until ok, p exits or timeout passes.
func waitFor(ctx context.Context, timeout time.Duration, p *Proc, ok func() bool) error {
	return poll(ctx, p, timeout, 20*time.Millisecond, func(context.Context) error {
		if !ok() {
			return errors.New("not yet")
		}
		return nil
	})
}
