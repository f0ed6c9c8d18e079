// Command submitter takes generation requests off the KREA_REQUESTS stream,
// submits each to the Krea API once, with a webhook URL the bridge accepts,
// and publishes the outcome to krea.jobs.submitted or krea.jobs.rejected.
//
// Settings come from flags, environment variables and an optional YAML file
// (--config / KREABUS_CONFIG); `submitter -h` lists them. A missing or bad
// setting stops it at start with one line naming the setting (exit 2).
// SIGTERM or SIGINT turns /readyz to 503, stops taking requests, finishes
// the API calls in flight (publishing their events and acking them), drains
// the NATS connection and exits 0.
package main

import (
	"context"
	"os"

	"github.com/kreabus/kreabus/internal/program"
	"github.com/kreabus/kreabus/internal/submitterd"
)

func main() {
	program.Exec(func(ctx context.Context) int { return submitterd.Main(ctx, os.Args[1:], nil, os.Stderr) })
}
