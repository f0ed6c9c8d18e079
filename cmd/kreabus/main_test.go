package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
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
