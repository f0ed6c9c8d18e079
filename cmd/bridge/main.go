// Command bridge receives Krea's webhooks and publishes each job to
// krea.jobs.<status> on NATS JetStream, answering 2xx only once stored.
//
// Settings come from flags, environment variables and an optional YAML file
// (--config / KREABUS_CONFIG); `bridge -h` lists them. SIGTERM or SIGINT
// drains in-flight webhooks and the NATS connection, then exits 0.
package main

import (
	"context"
	"os"

	"github.com/kreabus/kreabus/internal/bridged"
	"github.com/kreabus/kreabus/internal/program"
)

func main() {
	program.Exec(func(ctx context.Context) int { return bridged.Main(ctx, os.Args[1:], nil, os.Stderr) })
}
