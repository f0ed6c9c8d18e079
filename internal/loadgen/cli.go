package loadgen

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kreabus/kreabus/internal/baseline"
	"github.com/kreabus/kreabus/internal/ledger/ledgertest"
)

// Main runs the loadgen command line: a sub-command and its flags (see
// cmd/loadgen). It returns the exit code.
func Main(args []string) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	cmd := "run"
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		cmd, args = args[0], args[1:]
	}
	// LOADGEN_CPUPROFILE profiles the load generator itself, to keep its
	// own cost in view on a small machine.
	if path := os.Getenv("LOADGEN_CPUPROFILE"); path != "" {
		os.Unsetenv("LOADGEN_CPUPROFILE") // not for the baseline child
		if f, err := os.Create(path); err == nil && pprof.StartCPUProfile(f) == nil {
			defer pprof.StopCPUProfile()
		}
	}
	var err error
	switch cmd {
	case "run":
		err = runCmd(ctx, args)
	case "compare":
		err = compareCmd(ctx, args)
	case "e2e":
		err = e2eCmd(ctx, args)
	case "ceiling":
		err = ceilingCmd(ctx, args)
	case "baseline":
		err = baselineCmd(ctx, args)
	case "scale":
		err = scaleCmd(ctx, args)
	case "wrkdata":
		err = wrkdataCmd(ctx, args)
	case "feed":
		err = feedCmd(ctx, args)
	case "help", "-h", "--help":
		fmt.Fprintln(os.Stderr, "usage: loadgen [run|compare|e2e|ceiling|baseline|scale|wrkdata|feed] [flags]; loadgen <command> -h for flags")
		return 0
	default:
		err = fmt.Errorf("unknown command %q (run, compare, e2e, ceiling, baseline, scale, wrkdata, feed)", cmd)
	}
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 2
	case errors.Is(err, ErrFailed):
		fmt.Fprintln(os.Stderr, err)
		return 1
	default:
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		return 2
	}
}

func envOr(name, def string) string {
	if v, ok := os.LookupEnv(name); ok && v != "" {
		return v
	}
	return def
}

// loadFlags are the flags shaping the load, shared by run, compare and e2e.
type loadFlags struct {
	c       int
	rate    float64
	d       time.Duration
	n       int
	warmup  time.Duration
	repeat  float64
	failed  float64
	size    int
	timeout time.Duration
	seed    uint64
	jsonOut bool
	secret  string
	natsURL string
}

func (l *loadFlags) register(fs *flag.FlagSet, defWarmup time.Duration, natsFlag bool) {
	fs.IntVar(&l.c, "c", 64, "concurrency: keep-alive connections and workers (closed loop), or the cap on requests in flight (with -rate)")
	fs.Float64Var(&l.rate, "rate", 0, "fixed request rate per second (open loop; latency counted from when each request was due); 0 = closed loop at -c")
	fs.DurationVar(&l.d, "d", 10*time.Second, "measured duration (after -warmup)")
	fs.IntVar(&l.n, "n", 0, "stop after this many measured requests (0: by -d only)")
	fs.DurationVar(&l.warmup, "warmup", defWarmup, "load before measuring (its jobs are checked too)")
	fs.Float64Var(&l.repeat, "repeat", 0.10, "share of requests re-POSTing an already answered job")
	fs.Float64Var(&l.failed, "failed", 0.10, "share of new jobs with status failed (the rest completed)")
	fs.IntVar(&l.size, "size", DefaultBodySize, "webhook body size in bytes (a completed job JSON with result.urls, padded with an unknown field)")
	fs.DurationVar(&l.timeout, "timeout", 10*time.Second, "HTTP request timeout")
	fs.Uint64Var(&l.seed, "seed", 0, "random seed for repeats and status mix (0: random)")
	fs.BoolVar(&l.jsonOut, "json", false, "print the report as JSON on stdout")
	fs.StringVar(&l.secret, "secret", envOr("KREABUS_WEBHOOK_SECRET", ""), "webhook secret (env KREABUS_WEBHOOK_SECRET; compare makes one up when empty)")
	if natsFlag {
		fs.StringVar(&l.natsURL, "nats-url", envOr("NATS_URL", nats.DefaultURL), "NATS server URL(s) for the stream check (env NATS_URL)")
	}
}

