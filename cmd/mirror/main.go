// Command mirror copies the results of completed Krea jobs (the URLs of
// krea.jobs.completed events) into a JetStream Object Store bucket and
// publishes one krea.jobs.mirrored event per job listing the objects, so
// consumers get images and videos over NATS. Replicas share one durable
// consumer.
//
// Settings come from flags, environment variables and an optional YAML file
// (--config / KREABUS_CONFIG); `mirror -h` lists them. SIGTERM or SIGINT
// lets the copies in flight finish, drains NATS, then exits 0.
package main

import (
	"context"
	"os"

	"github.com/kreabus/kreabus/internal/mirrord"
	"github.com/kreabus/kreabus/internal/program"
)

func main() {
	program.Exec(func(ctx context.Context) int { return mirrord.Main(ctx, os.Args[1:], nil, os.Stderr) })
}
