package main

import (
	"bytes"
	"context"
	"io"
	"log"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/kreabus/kreabus/internal/local"
	"github.com/kreabus/kreabus/internal/natstest"
)

// readmeBlock returns the first fenced block of the given language in the
// repository's README.md that contains marker.
func readmeBlock(t *testing.T, lang, marker string) string {
	t.Helper()
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range regexp.MustCompile("(?s)```"+lang+"\n(.*?)```").FindAllStringSubmatch(string(b), -1) {
		if strings.Contains(m[1], marker) {
			return m[1]
		}
	}
	t.Fatalf("README.md has no %s block with %q", lang, marker)
	return ""
}

// TestREADMEGoSnippet: the README's Go program is this package's main.go,
// to the byte, so what the README shows is what compiles and runs here.
func TestREADMEGoSnippet(t *testing.T) {
	src, err := os.ReadFile("main.go")
	if err != nil {
		t.Fatal(err)
	}
	if got := readmeBlock(t, "go", "package main"); got != string(src) {
		t.Fatalf("README.md's Go block differs from examples/readme/main.go: copy main.go into the README")
	}
}

// startPipeline runs the whole local pipeline (embedded JetStream, the
// Krea simulator, the bridge and the submitter) on free ports.
func startPipeline(t *testing.T) *local.Pipeline {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	p, err := local.Start(ctx, local.Options{DataDir: t.TempDir(), NATSPort: -1, Listen: "127.0.0.1:0",
		JobTime: 500 * time.Millisecond, Out: io.Discard})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	return p
}

// TestREADMEGoProgramRuns runs the README's program against the local
// pipeline: it publishes its request and returns once the job is done.
func TestREADMEGoProgramRuns(t *testing.T) {
	p := startPipeline(t)
	var out bytes.Buffer
	log.SetOutput(&out)
	defer log.SetOutput(os.Stderr)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := run(ctx, p.NATSURL()); err != nil {
		t.Fatalf("run: %v\n%s", err, out.String())
	}
	if !regexp.MustCompile(`published request \S+\n.*: job [0-9a-f-]{36} done: \[https?://`).MatchString(out.String()) {
		t.Errorf("output:\n%s", out.String())
	}
}

// TestREADMENatsRecipe runs the README's nats CLI recipe word for word, in
// the printed order, against the local pipeline, when the nats CLI is
// installed (scripts/install-natscli.sh, which .ci/run calls): every
// command succeeds, the consumer hands out the request's completed event,
// and the follower hears each of the job's events once.
func TestREADMENatsRecipe(t *testing.T) {
	if _, err := exec.LookPath("nats"); err != nil {
		t.Skip("nats CLI not installed: scripts/install-natscli.sh")
	}
	var cmds []string
	for _, line := range strings.Split(readmeBlock(t, "sh", "nats sub 'kreabus.events.>'"), "\n") {
		if strings.HasPrefix(line, "nats ") {
			cmds = append(cmds, line)
		}
	}
	if len(cmds) != 4 || !strings.HasPrefix(cmds[0], "nats sub ") {
		t.Fatalf("recipe: want nats sub, then three commands; got %q", cmds)
	}
	p := startPipeline(t)
	env := append(os.Environ(), "NATS_URL="+p.NATSURL())
	shell := func(line string) *exec.Cmd {
		c := exec.Command("bash", "-c", "exec "+line)
		c.Env = env
		return c
	}

	// The follower runs in its own terminal until Ctrl-C.
	follow := shell(cmds[0])
	var followed natstest.Buffer
	follow.Stdout, follow.Stderr = &followed, &followed
	if err := follow.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = follow.Process.Kill(); _ = follow.Wait() })
	natstest.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		if !strings.Contains(followed.String(), "Subscribing on") {
			return io.ErrNoProgress
		}
		return nil
	})

	var outs []string
	for _, line := range cmds[1:] {
		out, err := shell(line).CombinedOutput()
		if err != nil {
			t.Fatalf("%s: %v\n%s", line, err, out)
		}
		outs = append(outs, string(out))
	}
	if !strings.Contains(outs[1], `Published 118 bytes to "krea.requests.image"`) {
		t.Errorf("nats pub printed:\n%s", outs[1])
	}
	if next := outs[2]; !strings.Contains(next, "krea.jobs.completed") || !strings.Contains(next, "Kreabus-Request-Id: req-1") ||
		!strings.Contains(next, "Acknowledged message") {
		t.Errorf("consumer next printed:\n%s", next)
	}
	natstest.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		if !strings.Contains(followed.String(), "kreabus.events.completed") {
			return io.ErrNoProgress
		}
		return nil
	})
	for _, subj := range []string{"kreabus.events.submitted", "kreabus.events.completed"} {
		if n := strings.Count(followed.String(), `Received on "`+subj+`"`); n != 1 {
			t.Errorf("follower heard %s %d times:\n%s", subj, n, followed.String())
		}
	}
}
