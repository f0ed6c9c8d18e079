// Command kreasim serves the kreatest Krea API simulator on a TCP address,
// for local runs of the whole pipeline and for load or chaos experiments
// without spending Krea credits.
//
//	KREA_API_TOKEN=dev kreasim -listen :8787 -run-time 5s -fail-rate 0.1
//
// Point the submitter at it with KREA_API_URL=http://localhost:8787.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/kreabus/kreabus/pkg/krea/kreatest"
)

// DefaultListen is where kreasim listens unless -listen says otherwise.
const DefaultListen = "127.0.0.1:8787"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Getenv, os.Stderr, nil); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(2)
		}
		fmt.Fprintln(os.Stderr, "kreasim:", err)
		os.Exit(1)
	}
}

// parseConfig turns flags and environment into a simulator configuration.
func parseConfig(args []string, getenv func(string) string, out io.Writer) (kreatest.Config, string, error) {
	var (
		cfg     kreatest.Config
		f       = &cfg.Faults
		listen  string
		retired string
		models  string
	)
	fs := flag.NewFlagSet("kreasim", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.StringVar(&listen, "listen", DefaultListen, "address to serve the simulated API on")
	fs.StringVar(&cfg.Token, "token", "", "API token to accept (default $KREA_API_TOKEN, else kreatest.DefaultToken)")
	fs.DurationVar(&cfg.QueueTime, "queue-time", kreatest.DefaultQueueTime, "time a job stays queued (negative: none)")
	fs.DurationVar(&cfg.RunTime, "run-time", kreatest.DefaultRunTime, "time a job processes (negative: none)")
	fs.DurationVar(&cfg.RunJitter, "run-jitter", 0, "random extra processing time, [0, d)")
	fs.IntVar(&cfg.Concurrency, "concurrency", kreatest.DefaultConcurrency, "jobs queued or processing at once; more are backlogged")
	fs.IntVar(&cfg.MaxBacklog, "max-backlog", kreatest.DefaultMaxBacklog, "backlogged jobs before 429 (negative: no backlog)")
	fs.StringVar(&retired, "retired", "", "comma-separated model paths that answer 410 model_unavailable")
	fs.StringVar(&models, "models", "", "comma-separated model paths that exist (default: any well-formed path)")
	fs.BoolVar(&cfg.NonTerminalWebhooks, "non-terminal-webhooks", false, "also POST a webhook when a job starts processing")
	fs.BoolVar(&cfg.ExtraFields, "extra-fields", false, "add undocumented fields (type, estimated_time) to job objects")
	fs.BoolVar(&cfg.LegacyFailureDetail, "legacy-failure-detail", false, "put failure reasons in result.error instead of error{code,message}")
	fs.IntVar(&cfg.WebhookAttempts, "webhook-attempts", kreatest.DefaultWebhookAttempts, "tries per webhook")
	fs.DurationVar(&cfg.WebhookBackoff, "webhook-backoff", kreatest.DefaultWebhookBackoff, "wait before the second webhook try, doubling")
	fs.DurationVar(&cfg.WebhookTimeout, "webhook-timeout", kreatest.DefaultWebhookTimeout, "timeout of one webhook POST")
	fs.StringVar(&cfg.ResultsURL, "results-url", "", "base of result URLs (default: the address a submission came in on)")
	fs.Int64Var(&cfg.ResultSize, "result-size", 0, "size in bytes of every result file (0: a small PNG or MP4 of about 1 KiB)")
	fs.Uint64Var(&cfg.Seed, "seed", 0, "seed for the fault dice (0: random)")
	fs.Float64Var(&f.Rate429, "rate-429", 0, "probability of answering 429")
	fs.Float64Var(&f.Rate5xx, "rate-5xx", 0, "probability of answering 500/502/503")
	fs.Float64Var(&f.LostAnswerRate, "lost-answer-rate", 0, "probability of creating the job but answering 502")
	fs.DurationVar(&f.RetryAfter, "retry-after", 0, "Retry-After on 429 and 5xx answers (0: none)")
	fs.DurationVar(&f.Latency, "latency", 0, "delay before every answer")
	fs.DurationVar(&f.LatencyJitter, "latency-jitter", 0, "random extra delay, [0, d)")
	fs.BoolVar(&f.CompleteAbandoned, "complete-abandoned", false, "carry out calls whose client gave up during the latency (jobs are still created), as the real API does")
	fs.Float64Var(&f.FailRate, "fail-rate", 0, "probability that a job fails")
	fs.BoolVar(&f.OutOfCredits, "out-of-credits", false, "answer submissions 402")
	fs.Float64Var(&f.DropWebhookRate, "drop-webhook-rate", 0, "probability that a webhook is never sent")
	fs.Float64Var(&f.DuplicateWebhookRate, "duplicate-webhook-rate", 0, "probability that a webhook is sent twice")
	fs.Float64Var(&f.LateWebhookRate, "late-webhook-rate", 0, "probability that a webhook is held back")
	fs.DurationVar(&f.LateWebhookDelay, "late-webhook-delay", kreatest.DefaultLateWebhookDelay, "how long a late webhook is held back")
	fs.BoolVar(&f.ResultNotFound, "result-not-found", false, "answer 404 for every result file")
	fs.DurationVar(&f.ResultLatency, "result-latency", 0, "delay before each result file's answer")
	fs.Int64Var(&f.ResultStallAfter, "result-stall-after", 0, "stop sending a result file after this many bytes (0: never)")
	if err := fs.Parse(args); err != nil {
		return cfg, "", err
	}
	if fs.NArg() > 0 {
		return cfg, "", fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	if cfg.Token == "" {
		cfg.Token = getenv("KREA_API_TOKEN")
	}
	for _, p := range splitList(retired) {
		if cfg.Retired == nil {
			cfg.Retired = map[string]kreatest.Retirement{}
		}
		cfg.Retired[p] = kreatest.Retirement{}
	}
	cfg.Models = splitList(models)
	return cfg, listen, nil
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// run serves until ctx ends. ready, when not nil, receives the address
// actually listened on (useful with port 0).
func run(ctx context.Context, args []string, getenv func(string) string, logw io.Writer, ready chan<- string) error {
	cfg, listen, err := parseConfig(args, getenv, logw)
	if err != nil {
		return err
	}
	logger := log.New(logw, "kreasim: ", log.LstdFlags|log.Lmsgprefix)
	cfg.Logf = logger.Printf
	if cfg.Token == "" {
		// The default is a public test value, so naming where it comes
		// from is no leak; a real token is never printed.
		logger.Printf("no -token or KREA_API_TOKEN: accepting kreatest.DefaultToken")
	}
	sim, err := kreatest.New(cfg)
	if err != nil {
		return err
	}
	defer sim.Close()

	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: sim, ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	logger.Printf("simulating the Krea API on http://%s", ln.Addr())
	if ready != nil {
		ready <- ln.Addr().String()
	}

	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	// Shut the listener down before the simulator so in-flight requests
	// finish against a live simulator.
	err = srv.Shutdown(shutdownCtx)
	<-errc
	return err
}
