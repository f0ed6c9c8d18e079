package main

import (
	"context"
	"encoding/json"
	"log"
	"os"
	"os/signal"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kreabus/kreabus/pkg/events"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, os.Getenv("NATS_URL")); err != nil {
		log.Fatal(err)
	}
}

// run publishes one generation request and returns once its job has ended.
func run(ctx context.Context, url string) error {
	nc, err := nats.Connect(url)
	if err != nil {
		return err
	}
	defer nc.Drain()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}

	req, err := events.NewRequest("/generate/image/bfl/flux-1-dev",
		map[string]any{"prompt": "a serene mountain landscape at sunset", "width": 1024, "height": 576})
	if err != nil {
		return err
	}
	req.Metadata = json.RawMessage(`{"user":"42"}`)

	// A durable consumer of finished jobs, made before publishing so no
	// event is missed. DeliverNew: a new durable starts with the events
	// stored from now on (the default, DeliverAll, first replays every
	// event KREA_JOBS still holds). An operator may make the consumer
	// instead: then bind to it with js.Consumer.
	cfg, err := events.JobsConsumerConfig("thumbnailer",
		events.WithStatuses(events.StatusCompleted, events.StatusFailed, events.StatusCancelled, events.StatusRejected),
		events.WithDeliverPolicy(jetstream.DeliverNewPolicy))
	if err != nil {
		return err
	}
	cons, err := js.CreateOrUpdateConsumer(ctx, events.StreamJobs, cfg)
	if err != nil {
		return err
	}

	// Acked when the handler returns nil, redelivered with backoff
	// otherwise.
	ended := make(chan struct{}, 1)
	c, err := events.ConsumeJobs(nc, cons, func(ctx context.Context, ev *events.Event) error {
		if ev.RequestID != req.RequestID {
			return nil // another request's job
		}
		switch {
		case ev.Status == events.StatusCompleted && ev.Job.Result != nil:
			log.Printf("%s: job %s done: %v", ev.RequestID, ev.JobID, ev.Job.Result.URLs)
		case ev.Status == events.StatusRejected:
			rej, err := ev.Rejection()
			if err != nil {
				return events.Terminate(err) // not a rejection: never will be
			}
			log.Printf("%s: rejected (%s): %s", ev.RequestID, rej.Kind, rej.Reason)
		default:
			log.Printf("%s: job %s %s: %s", ev.RequestID, ev.JobID, ev.Status, ev.Job.FailureReason())
		}
		select {
		case ended <- struct{}{}:
		default:
		}
		return nil
	})
	if err != nil {
		return err
	}
	defer c.Stop()

	// Publish the request: stored once per request_id (Nats-Msg-Id).
	if _, err := events.PublishRequest(ctx, js, req); err != nil {
		return err
	}
	log.Printf("published request %s", req.RequestID)
	select {
	case <-ended:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