func share(v float64) float64 {
	if v <= 0 {
		return -1 // none (0 means default in Config)
	}
	return v
}

func (l *loadFlags) config() Config {
	return Config{
		Secret:      l.secret,
		Concurrency: l.c,
		Rate:        l.rate,
		Duration:    l.d,
		Requests:    l.n,
		Warmup:      l.warmup,
		RepeatShare: share(l.repeat),
		FailedShare: share(l.failed),
		BodySize:    l.size,
		Timeout:     l.timeout,
		Seed:        l.seed,
	}
}

func parse(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	return nil
}

func printJSON(v any) error {
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func connectJS(url string) (*nats.Conn, jetstream.JetStream, error) {
	nc, err := nats.Connect(url, nats.Name("kreabus-loadgen"))
	if err != nil {
		return nil, nil, fmt.Errorf("nats connect %s: %w", url, err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, nil, err
	}
	return nc, js, nil
}

func runCmd(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("loadgen run", flag.ContinueOnError)
	var l loadFlags
	l.register(fs, time.Second, true)
	url := fs.String("url", "http://127.0.0.1:8080", "bridge base URL (webhooks go to <url>/webhooks/krea/<token>)")
	check := fs.Bool("check", true, "check the KREA_JOBS stream afterwards (needs -nats-url)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if l.secret == "" {
		return errors.New("no webhook secret: set -secret or KREABUS_WEBHOOK_SECRET")
	}
	cfg := l.config()
	cfg.URL = *url
	var js jetstream.JetStream
	var from uint64
	if *check {
		nc, j, err := connectJS(l.natsURL)
		if err != nil {
			return err
		}
		defer nc.Close()
		js = j
		if from, err = StartSeq(ctx, js); err != nil {
			return err
		}
	}
	res, err := Run(ctx, cfg)
	if err != nil {
		return err
	}
	rep := res.Report
	rep.Target = *url
	if *check {
		rep.Check = Check(ctx, js, from, res.Jobs)
	}
	if l.jsonOut {
		if err := printJSON(rep); err != nil {
			return err
		}
	} else {
		rep.WriteText(os.Stdout)
		if rep.Passed() {
			fmt.Println("PASS")
		} else {
			fmt.Println("FAIL")
		}
	}
	if !rep.Passed() {
		return ErrFailed
	}
	return nil
}

func compareCmd(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("loadgen compare", flag.ContinueOnError)
	var l loadFlags
	l.register(fs, 2*time.Second, false)
	sync := fs.String("sync", "default", "JetStream sync_interval: default (2 min) or always (fsync every write)")
	cluster := fs.Int("cluster", 1, "nats-server nodes: 1, or 3 for a JetStream cluster on loopback with R3 streams (KREABUS_STREAM_REPLICAS=3)")
	targets := fs.String("targets", "baseline,kreabus", "targets in run order")
	rounds := fs.Int("rounds", 1, "repeat the targets this many times, alternating the order")
	bridgeBin := fs.String("bridge-bin", "", "prebuilt kreabus bridge (default: go build ./cmd/bridge)")
	natsBin := fs.String("nats-bin", "", "prebuilt nats-server (default: go build github.com/nats-io/nats-server/v2 at go.mod's version)")
	baselineMode := fs.String("baseline", "process", "run the baseline as its own process like the bridge (process; CPU and RSS measured) or in this process (inprocess)")
	ceiling := fs.Bool("ceiling", true, "also measure the JetStream sync publish ceiling (nats bench js pub sync equivalent) on a fresh server")
	ceilingDedup := fs.Bool("ceiling-dedup", true, "give every ceiling message a unique Nats-Msg-Id, as the bridges do")
	e2eRate := fs.Float64("e2e-rate", 0, "also measure end-to-end latency (POST → consumer) per target at this fixed rate; 0 = off")
	e2eD := fs.Duration("e2e-d", 10*time.Second, "duration of the end-to-end phase")
	keep := fs.Bool("keep", false, "keep the work directory (logs, stores)")
	jsonOut := fs.String("json-out", "", "also write the JSON report to this file")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *sync != "default" && *sync != "always" {
		return fmt.Errorf("-sync must be default or always, not %q", *sync)
	}
	cfg := CompareConfig{
		Load:         l.config(),
		Targets:      strings.Split(*targets, ","),
		Rounds:       *rounds,
		NATS:         NATSOptions{Nodes: *cluster, SyncAlways: *sync == "always"},
		NATSBin:      *natsBin,
		BridgeBin:    *bridgeBin,
		Ceiling:      *ceiling,
		CeilingDedup: *ceilingDedup,
		E2ERate:      *e2eRate,
		E2EDuration:  *e2eD,
		KeepWorkDir:  *keep,
		Progress:     os.Stderr,
	}
	switch *baselineMode {
	case "process":
		self, err := os.Executable()
		if err != nil {
			return err
		}
		cfg.BaselineCmd = []string{self, "baseline"}
	case "inprocess":
	default:
		return fmt.Errorf("-baseline must be process or inprocess, not %q", *baselineMode)
	}
	rep, err := Compare(ctx, cfg)
	if err != nil {
		if rep != nil && len(rep.Runs) > 0 {
			rep.WriteText(os.Stderr)
		}
		return err
	}
	if *jsonOut != "" {
		b, err := json.MarshalIndent(rep, "", "  ")
		if err != nil {
			return err
		}
		if err := os.WriteFile(*jsonOut, append(b, '\n'), 0o644); err != nil {
			return err
		}
	}
	if l.jsonOut {
		if err := printJSON(rep); err != nil {
			return err
		}
	} else {
		rep.WriteText(os.Stdout)
	}
	if !rep.Pass {
		return ErrFailed
	}
	return nil
}

func e2eCmd(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("loadgen e2e", flag.ContinueOnError)
	var l loadFlags
	l.register(fs, time.Second, true)
	url := fs.String("url", "http://127.0.0.1:8080", "bridge base URL")
	drain := fs.Duration("drain", 10*time.Second, "how long to wait for the last events")
	if err := parse(fs, args); err != nil {
		return err
	}
	if l.secret == "" {
		return errors.New("no webhook secret: set -secret or KREABUS_WEBHOOK_SECRET")
	}
	if l.rate <= 0 {
		l.rate = 500
	}
	nc, js, err := connectJS(l.natsURL)
	if err != nil {
		return err
	}
	defer nc.Close()
	from, err := StartSeq(ctx, js)
	if err != nil {
		return err
	}
	cfg := l.config()
	cfg.URL = *url
	rep, err := E2E(ctx, js, cfg, *drain)
	if err != nil {
		return err
	}
	rep.Target = *url
	rep.Load.Check = Check(ctx, js, from, rep.Jobs)
	if l.jsonOut {
		if err := printJSON(rep); err != nil {
			return err
		}
	} else {
		rep.WriteText(os.Stdout)
		rep.Load.Check.WriteText(os.Stdout)
	}
	if !rep.Load.Passed() || rep.Received < rep.Expected {
		return ErrFailed
	}
	return nil
}

func ceilingCmd(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("loadgen ceiling", flag.ContinueOnError)
	natsURL := fs.String("nats-url", envOr("NATS_URL", nats.DefaultURL), "NATS server URL(s) (env NATS_URL)")
	c := fs.Int("c", 64, "clients: connections, each with one synchronous publish in flight")
	d := fs.Duration("d", 10*time.Second, "measured duration")
	warmup := fs.Duration("warmup", 2*time.Second, "publishing before measuring")
	size := fs.Int("size", DefaultBodySize, "message size in bytes")
	replicas := fs.Int("replicas", 1, "replicas of the benchmark stream")
	dedup := fs.Bool("dedup", true, "unique Nats-Msg-Id on every message")
	jsonOut := fs.Bool("json", false, "JSON output")
	if err := parse(fs, args); err != nil {
		return err
	}
	rep, err := Ceiling(ctx, CeilingConfig{
		URL: *natsURL, Clients: *c, Duration: *d, Warmup: *warmup, Size: *size, Replicas: *replicas, Dedup: *dedup,
	})
	if err != nil {
		return err
	}
	if *jsonOut {
		return printJSON(rep)
	}
	fmt.Printf("load average %s\n", LoadAverage())
	rep.WriteText(os.Stdout)
	return nil
}

func scaleCmd(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("loadgen scale", flag.ContinueOnError)
	jobs := fs.String("jobs", "10000", "comma-separated ledger sizes to fill and measure, one fresh nats-server each")
	open := fs.Int("open", 10, "jobs still running and overdue for a poll, besides the settled ones")
	rate := fs.Float64("rate", 500, "webhook probe rate per second")
	probe := fs.Duration("probe", 10*time.Second, "webhook probe duration")
	rounds := fs.Int("rounds", 20, "idle poll rounds (1 s each) the submitter's CPU is measured over")
	workDir := fs.String("workdir", "", "where servers keep their stores (default: a temporary folder, removed afterwards)")
	jsonOut := fs.Bool("json", false, "JSON output")
	if err := parse(fs, args); err != nil {
		return err
	}
	dir := *workDir
	if dir == "" {
		d, err := os.MkdirTemp("", "kreabus-scale-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(d)
		dir = d
	}
	cfg := ScaleConfig{WorkDir: dir, Open: *open, Rate: *rate, Probe: *probe, Rounds: *rounds,
		Logf: func(format string, a ...any) {
			fmt.Fprintf(os.Stderr, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, a...)...)
		}}
	var err error
	if cfg.NATSBin, err = BuildNATSServer(ctx, dir); err != nil {
		return err
	}
	for name, pkg := range map[string]*string{"./cmd/bridge": &cfg.BridgeBin, "./cmd/submitter": &cfg.SubmitterBin, "./cmd/kreasim": &cfg.KreasimBin} {
		if *pkg, err = GoBuild(ctx, dir, strings.TrimPrefix(name, "./cmd/"), name); err != nil {
			return err
		}
	}
	var reps []*ScaleReport
	for _, f := range strings.Split(*jobs, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 0 {
			return fmt.Errorf("-jobs: %q is not a count", f)
		}
		cfg.Jobs = n
		rep, err := Scale(ctx, cfg)
		if err != nil {
			return err
		}
		reps = append(reps, rep)
	}
	if *jsonOut {
		return printJSON(reps)
	}
	fmt.Printf("load average %s\n", LoadAverage())
	fmt.Println("| jobs in the ledger | fill | ledger msgs | store on disk | bridge ready | bridge RSS ready / peak | webhook p50 / p99 (rate) | submitter first poll / all due | CPU per idle round | submitter peak RSS | nats RSS peak / at the end |")
	fmt.Println("|---|---|---|---|---|---|---|---|---|---|---|")
	for _, r := range reps {
		fmt.Printf("| %d | %.0f s | %d | %.0f MiB | %v | %.1f / %.1f MiB | %v / %v (%.0f/s) | %v / %v | %v | %.1f MiB | %.0f / %.0f MiB |\n",
			r.Jobs, r.FillSeconds, r.LedgerMsgs, float64(r.StoreDiskBytes)/(1<<20), time.Duration(r.BridgeReady).Round(time.Millisecond),
			float64(r.BridgeRSSReady)/(1<<20), float64(r.BridgeRSSPeak)/(1<<20),
			time.Duration(r.Webhook.P50).Round(10*time.Microsecond), time.Duration(r.Webhook.P99).Round(10*time.Microsecond), r.WebhookRate,
			time.Duration(r.FirstPoll).Round(time.Millisecond), time.Duration(r.AllDuePolled).Round(time.Millisecond),
			time.Duration(r.CPUPerRound).Round(10*time.Microsecond), float64(r.SubmitterRSS)/(1<<20), float64(r.NATSRSS)/(1<<20), float64(r.NATSRSSEnd)/(1<<20))
	}
	for _, r := range reps {
		fmt.Printf("jobs %d: KREA_JOBS %.0f bytes per event; ledger %.0f bytes per job in the stream, %.0f on disk\n",
			r.Jobs, r.EventBytes, float64(r.LedgerBytes)/float64(max(r.Jobs+r.Open, 1)), float64(r.StoreDiskBytes)/float64(max(r.Jobs+r.Open, 1)))
	}
	return nil
}

func wrkdataCmd(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("loadgen wrkdata", flag.ContinueOnError)
	n := fs.Int("n", 300_000, "requests to write, one distinct job each")
	out := fs.String("out", "wrk-data.txt", "file to write: one \"<path> <body>\" line per request")
	secret := fs.String("secret", envOr("KREABUS_WEBHOOK_SECRET", ""), "webhook secret (env KREABUS_WEBHOOK_SECRET)")
	size := fs.Int("size", DefaultBodySize, "body size in bytes")
	known := fs.String("known", "", "NATS URL: also record the jobs in the job ledger there, as running jobs the submitter made (production's shape)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *secret == "" {
		return errors.New("no webhook secret: set -secret or KREABUS_WEBHOOK_SECRET")
	}
	if *known != "" {
		js, closeNATS, err := ledgerWriter(*known)
		if err != nil {
			return err
		}
		defer closeNATS()
		if _, err := ledgertest.Fill(ctx, js, 0, *n, nil); err != nil {
			return err
		}
	}
	return WriteWrkData(*out, *secret, *n, *size)
}

func feedCmd(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("loadgen feed", flag.ContinueOnError)
	natsURL := fs.String("nats-url", envOr("NATS_URL", nats.DefaultURL), "NATS server URL(s) (env NATS_URL)")
	from := fs.Int("from", 0, "first job (line of the wrkdata file) to record")
	lead := fs.Int("lead", 5000, "jobs recorded ahead of each region's furthest webhook stored")
	regions := fs.Int("regions", 1, "regions of the file sent in order side by side (wrk threads)")
	span := fs.Int("span", 0, "lines per region (with -regions > 1)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *regions > 1 && *span <= 0 {
		return errors.New("loadgen feed: -regions needs -span")
	}
	js, closeNATS, err := ledgerWriter(*natsURL)
	if err != nil {
		return err
	}
	defer closeNATS()
	return ledgertest.Feed(ctx, js, ledgertest.FeedRegions(*from, *regions, *span), *lead)
}

// ledgerWriter connects for writing many ledger records asynchronously.
func ledgerWriter(url string) (jetstream.JetStream, func(), error) {
	nc, err := nats.Connect(url)
	if err != nil {
		return nil, nil, err
	}
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(8192))
	if err != nil {
		nc.Close()
		return nil, nil, err
	}
	return js, nc.Close, nil
}

func baselineCmd(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("loadgen baseline", flag.ContinueOnError)
	listen := fs.String("listen", ":8081", "webhook listen address")
	natsURL := fs.String("nats-url", envOr("NATS_URL", nats.DefaultURL), "NATS server URL(s) (env NATS_URL)")
	secret := fs.String("secret", envOr("KREABUS_WEBHOOK_SECRET", ""), "webhook secret (env KREABUS_WEBHOOK_SECRET)")
	replicas := fs.Int("replicas", 1, "replicas of KREA_JOBS when created")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *secret == "" {
		return errors.New("no webhook secret: set -secret or KREABUS_WEBHOOK_SECRET")
	}
	b, err := baseline.New(ctx, baseline.Config{NATSURL: *natsURL, Secret: *secret, Replicas: *replicas})
	if err != nil {
		return err
	}
	defer b.Close()
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "baseline bridge on %s\n", ln.Addr())
	return baseline.Serve(ctx, ln, b)
}
