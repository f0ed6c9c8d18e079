// Command kreabus runs the whole pipeline in one process, for a laptop: an
// embedded JetStream server, the Krea API simulator, the bridge, the
// submitter and the mirror. It publishes a few sample requests, prints every job event as
// it arrives, and keeps serving until Ctrl-C (or, with --exit, until the
// samples are done).
//
//	go run ./cmd/kreabus --samples 3
//
// Production runs use cmd/bridge, cmd/submitter and cmd/mirror against a
// real NATS and the real Krea API. For operators, the subcommands status, job and cancel
// ask the kreabus NATS service (run by the submitter) over NATS:
//
//	kreabus status <request_id>
//	kreabus job <job_id>
//	kreabus cancel <job_id|request_id>
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/kreabus/kreabus/internal/local"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 {
		switch args[0] {
		case "status", "job", "cancel":
			return runOps(ctx, args[0], args[1:], nil, stdout, stderr)
		}
	}
	return runLocal(ctx, args, stdout, stderr)
}

// runLocal runs the whole pipeline locally (no subcommand).
func runLocal(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var o local.Options
	var logLevel string
	fs := flag.NewFlagSet("kreabus", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.DataDir, "data", local.DefaultDataDir, "folder for the embedded JetStream store and the local webhook secret")
	fs.IntVar(&o.NATSPort, "nats-port", local.DefaultNATSPort, "port of the embedded NATS server (-1: any free port)")
	fs.StringVar(&o.Listen, "listen", local.DefaultListen, "bridge webhook listener")
	fs.IntVar(&o.Samples, "samples", local.DefaultSamples, "sample requests to publish at start")
	fs.BoolVar(&o.Exit, "exit", false, "exit once the sample requests have ended")
	fs.DurationVar(&o.JobTime, "job-time", 2*time.Second, "how long a simulated Krea job takes")
	fs.StringVar(&logLevel, "log-level", "warn", "services' log level (debug, info, warn, error)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(logLevel)); err != nil {
		fmt.Fprintf(stderr, "kreabus: --log-level: %q is not a level\n", logLevel)
		return 2
	}
	o.Log = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: lvl}))
	o.Out = stdout

	p, err := local.Start(ctx, o)
	if err != nil {
		fmt.Fprintln(stderr, "kreabus:", err)
		return 1
	}
	defer p.Close()
	p.Printf("kreabus is running: NATS %s, bridge http://%s, Krea simulator %s, data in %s\n",
		p.NATSURL(), p.BridgeAddr(), p.Simulator().URL, o.DataDir)

	if o.Samples > 0 {
		if _, err := p.PublishSamples(ctx, o.Samples); err != nil {
			fmt.Fprintln(stderr, "kreabus: publish samples:", err)
			return 1
		}
	}
	if o.Exit {
		select {
		case <-p.Done():
			p.Printf("all sample requests ended; stopping\n")
			return 0
		case <-time.After(local.SampleTimeout):
			fmt.Fprintln(stderr, "kreabus: sample requests did not end in time")
			return 1
		case <-ctx.Done():
			return 0
		}
	}
	p.Printf(`
Publish your own request with the nats CLI:
  nats --server %s pub krea.requests.image -H Nats-Msg-Id:my-req-1 \
    '{"request_id":"my-req-1","path":"/generate/image/bfl/flux-1-dev","input":{"prompt":"a red fox"}}'
Watch every stored event, each once, with headers:
  nats --server %s sub 'kreabus.events.>'
Get a result (object names are on krea.jobs.mirrored):
  nats --server %s object get KREA_RESULTS <job_id>/0.png
Ask kreabus about a request:
  go run ./cmd/kreabus status my-req-1 --nats-url %s
Ctrl-C stops kreabus.
`, p.NATSURL(), p.NATSURL(), p.NATSURL(), p.NATSURL())
	<-ctx.Done()
	p.Printf("stopping\n")
	return 0
}
