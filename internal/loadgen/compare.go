package loadgen

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kreabus/kreabus/internal/baseline"
)

// Target names.
const (
	TargetBaseline = "baseline"
	TargetKreabus  = "kreabus"
)

// CompareConfig describes a side-by-side run: each target gets a fresh
// nats-server (or cluster) and the same load, in the same invocation.
type CompareConfig struct {
	// Load is the load for every target (URL is set per target).
	Load Config
	// Targets in run order (default baseline, kreabus).
	Targets []string
	// Rounds repeats the targets, alternating, to even out drift.
	Rounds int
	NATS   NATSOptions
	// WorkDir holds binaries, configurations, stores and logs (a fresh
	// temporary directory when empty; removed unless KeepWorkDir).
	WorkDir     string
	KeepWorkDir bool
	// NATSBin and BridgeBin are prebuilt binaries; built when empty.
	NATSBin   string
	BridgeBin string
	// BaselineCmd starts the baseline as its own process, like the
	// bridge (argv; the listen address, NATS URL and replicas are
	// appended as -listen, -nats-url, -replicas flags). Empty runs it in
	// this process.
	BaselineCmd []string
	// Ceiling also measures the JetStream publish ceiling on a fresh server.
	Ceiling bool
	// CeilingDedup sets unique message IDs in the ceiling run.
	CeilingDedup bool
	// E2ERate > 0 also runs an end-to-end latency phase per target at
	// this rate for E2EDuration.
	E2ERate     float64
	E2EDuration time.Duration
	// Progress receives progress lines (may be nil).
	Progress io.Writer
}

// Machine describes where the figures were taken.
type Machine struct {
	CPUs       int    `json:"cpus"`
	CPUModel   string `json:"cpu_model,omitempty"`
	GoVersion  string `json:"go_version"`
	LoadBefore string `json:"load_average_before"`
	LoadAfter  string `json:"load_average_after"`
}

// Ratio compares kreabus with the baseline.
type Ratio struct {
	Throughput float64 `json:"throughput"`
	P50        float64 `json:"p50"`
	P99        float64 `json:"p99"`
	P999       float64 `json:"p99_9"`
}

// CompareReport is the outcome of Compare.
type CompareReport struct {
	Machine Machine        `json:"machine"`
	NATS    NATSOptions    `json:"nats"`
	Runs    []*Report      `json:"runs"`
	E2E     []*E2EReport   `json:"e2e,omitempty"`
	Ceiling *CeilingReport `json:"ceiling,omitempty"`
	// Ratio is kreabus / baseline (best round of each).
	Ratio *Ratio `json:"ratio_kreabus_over_baseline,omitempty"`
	Pass  bool   `json:"pass"`
}

// LoadAverage returns /proc/loadavg's first three fields.
func LoadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

func cpuModel() string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return ""
	}
	for _, l := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

func (c *CompareConfig) logf(format string, args ...any) {
	if c.Progress != nil {
		fmt.Fprintf(c.Progress, format+"\n", args...)
	}
}

