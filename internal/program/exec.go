package program

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

// Exec is a production program's main: it runs run with a context that the
// first SIGTERM or SIGINT cancels (run then drains and returns), restores
// the default handling so a second signal kills at once, and exits with
// run's code.
func Exec(run func(ctx context.Context) int) {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	go func() {
		<-ctx.Done()
		stop() // a second signal kills at once
	}()
	code := run(ctx)
	stop()
	os.Exit(code)
}
