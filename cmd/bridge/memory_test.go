package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kreabus/kreabus/internal/natstest"
	"github.com/kreabus/kreabus/pkg/events"
)

// k8sMemoryLimit is the bridge container's memory limit in
// k8s/base/bridge-deployment.yaml (128Mi), which also sets GOMEMLIMIT to it.
const k8sMemoryLimit = 128 << 20

// TestMemoryBoundedUnderLoad runs the bridge as a process with its
// default settings and the environment of its k8s manifest, opens 3000
// idle connections, then sends 1000 webhooks of 1 MiB at once, each with
// a valid token of its own: its peak RSS (VmHWM) stays under the
// container's limit, every 200 is a stored event, and it still serves.
func TestMemoryBoundedUnderLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("sends 1 GiB")
	}
	if _, err := os.Stat("/proc/self/status"); err != nil {
		t.Skip("needs /proc to read the peak RSS")
	}
	srv := natstest.RunServer(t)
	const secret = "memory-test-secret-0123456789abcdef0123"
	bridgeBinary(t)
	listen, adminAddr := freeAddr(t), freeAddr(t)
	cmd, out := command(t,
		"NATS_URL="+srv.ClientURL(),
		"KREABUS_WEBHOOK_SECRET="+secret,
		"KREABUS_LISTEN="+listen,
		"KREABUS_ADMIN_LISTEN="+adminAddr,
		"KREABUS_LOG_LEVEL=error",
		"GOMEMLIMIT="+strconv.Itoa(k8sMemoryLimit),
	)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("bridge output:\n%s", out.String())
		}
	})
	waitReady(t, adminAddr)

	// 3000 idle connections: at most KREABUS_MAX_CONNS (1024) are kept.
	var idle []net.Conn
	for range 3000 {
		c, err := net.Dial("tcp", listen)
		if err != nil {
			t.Fatalf("dial: %v", err)
		}
		idle = append(idle, c)
	}
	natstest.CheckFor(t, 20*time.Second, 50*time.Millisecond, func() error {
		if v := metric(t, adminAddr, "kreabus_bridge_connections_refused_total"); v < 3000-1024 {
			return fmt.Errorf("%v connections refused", v)
		}
		return nil
	})
	for _, c := range idle {
		_ = c.Close()
	}
	natstest.CheckFor(t, 20*time.Second, 50*time.Millisecond, func() error {
		if v := metric(t, adminAddr, "kreabus_bridge_connections_open"); v != 0 {
			return fmt.Errorf("%v connections open", v)
		}
		return nil
	})

	// 1000 webhooks of 1 MiB at once, sharing one padding buffer here.
	const n, size = 1000, 1 << 20
	tz, _ := events.NewTokenizer(secret, "")
	pad := bytes.Repeat([]byte("p"), size)
	client := &http.Client{Timeout: 60 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: -1}}
	defer client.CloseIdleConnections()
	var (
		mu     sync.Mutex
		codes  = map[int]int{}
		stored = map[string]bool{} // job ids answered 200
		failed int
		wg     sync.WaitGroup
		start  = make(chan struct{})
	)
	for i := range n {
		wg.Go(func() {
			jobID := uuid.NewString()
			head := fmt.Sprintf(`{"job_id":%q,"status":"completed","pad":"`, jobID)
			const tail = `"}`
			padLen := size - len(head) - len(tail)
			body := io.MultiReader(strings.NewReader(head), bytes.NewReader(pad[:padLen]), strings.NewReader(tail))
			req, _ := http.NewRequest(http.MethodPost, "http://"+listen+events.WebhookPathPrefix+tz.Mint(fmt.Sprintf("mem-%d", i)), body)
			req.ContentLength = size
			req.Header.Set("Content-Type", "application/json")
			<-start
			res, err := client.Do(req)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				failed++ // the bridge closed a shed connection while the body was being sent
				return
			}
			_, _ = io.Copy(io.Discard, res.Body)
			_ = res.Body.Close()
			codes[res.StatusCode]++
			if res.StatusCode == http.StatusOK {
				stored[jobID] = true
			}
		})
	}
	began := time.Now()
	close(start)
	wg.Wait()
	took := time.Since(began)

	peak := vmHWM(t, cmd.Process.Pid)
	t.Logf("%d webhooks of 1 MiB in %v: answers %v, %d connections cut while sending; bridge peak RSS %.1f MiB",
		n, took.Round(time.Millisecond), codes, failed, float64(peak)/(1<<20))
	if peak >= k8sMemoryLimit {
		t.Errorf("peak RSS %d bytes, over the k8s limit of %d", peak, k8sMemoryLimit)
	}
	if codes[http.StatusOK]+codes[http.StatusServiceUnavailable] == 0 {
		t.Errorf("no webhook was taken in (read and published): %v", codes)
	}
	// 503: JetStream (in this test process, slow under -race) did not
	// acknowledge within the publish timeout; the sender retries.
	for code := range codes {
		if code != http.StatusOK && code != http.StatusTooManyRequests && code != http.StatusServiceUnavailable {
			t.Errorf("answer %d: only 200, 429 and 503 expected", code)
		}
	}

	// Every 200 is a stored event.
	js, err := jetstream.New(natstest.Connect(t, srv.ClientURL()))
	if err != nil {
		t.Fatal(err)
	}
	// Reading back 1 MiB messages from the race-instrumented server, still
	// storing the last of the storm, takes seconds under CI's load.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	st, err := js.Stream(ctx, events.StreamJobs)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && seq > 0; seq++ {
		m, err := st.GetMsg(ctx, seq)
		if err != nil {
			t.Fatal(err)
		}
		delete(stored, m.Header.Get(events.HeaderJobID))
	}
	if len(stored) > 0 {
		t.Errorf("%d webhooks answered 200 are not stored", len(stored))
	}

	// The storm is over: the bridge serves, and holds no body bytes.
	natstest.CheckFor(t, 20*time.Second, 50*time.Millisecond, func() error {
		if v := metric(t, adminAddr, "kreabus_bridge_body_bytes_in_flight"); v != 0 {
			return fmt.Errorf("%v body bytes in flight", v)
		}
		return nil
	})
	after := fmt.Sprintf(`{"job_id":%q,"status":"completed"}`, uuid.NewString())
	natstest.CheckFor(t, 30*time.Second, 100*time.Millisecond, func() error {
		res, err := client.Post("http://"+listen+events.WebhookPathPrefix+tz.Mint("after"), "application/json", strings.NewReader(after))
		if err != nil {
			return err
		}
		_ = res.Body.Close()
		if res.StatusCode != http.StatusOK {
			return fmt.Errorf("after the storm: %d", res.StatusCode)
		}
		return nil
	})
}

// waitReady waits for the program's /readyz to answer 200.
func waitReady(t *testing.T, adminAddr string) {
	t.Helper()
	client := &http.Client{Timeout: 5 * time.Second}
	natstest.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		res, err := client.Get("http://" + adminAddr + "/readyz")
		if err != nil {
			return err
		}
		_ = res.Body.Close()
		if res.StatusCode != http.StatusOK {
			return fmt.Errorf("readyz %d", res.StatusCode)
		}
		return nil
	})
}

// metric reads one unlabelled metric from the program's /metrics; a
// metric that is not there fails the test.
func metric(t *testing.T, adminAddr, name string) float64 {
	t.Helper()
	res, err := http.Get("http://" + adminAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	sc := bufio.NewScanner(res.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			return f
		}
	}
	t.Fatalf("metric %s not exposed", name)
	return 0
}

// vmHWM is a process's peak resident set size, in bytes.
func vmHWM(t *testing.T, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				t.Fatalf("VmHWM %q: %v", v, err)
			}
			return kb << 10
		}
	}
	t.Fatalf("no VmHWM in /proc/%d/status", pid)
	return 0
}