// Compare runs the load against each target, each on fresh servers.
func Compare(ctx context.Context, cfg CompareConfig) (*CompareReport, error) {
	if len(cfg.Targets) == 0 {
		cfg.Targets = []string{TargetBaseline, TargetKreabus}
	}
	if cfg.Rounds <= 0 {
		cfg.Rounds = 1
	}
	if cfg.NATS.Nodes <= 0 {
		cfg.NATS.Nodes = 1
	}
	if cfg.Load.Secret == "" {
		cfg.Load.Secret = "loadgen-secret-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	}
	cfg.Load.setDefaults()
	if cfg.WorkDir == "" {
		d, err := os.MkdirTemp("", "kreabus-loadgen-")
		if err != nil {
			return nil, err
		}
		cfg.WorkDir = d
	}
	if !cfg.KeepWorkDir {
		defer os.RemoveAll(cfg.WorkDir)
	} else {
		cfg.logf("work dir %s", cfg.WorkDir)
	}
	var err error
	if cfg.NATSBin == "" {
		cfg.logf("building nats-server (go.mod's version)...")
		if cfg.NATSBin, err = BuildNATSServer(ctx, cfg.WorkDir); err != nil {
			return nil, err
		}
	}
	for _, t := range cfg.Targets {
		switch t {
		case TargetKreabus:
			if cfg.BridgeBin == "" {
				cfg.logf("building ./cmd/bridge...")
				if cfg.BridgeBin, err = GoBuild(ctx, cfg.WorkDir, "bridge", "./cmd/bridge"); err != nil {
					return nil, err
				}
			}
		case TargetBaseline:
		default:
			return nil, fmt.Errorf("unknown target %q (want %s or %s)", t, TargetBaseline, TargetKreabus)
		}
	}

	rep := &CompareReport{
		Machine: Machine{CPUs: runtime.NumCPU(), CPUModel: cpuModel(), GoVersion: runtime.Version(), LoadBefore: LoadAverage()},
		NATS:    cfg.NATS,
		Pass:    true,
	}
	for round := 0; round < cfg.Rounds; round++ {
		order := cfg.Targets
		if round%2 == 1 {
			order = reversed(order)
		}
		for _, t := range order {
			if err := ctx.Err(); err != nil {
				return rep, err
			}
			r, e2e, err := cfg.runTarget(ctx, t, round)
			if err != nil {
				return rep, fmt.Errorf("%s: %w", t, err)
			}
			rep.Runs = append(rep.Runs, r)
			if !r.Passed() {
				rep.Pass = false
			}
			if e2e != nil {
				rep.E2E = append(rep.E2E, e2e)
				if e2e.Load.Check != nil && !e2e.Load.Check.Pass {
					rep.Pass = false
				}
			}
		}
	}
	if cfg.Ceiling {
		c, err := cfg.runCeiling(ctx)
		if err != nil {
			return rep, fmt.Errorf("ceiling: %w", err)
		}
		rep.Ceiling = c
	}
	rep.Machine.LoadAfter = LoadAverage()
	b, k := best(rep.Runs, TargetBaseline), best(rep.Runs, TargetKreabus)
	if b != nil && k != nil && b.Throughput > 0 {
		rep.Ratio = &Ratio{
			Throughput: k.Throughput / b.Throughput,
			P50:        ratio(k.Latency.P50, b.Latency.P50),
			P99:        ratio(k.Latency.P99, b.Latency.P99),
			P999:       ratio(k.Latency.P999, b.Latency.P999),
		}
	}
	return rep, nil
}

func ratio(a, b Millis) float64 {
	if b == 0 {
		return 0
	}
	return float64(a) / float64(b)
}

func reversed(s []string) []string {
	out := make([]string, len(s))
	for i, v := range s {
		out[len(s)-1-i] = v
	}
	return out
}

// best returns the target's run with the highest throughput.
func best(runs []*Report, target string) *Report {
	var b *Report
	for _, r := range runs {
		if r.Target == target && (b == nil || r.Throughput > b.Throughput) {
			b = r
		}
	}
	return b
}

// target is a started bridge.
type target struct {
	url  string
	proc *Proc // nil when in-process
	stop func()
}

func (cfg *CompareConfig) runTarget(ctx context.Context, name string, round int) (*Report, *E2EReport, error) {
	dir, err := os.MkdirTemp(cfg.WorkDir, name+"-")
	if err != nil {
		return nil, nil, err
	}
	if !cfg.KeepWorkDir {
		defer os.RemoveAll(dir)
	}
	cfg.logf("%s (round %d): starting %d nats-server(s)...", name, round+1, cfg.NATS.Nodes)
	ns, err := StartNATS(ctx, cfg.NATSBin, dir, cfg.NATS)
	if err != nil {
		return nil, nil, err
	}
	defer ns.Stop()
	tg, err := cfg.startTarget(ctx, name, dir, ns)
	if err != nil {
		return nil, nil, err
	}
	defer tg.stop()

	nc, err := nats.Connect(ns.URL())
	if err != nil {
		return nil, nil, err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, nil, err
	}
	from, err := StartSeq(ctx, js)
	if err != nil {
		return nil, nil, err
	}
	load := cfg.Load
	load.URL = tg.url
	var pm *ProcMeter
	if tg.proc != nil {
		pm = NewProcMeter(tg.proc.PID())
	}
	nm := NewProcMeter(ns.PIDs()...)
	gm := NewProcMeter(os.Getpid())
	load.OnMeasureStart = func() {
		if pm != nil {
			pm.Start()
		}
		nm.Start()
		gm.Start()
	}
	cfg.logf("%s (round %d): load for %v after %v warmup (load average %s)...", name, round+1, load.Duration, load.Warmup, LoadAverage())
	res, err := Run(ctx, load)
	if err != nil {
		return nil, nil, err
	}
	r := res.Report
	r.Target = name
	if pm != nil {
		r.Proc = pm.Stop(r.Requests)
	}
	r.NATS = nm.Stop(r.Requests)
	r.Generator = gm.Stop(r.Requests)
	cfg.logf("%s (round %d): %.0f req/s, p99 %s; checking the stream...", name, round+1, r.Throughput, r.Latency.P99)
	r.Check = Check(ctx, js, from, res.Jobs)

	var e2e *E2EReport
	if cfg.E2ERate > 0 {
		el := cfg.Load
		el.URL = tg.url
		el.Rate = cfg.E2ERate
		el.Duration = cfg.E2EDuration
		el.Requests = 0
		if el.Duration <= 0 {
			el.Duration = 10 * time.Second
		}
		from, err := StartSeq(ctx, js)
		if err != nil {
			return nil, nil, err
		}
		cfg.logf("%s: end-to-end latency at %.0f/s for %v...", name, el.Rate, el.Duration)
		e2e, err = E2E(ctx, js, el, 10*time.Second)
		if err != nil {
			return nil, nil, err
		}
		e2e.Target = name
		e2e.Load.Target = name
		e2e.Load.Check = Check(ctx, js, from, e2e.Jobs)
	}
	return r, e2e, nil
}

func (cfg *CompareConfig) startTarget(ctx context.Context, name, dir string, ns *NATS) (*target, error) {
	port, err := FreePort()
	if err != nil {
		return nil, err
	}
	addr := "127.0.0.1:" + strconv.Itoa(port)
	replicas := 1
	if cfg.NATS.Nodes > 1 {
		replicas = 3
	}
	switch {
	case name == TargetKreabus:
		aport, err := FreePort()
		if err != nil {
			return nil, err
		}
		admin := "127.0.0.1:" + strconv.Itoa(aport)
		p, err := StartProc("bridge", dir, cfg.BridgeBin, nil, []string{
			"NATS_URL=" + ns.URL(),
			"KREABUS_WEBHOOK_SECRET=" + cfg.Load.Secret,
			"KREABUS_LISTEN=" + addr,
			"KREABUS_ADMIN_LISTEN=" + admin,
			"KREABUS_STREAM_REPLICAS=" + strconv.Itoa(replicas),
		})
		if err != nil {
			return nil, err
		}
		if err := WaitHTTP(ctx, "http://"+admin+"/readyz", p, 60*time.Second); err != nil {
			p.Stop(10 * time.Second)
			return nil, fmt.Errorf("bridge: %w\n%s", err, p.LogTail())
		}
		return &target{url: "http://" + addr, proc: p, stop: func() { p.Stop(15 * time.Second) }}, nil
	case len(cfg.BaselineCmd) > 0:
		args := append(append([]string{}, cfg.BaselineCmd[1:]...),
			"-listen", addr, "-nats-url", ns.URL(), "-replicas", strconv.Itoa(replicas))
		p, err := StartProc("baseline", dir, cfg.BaselineCmd[0], args, []string{"KREABUS_WEBHOOK_SECRET=" + cfg.Load.Secret})
		if err != nil {
			return nil, err
		}
		if err := WaitTCP(ctx, addr, p, 60*time.Second); err != nil {
			p.Stop(10 * time.Second)
			return nil, fmt.Errorf("baseline: %w\n%s", err, p.LogTail())
		}
		return &target{url: "http://" + addr, proc: p, stop: func() { p.Stop(15 * time.Second) }}, nil
	default:
		return startInProcessBaseline(ctx, ns.URL(), cfg.Load.Secret, replicas)
	}
}

// startInProcessBaseline runs the baseline bridge in this process on a free
// loopback port.
func startInProcessBaseline(ctx context.Context, natsURL, secret string, replicas int) (*target, error) {
	b, err := baseline.New(ctx, baseline.Config{NATSURL: natsURL, Secret: secret, Replicas: replicas})
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Close()
		return nil, err
	}
	sctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- baseline.Serve(sctx, ln, b) }()
	return &target{url: "http://" + ln.Addr().String(), stop: func() {
		cancel()
		<-done
		b.Close()
	}}, nil
}

