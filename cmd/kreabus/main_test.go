package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/kreabus/kreabus/internal/local"
	"github.com/kreabus/kreabus/internal/natstest"
	"github.com/kreabus/kreabus/pkg/events"
)

// TestQuickStart runs the README's first command as a user would, with
// --exit: three samples end (two completed, one failed) and it exits 0.
func TestQuickStart(t *testing.T) {
	var out, errOut bytes.Buffer
	code := run(context.Background(), []string{"--samples", "3", "--exit", "--data", t.TempDir(),
		"--nats-port", "-1", "--listen", "127.0.0.1:0", "--job-time", "200ms"}, &out, &errOut)
	if code != 0 {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, out.String(), errOut.String())
	}
	s := out.String()
	for _, want := range []string{"kreabus is running", "published", "submitted", "completed", "failed", "mirrored", "KREA_RESULTS/", "all sample requests ended"} {
		if !strings.Contains(s, want) {
			t.Errorf("output lacks %q:\n%s", want, s)
		}
	}
}

func TestBadFlags(t *testing.T) {
	var out, errOut bytes.Buffer
	if code := run(context.Background(), []string{"--log-level", "loud"}, &out, &errOut); code != 2 {
		t.Fatalf("exit %d, want 2", code)
	}
	if !strings.Contains(errOut.String(), "--log-level") {
		t.Fatalf("stderr does not name the flag: %s", errOut.String())
	}
}

// TestOperatorCommands: status, job and cancel against a running local
// pipeline's NATS service, with --nats-url before or after the ID.
func TestOperatorCommands(t *testing.T) {
	ctx := context.Background()
	p, err := local.Start(ctx, local.Options{DataDir: t.TempDir(), NATSPort: -1, Listen: "127.0.0.1:0",
		JobTime: 100 * time.Millisecond, Out: io.Discard})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	ids, err := p.PublishSamples(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	<-p.Done()
	cli := func(args ...string) (int, string, string) {
		var out, errOut bytes.Buffer
		code := run(ctx, args, &out, &errOut)
		return code, out.String(), errOut.String()
	}
	var st events.RequestStatus
	natstest.CheckFor(t, 10*time.Second, 50*time.Millisecond, func() error {
		code, out, errOut := cli("status", ids[0], "--nats-url", p.NATSURL())
		if code != 0 {
			return fmt.Errorf("status: exit %d: %s", code, errOut)
		}
		if err := json.Unmarshal([]byte(out), &st); err != nil {
			return err
		}
		if st.State != events.StateTerminal {
			return fmt.Errorf("state %s", st.State)
		}
		return nil
	})
	code, out, errOut := cli("--nats-url", p.NATSURL(), "job", st.JobID)
	if code != 2 || !strings.Contains(errOut, "nats-url") {
		// Flags go after the subcommand: before it, this is the local run's
		// flag set, which has no --nats-url.
		t.Errorf("flags before the subcommand: exit %d %s", code, errOut)
	}
	code, out, errOut = cli("job", "--nats-url", p.NATSURL(), st.JobID)
	if code != 0 || !strings.Contains(out, `"from": "ledger"`) {
		t.Errorf("job: exit %d\n%s%s", code, out, errOut)
	}
	code, _, errOut = cli("cancel", ids[0], "--nats-url", p.NATSURL())
	if code != 1 || !strings.Contains(errOut, "409") || !strings.Contains(errOut, "already finished") {
		t.Errorf("cancel of a finished job: exit %d %s", code, errOut)
	}
	code, _, errOut = cli("status", "nobody", "--nats-url", p.NATSURL())
	if code != 1 || !strings.Contains(errOut, "404") {
		t.Errorf("status of an unknown request: exit %d %s", code, errOut)
	}
	if code, _, errOut = cli("status"); code != 2 || !strings.Contains(errOut, "missing ID") {
		t.Errorf("no ID: exit %d %s", code, errOut)
	}
}
