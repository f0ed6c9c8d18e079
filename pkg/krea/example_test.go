package krea_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/kreabus/kreabus/pkg/krea"
	"github.com/kreabus/kreabus/pkg/krea/kreatest"
)

// Submit a generation, then decide what to do with an error by its kind.
func ExampleClient_Submit() {
	sim := kreatest.NewServer(kreatest.Config{Token: "my-token"})
	defer sim.Close()

	c, err := krea.NewClient("my-token", krea.WithBaseURL(sim.URL), krea.WithUserAgent("example"))
	if err != nil {
		panic(err)
	}
	res, err := c.Submit(context.Background(), "/generate/image/bfl/flux-1-dev",
		json.RawMessage(`{"prompt":"a serene mountain landscape at sunset"}`))
	switch {
	case errors.Is(err, krea.ErrRetryable):
		d, _ := krea.RetryAfter(err)
		fmt.Println("try again in", max(d, 5*time.Second))
	case errors.Is(err, krea.ErrModelUnavailable):
		var ae *krea.APIError
		errors.As(err, &ae)
		fmt.Println("model retired, use", ae.Replacement)
	case err != nil:
		fmt.Println("giving up:", err)
	default:
		fmt.Println(res.Job.Status, krea.ValidJobID(res.Job.JobID))
	}
	// Output: queued true
}