func (cfg *CompareConfig) runCeiling(ctx context.Context) (*CeilingReport, error) {
	dir, err := os.MkdirTemp(cfg.WorkDir, "ceiling-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	cfg.logf("ceiling: starting %d nats-server(s)...", cfg.NATS.Nodes)
	ns, err := StartNATS(ctx, cfg.NATSBin, dir, cfg.NATS)
	if err != nil {
		return nil, err
	}
	defer ns.Stop()
	replicas := 1
	if cfg.NATS.Nodes > 1 {
		replicas = 3
	}
	nm := NewProcMeter(ns.PIDs()...)
	cfg.logf("ceiling: %d synchronous publishers for %v (load average %s)...", cfg.Load.Concurrency, cfg.Load.Duration, LoadAverage())
	r, err := Ceiling(ctx, CeilingConfig{
		URL:            ns.URL(),
		Clients:        cfg.Load.Concurrency,
		Duration:       cfg.Load.Duration,
		Warmup:         cfg.Load.Warmup,
		Size:           cfg.Load.BodySize,
		Replicas:       replicas,
		Dedup:          cfg.CeilingDedup,
		OnMeasureStart: nm.Start,
	})
	if err != nil {
		return nil, err
	}
	r.NATS = nm.Stop(r.Msgs)
	return r, nil
}

// NATSCLIAvailable reports whether the natscli `nats` is on PATH.
func NATSCLIAvailable() bool {
	_, err := exec.LookPath("nats")
	return err == nil
}

// WriteText prints the side-by-side table and the details.
func (r *CompareReport) WriteText(w io.Writer) {
	storage := "file storage"
	if r.NATS.SyncAlways {
		storage += ", sync_interval: always"
	}
	topo := "single nats-server"
	if r.NATS.Nodes > 1 {
		topo = fmt.Sprintf("%d-node JetStream cluster on loopback, R3 streams", r.NATS.Nodes)
	}
	fmt.Fprintf(w, "\nmachine: %d CPUs %s, %s; load average before %s, after %s\n",
		r.Machine.CPUs, r.Machine.CPUModel, r.Machine.GoVersion, r.Machine.LoadBefore, r.Machine.LoadAfter)
	if len(r.Runs) > 0 {
		x := r.Runs[0]
		load := fmt.Sprintf("%d keep-alive connections (closed loop)", x.Concurrency)
		if x.Mode == "open" {
			load = fmt.Sprintf("%.0f req/s open loop, ≤ %d in flight", x.Rate, x.Concurrency)
		}
		fmt.Fprintf(w, "setup: %s, %s; %s; body %d B, %.0f%% repeats; %s measured after %s warmup, fresh servers per target\n\n",
			topo, storage, load, x.BodySize, x.RepeatShare*100, x.Elapsed, x.Warmup)
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "target\treq/s\tp50\tp90\tp99\tp99.9\tmax\terrors\tstream\tCPU/webhook\tcores\tpeak RSS\tnats CPU/msg\t")
	for _, x := range r.Runs {
		verdict := "PASS"
		if !x.Passed() {
			verdict = "FAIL"
		}
		cpu, cores, rss := "-", "-", "-"
		if x.Proc != nil {
			cpu = fmtUs(time.Duration(x.Proc.CPUPerRequest))
			cores = fmt.Sprintf("%.2f", x.Proc.CPUShare)
			rss = fmt.Sprintf("%.1f MiB", float64(x.Proc.PeakRSS)/(1<<20))
		}
		ncpu := "-"
		if x.NATS != nil {
			ncpu = fmtUs(time.Duration(x.NATS.CPUPerRequest))
		}
		fmt.Fprintf(tw, "%s\t%.0f\t%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\t%s\t\n",
			x.Target, x.Throughput, x.Latency.P50, x.Latency.P90, x.Latency.P99, x.Latency.P999, x.Latency.Max,
			x.ErrorCount(), verdict, cpu, cores, rss, ncpu)
	}
	if c := r.Ceiling; c != nil {
		ncpu := "-"
		if c.NATS != nil {
			ncpu = fmtUs(time.Duration(c.NATS.CPUPerRequest))
		}
		fmt.Fprintf(tw, "js pub sync (ceiling)\t%.0f\t%s\t%s\t%s\t%s\t%s\t%d\t-\t-\t-\t-\t%s\t\n",
			c.Throughput, c.Latency.P50, c.Latency.P90, c.Latency.P99, c.Latency.P999, c.Latency.Max, c.Errors, ncpu)
	}
	tw.Flush()
	if r.Ratio != nil {
		fmt.Fprintf(w, "\nkreabus / baseline: throughput ×%.2f, p50 ×%.2f, p99 ×%.2f, p99.9 ×%.2f\n",
			r.Ratio.Throughput, r.Ratio.P50, r.Ratio.P99, r.Ratio.P999)
	}
	if c := r.Ceiling; c != nil {
		if k := best(r.Runs, TargetKreabus); k != nil && c.Throughput > 0 {
			fmt.Fprintf(w, "kreabus / ceiling: ×%.2f of JetStream sync publish at the same concurrency and size\n", k.Throughput/c.Throughput)
		}
		if b := best(r.Runs, TargetBaseline); b != nil && c.Throughput > 0 {
			fmt.Fprintf(w, "baseline / ceiling: ×%.2f\n", b.Throughput/c.Throughput)
		}
	}
	if len(r.E2E) > 0 {
		fmt.Fprintln(w)
		for _, e := range r.E2E {
			e.WriteText(w)
			if e.Load.Check != nil {
				e.Load.Check.WriteText(w)
			}
		}
	}
	fmt.Fprintln(w, "\ndetails:")
	for _, x := range r.Runs {
		x.WriteText(w)
	}
	if r.Ceiling != nil {
		r.Ceiling.WriteText(w)
		if !NATSCLIAvailable() {
			fmt.Fprintln(w, "  (natscli not on PATH: go install github.com/nats-io/natscli/nats@v0.5.0, then run the command above against a server started the same way)")
		}
	}
	if r.Pass {
		fmt.Fprintln(w, "\nPASS")
	} else {
		fmt.Fprintln(w, "\nFAIL")
	}
}

// ErrFailed is returned by the command when a check failed.
var ErrFailed = errors.New("loadgen: check FAILED")
