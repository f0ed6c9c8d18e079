package events_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"image"
	"image/png"
	"log"
	"os"
	"os/signal"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kreabus/kreabus/pkg/events"
)

// Publish a generation request. The request ID becomes the message's
// Nats-Msg-Id, so publishing it again (say, after a timeout) stores it once.
func ExamplePublishRequest() {
	nc, err := nats.Connect(nats.DefaultURL)
	if err != nil {
		log.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		log.Fatal(err)
	}

	req, err := events.NewRequest("/generate/image/bfl/flux-1-dev", map[string]any{
		"prompt": "a serene mountain landscape at sunset",
		"width":  1024,
		"height": 576,
	})
	if err != nil {
		log.Fatal(err)
	}
	req.Metadata = json.RawMessage(`{"user":"42"}`)

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ack, err := events.PublishRequest(ctx, js, req)
	var invalid *events.RequestError
	switch {
	case errors.As(err, &invalid):
		log.Fatalf("request rejected: %s is wrong: %s", invalid.Field, invalid.Reason)
	case err != nil:
		log.Fatal(err) // JetStream did not store it: publish again, same ID
	}
	fmt.Printf("request %s stored as %s #%d\n", req.RequestID, ack.Stream, ack.Sequence)
}

// Consume the completed and failed job events through a durable consumer:
// an event is acknowledged when the handler returns nil and redelivered
// with backoff when it returns an error.
func ExampleConsumeJobs() {
	nc, err := nats.Connect(nats.DefaultURL)
	if err != nil {
		log.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		log.Fatal(err)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()

	// The consumer: created here, or by an operator (then bind to it with
	// js.Consumer). Its filter and ack wait are the consumer's own.
	cfg, err := events.JobsConsumerConfig("thumbnailer",
		events.WithStatuses(events.StatusCompleted, events.StatusFailed))
	if err != nil {
		log.Fatal(err)
	}
	cons, err := js.CreateOrUpdateConsumer(ctx, events.StreamJobs, cfg)
	if err != nil {
		log.Fatal(err)
	}

	c, err := events.ConsumeJobs(nc, cons,
		func(ctx context.Context, ev *events.Event) error {
			if ev.Status == events.StatusFailed {
				fmt.Printf("job %s (request %s) failed: %s\n", ev.JobID, ev.RequestID, ev.Job.FailureReason())
				return nil
			}
			if ev.Job.Result == nil {
				// Retrying cannot help: terminate rather than redeliver.
				return events.Terminate(fmt.Errorf("job %s completed without a result", ev.JobID))
			}
			for _, url := range ev.Job.Result.URLs {
				if err := makeThumbnail(ctx, url); err != nil {
					return err // redelivered after a backoff
				}
				fmt.Printf("job %s (request %s): %s\n", ev.JobID, ev.RequestID, url)
			}
			return nil
		},
		events.WithBackoff(events.Backoff{Min: time.Second, Max: time.Minute}),
	)
	if err != nil {
		log.Fatal(err)
	}
	<-ctx.Done()
	c.Drain()    // the handler in flight finishes, no new event starts
	<-c.Closed() // (Stop would end the handler's context too)
}

func makeThumbnail(ctx context.Context, url string) error { return nil }

// Ensure both kreabus streams exist, as the services do at start-up.
func ExampleEnsureStreams() {
	nc, err := nats.Connect(nats.DefaultURL)
	if err != nil {
		log.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		log.Fatal(err)
	}
	err = events.EnsureStreams(context.Background(), js, events.StreamOptions{DuplicateWindow: time.Hour})
	if errors.Is(err, events.ErrIncompatibleStream) {
		log.Fatalf("an existing stream does not fit kreabus: %v", err)
	}
	if err != nil {
		log.Fatal(err)
	}
}

// A program that calls Krea itself mints webhook URLs the bridge accepts.
func ExampleTokenizer() {
	tk, err := events.NewTokenizer("current-secret", "previous-secret")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(tk.URL("https://hooks.example.com", "req-1"))

	id, err := tk.Verify(tk.Mint("req-1"))
	fmt.Println(id, err)
	_, err = tk.Verify("req-1.forged")
	fmt.Println(err)
	// Output:
	// https://hooks.example.com/webhooks/krea/req-1.DK1s8OYTKh7gePld7giypgY1AUjlVsDfkSlFuwXCFfs
	// req-1 <nil>
	// events: invalid webhook token
}

// DecodeRequest validates a request as the submitter receives it.
func ExampleDecodeRequest() {
	_, err := events.DecodeRequest([]byte(`{"path":"/jobs","input":{}}`))
	fmt.Println(errors.Is(err, events.ErrInvalidRequest), err)

	req, err := events.DecodeRequest([]byte(`{"request_id":"r1","path":"/generate/image/bfl/flux-1-dev","input":{"prompt":"fox"},"metadata":{ "user": "42" }}`))
	fmt.Println(req.RequestID, req.Path, string(req.Metadata), err)
	// Output:
	// true path: "/jobs" is not an allowed Krea generation path
	// r1 /generate/image/bfl/flux-1-dev {"user":"42"} <nil>
}

// Make a thumbnail of every image a job produced, reading the bytes from
// the Object Store: the mirror announces each completed job's copies on
// krea.jobs.mirrored, so the service never speaks HTTP.
func ExampleOpenResult() {
	nc, err := nats.Connect(nats.DefaultURL)
	if err != nil {
		log.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		log.Fatal(err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()

	cfg, err := events.JobsConsumerConfig("thumbnailer", events.WithStatuses(events.StatusMirrored))
	if err != nil {
		log.Fatal(err)
	}
	cons, err := js.CreateOrUpdateConsumer(ctx, events.StreamJobs, cfg)
	if err != nil {
		log.Fatal(err)
	}
	c, err := events.ConsumeJobs(nc, cons,
		func(ctx context.Context, ev *events.Event) error {
			for _, obj := range ev.Objects() {
				if !obj.OK() {
					log.Printf("job %s: %s was not copied: %s", ev.JobID, obj.URL, obj.Error)
					continue
				}
				if obj.ContentType != "image/png" {
					continue
				}
				r, err := events.OpenResult(ctx, js, obj)
				if err != nil {
					return err // redelivered with backoff
				}
				img, err := png.Decode(r) // streams: the digest is checked at the end
				r.Close()
				if err != nil {
					return events.Terminate(err)
				}
				thumb := thumbnail(img, 128)
				out, err := os.Create(ev.JobID + "-thumb.png")
				if err != nil {
					return err
				}
				if err := errors.Join(png.Encode(out, thumb), out.Close()); err != nil {
					return err
				}
				fmt.Printf("job %s: %s (%d bytes) -> %dx%d thumbnail\n",
					ev.JobID, obj.Name, obj.Size, thumb.Bounds().Dx(), thumb.Bounds().Dy())
			}
			return nil
		})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Stop()
	<-ctx.Done()
}

// thumbnail scales img down to at most side pixels wide and high (nearest
// neighbour: enough for a preview).
func thumbnail(img image.Image, side int) image.Image {
	b := img.Bounds()
	scale := max(b.Dx(), b.Dy(), side)
	w, h := max(1, b.Dx()*side/scale), max(1, b.Dy()*side/scale)
	dst := image.NewRGBA(image.Rect(0, 0, w, h))
	for y := range h {
		for x := range w {
			dst.Set(x, y, img.At(b.Min.X+x*b.Dx()/w, b.Min.Y+y*b.Dy()/h))
		}
	}
	return dst
}
