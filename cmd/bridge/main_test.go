package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/kreabus/kreabus/internal/natstest"
	"github.com/kreabus/kreabus/pkg/events"
)

// bridgeBinary builds this command once per test run.
func bridgeBinary(t *testing.T) string { return natstest.Binary(t, ".") }

// command runs the bridge with only the given environment (and PATH), so
// the machine's own settings do not leak in.
func command(t *testing.T, env ...string) (*exec.Cmd, *natstest.Buffer) {
	cmd := exec.Command(bridgeBinary(t))
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir()}, env...)
	out := &natstest.Buffer{}
	cmd.Stdout, cmd.Stderr = out, out
	return cmd, out
}

func TestMissingSecret(t *testing.T) {
	cmd, out := command(t, "NATS_URL=nats://127.0.0.1:1")
	err := cmd.Run()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 2 {
		t.Fatalf("exit: %v, want code 2", err)
	}
	got := out.String()
	if strings.Count(got, "\n") != 1 || !strings.Contains(got, "KREABUS_WEBHOOK_SECRET") {
		t.Fatalf("output %q: want one line naming KREABUS_WEBHOOK_SECRET", got)
	}
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// TestSIGTERM runs the bridge as a process: it becomes ready, stores a
// webhook, and on SIGTERM drains and exits 0 well within 10 s.
func TestSIGTERM(t *testing.T) {
	srv := natstest.RunServer(t)
	const secret = "process-test-secret-0123456789abcdef0123"
	bridgeBinary(t) // build first: ports picked before a long build may be taken meanwhile
	listen, adminAddr := freeAddr(t), freeAddr(t)
	cmd, out := command(t,
		"NATS_URL="+srv.ClientURL(),
		"KREABUS_WEBHOOK_SECRET="+secret,
		"KREABUS_LISTEN="+listen,
		"KREABUS_ADMIN_LISTEN="+adminAddr,
		"KREABUS_LOG_FORMAT=text",
	)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		if t.Failed() {
			_ = cmd.Process.Kill()
			t.Logf("bridge output:\n%s", out.String())
		}
	}()

	client := &http.Client{Timeout: 5 * time.Second}
	natstest.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		res, err := client.Get("http://" + adminAddr + "/readyz")
		if err != nil {
			return err
		}
		res.Body.Close()
		if res.StatusCode != http.StatusOK {
			return fmt.Errorf("readyz %d", res.StatusCode)
		}
		return nil
	})

	tz, _ := events.NewTokenizer(secret, "")
	body := fmt.Sprintf(`{"job_id":%q,"status":"completed","result":{"urls":[]}}`, uuid.NewString())
	res, err := client.Post("http://"+listen+events.WebhookPathPrefix+tz.Mint("proc-1"), "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != http.StatusOK {
		t.Fatalf("webhook: %d %s", res.StatusCode, b)
	}

	start := time.Now()
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("exit: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("still running 10 s after SIGTERM")
	}
	t.Logf("exited %v after SIGTERM", time.Since(start).Round(time.Millisecond))
	logs := out.String()
	if !strings.Contains(logs, "bridge stopped") {
		t.Errorf("no clean stop logged")
	}
	if strings.Contains(logs, secret) {
		t.Errorf("secret logged")
	}
}
