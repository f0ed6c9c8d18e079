// Command imagegen is a small kreabus client: it publishes one image
// generation request (flux-1-dev, with metadata) to NATS and prints the
// events of its job until the job ends or a timeout passes.
//
//	go run ./examples/imagegen -prompt "a red fox in the snow"
//
// It connects to NATS_URL (default nats://127.0.0.1:4222, where
// `go run ./cmd/kreabus` serves), with NATS_CREDS when set. It exits 0 when
// the job completed, 1 when it failed, was cancelled or rejected, or did
// not end in time, and 2 on bad flags.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kreabus/kreabus/pkg/events"
	"github.com/kreabus/kreabus/pkg/krea"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr))
}

func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("imagegen", flag.ContinueOnError)
	fs.SetOutput(stderr)
	prompt := fs.String("prompt", "a serene mountain landscape at sunset", "what to generate")
	path := fs.String("path", "/generate/image/bfl/flux-1-dev", "Krea generation path")
	width := fs.Int("width", 1024, "image width")
	height := fs.Int("height", 576, "image height")
	user := fs.String("user", "42", "user recorded in the request's metadata")
	timeout := fs.Duration("timeout", 5*time.Minute, "give up when the job has not ended after this long")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	// Handlers print from the consumer's goroutine.
	stdout = &lockedWriter{w: stdout}
	fail := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "imagegen: "+format+"\n", a...)
		return 1
	}

	req, err := events.NewRequest(*path, map[string]any{"prompt": *prompt, "width": *width, "height": *height})
	if err != nil {
		return fail("%v", err)
	}
	req.Metadata, _ = json.Marshal(map[string]string{"user": *user, "app": "imagegen"})
	if err := req.Validate(); err != nil {
		fmt.Fprintf(stderr, "imagegen: bad request: %v\n", err)
		return 2
	}

	url := getenv("NATS_URL")
	if url == "" {
		url = nats.DefaultURL
	}
	opts := []nats.Option{nats.Name("kreabus-imagegen")}
	if creds := getenv("NATS_CREDS"); creds != "" {
		opts = append(opts, nats.UserCredentials(creds))
	}
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		return fail("connect to NATS at %s: %v (is the pipeline running? go run ./cmd/kreabus)", url, err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return fail("%v", err)
	}

	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	start := time.Now()
	ended := make(chan krea.Status, 1)

	// Consume before publishing, so that no event of this request can be
	// missed. A one-off program uses an ephemeral consumer that starts with
	// new events; a service would name a durable one and keep it.
	cfg, err := events.JobsConsumerConfig("",
		events.WithDeliverPolicy(jetstream.DeliverNewPolicy),
		events.WithStatuses(events.StatusSubmitted, events.StatusCompleted, events.StatusFailed, events.StatusCancelled, events.StatusRejected))
	if err != nil {
		return fail("%v", err)
	}
	cons, err := js.CreateConsumer(ctx, events.StreamJobs, cfg)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return fail("no %s stream on %s: start the pipeline first (go run ./cmd/kreabus)", events.StreamJobs, url)
	}
	if err != nil {
		return fail("%v", err)
	}
	c, err := events.ConsumeJobs(nc, cons, func(_ context.Context, ev *events.Event) error {
		if ev.RequestID != req.RequestID {
			return nil // someone else's job
		}
		fmt.Fprintln(stdout, describe(ev, time.Since(start)))
		if ev.Status.IsTerminal() || ev.Status == events.StatusRejected {
			select {
			case ended <- ev.Status:
			default:
			}
		}
		return nil
	}, events.WithErrorHandler(func(err error) { fmt.Fprintln(stderr, "imagegen:", err) }))
	if err != nil {
		return fail("%v", err)
	}
	defer c.Stop()

	fmt.Fprintf(stdout, "request %s: %s %q\n", req.RequestID, req.Path, *prompt)
	if _, err := events.PublishRequest(ctx, js, req); err != nil {
		return fail("publish: %v", err)
	}

	select {
	case status := <-ended:
		if status == events.StatusCompleted {
			return 0
		}
		return 1
	case <-ctx.Done():
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return fail("request %s has not ended after %v", req.RequestID, *timeout)
		}
		return fail("interrupted; request %s goes on without us", req.RequestID)
	}
}

// describe is one line about an event: status, request, job, time since the
// request, and the result URLs or the failure reason.
func describe(ev *events.Event, since time.Duration) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%-9s request=%s", ev.Status, ev.RequestID)
	if ev.JobID != "" {
		fmt.Fprintf(&b, " job=%s", ev.JobID)
	}
	fmt.Fprintf(&b, " after=%v", since.Round(time.Millisecond))
	switch {
	case ev.Status == events.StatusCompleted && ev.Job.Result != nil:
		for _, u := range ev.Job.Result.URLs {
			fmt.Fprintf(&b, "\n  %s", u)
		}
		if ev.Job.Result.StyleID != "" {
			fmt.Fprintf(&b, "\n  style %s", ev.Job.Result.StyleID)
		}
	case ev.Reason != "":
		fmt.Fprintf(&b, " reason=%q", ev.Reason)
	case ev.Job.FailureReason() != "":
		fmt.Fprintf(&b, " reason=%q", ev.Job.FailureReason())
	}
	return b.String()
}

// lockedWriter serialises writes.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
