// Package natstest runs real NATS JetStream servers for tests: embedded
// in-process, or as a separate nats-server process that a test can kill and
// restart. It also holds the deadline-bound polling helper tests wait with.
package natstest

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/kreabus/kreabus/pkg/krea/kreatest"
)

// CheckFor calls f every sleep until it returns nil or total has passed,
// then fails the test with f's last error. It is kreatest.CheckFor, the
// one implementation, under the name internal tests use.
func CheckFor(t testing.TB, total, sleep time.Duration, f func() error) {
	t.Helper()
	kreatest.CheckFor(t, total, sleep, f)
}

// Options tune an embedded server.
type Options struct {
	// Port 0 picks a free port (the default); -1 is not accepted here.
	Port int
	// StoreDir defaults to a fresh t.TempDir().
	StoreDir string
	// SyncAlways sets sync_interval: always.
	SyncAlways bool
	// MaxPayload is the server's max_payload; 0 means 8 MiB.
	MaxPayload int32
}

// RunServer starts an embedded JetStream server and shuts it down when the
// test ends.
func RunServer(t testing.TB, o ...Options) *server.Server {
	t.Helper()
	var opt Options
	if len(o) > 0 {
		opt = o[0]
	}
	if opt.StoreDir == "" {
		opt.StoreDir = t.TempDir()
	}
	port := opt.Port
	if port == 0 {
		port = server.RANDOM_PORT
	}
	if opt.MaxPayload == 0 {
		// Tests publish bursts; keep the server from flagging them slow.
		opt.MaxPayload = 8 << 20
	}
	sopts := &server.Options{
		Host:       "127.0.0.1",
		Port:       port,
		NoLog:      true,
		NoSigs:     true,
		JetStream:  true,
		StoreDir:   opt.StoreDir,
		MaxPayload: opt.MaxPayload,
		SyncAlways: opt.SyncAlways,
	}
	s, err := server.NewServer(sopts)
	if err != nil {
		t.Fatalf("nats server: %v", err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats server not ready")
	}
	t.Cleanup(func() {
		s.Shutdown()
		s.WaitForShutdown()
	})
	return s
}

// Connect connects to s and closes the connection when the test ends.
func Connect(t testing.TB, url string) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(url, nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		t.Fatalf("nats connect: %v", err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// ServerBinary builds the nats-server of go.mod once per test binary and
// returns its path, so process tests need nothing installed by hand.
func ServerBinary(t testing.TB) string {
	t.Helper()
	return Binary(t, "github.com/nats-io/nats-server/v2")
}

type built struct {
	once sync.Once
	path string
	err  error
}

var binaries sync.Map // package -> *built

// Binary builds the Go package pkg (an import path, or "." for the test's
// own package) once per test binary into a temporary folder and returns
// the path of the executable, for tests that run a program as a process.
func Binary(t testing.TB, pkg string) string {
	t.Helper()
	v, _ := binaries.LoadOrStore(pkg, &built{})
	b := v.(*built)
	b.once.Do(func() {
		dir, err := os.MkdirTemp("", "kreabus-bin-")
		if err != nil {
			b.err = err
			return
		}
		b.path = filepath.Join(dir, "program")
		if out, err := exec.Command("go", "build", "-o", b.path, pkg).CombinedOutput(); err != nil {
			b.err = fmt.Errorf("go build %s: %v\n%s", pkg, err, out)
		}
	})
	if b.err != nil {
		t.Fatal(b.err)
	}
	return b.path
}

// Process is a nats-server running as a separate process, with a fixed
// port and store so it can be stopped and started again.
type Process struct {
	t        testing.TB
	bin      string
	Port     int
	StoreDir string
	cmd      *exec.Cmd
	waited   chan struct{}
}

// StartProcess builds (once) and starts a JetStream nats-server process on
// a free loopback port; it is killed when the test ends.
func StartProcess(t testing.TB) *Process {
	t.Helper()
	p := &Process{t: t, bin: ServerBinary(t), Port: freePort(t), StoreDir: t.TempDir()}
	p.Start()
	t.Cleanup(func() { p.Stop() })
	return p
}

// URL is the client URL of the server.
func (p *Process) URL() string { return "nats://127.0.0.1:" + strconv.Itoa(p.Port) }

// Start starts the server (again) and waits until it accepts connections.
func (p *Process) Start() {
	p.t.Helper()
	p.cmd = exec.Command(p.bin, "-a", "127.0.0.1", "-p", strconv.Itoa(p.Port), "-js", "-sd", p.StoreDir)
	if err := p.cmd.Start(); err != nil {
		p.t.Fatalf("start nats-server: %v", err)
	}
	p.waited = make(chan struct{})
	cmd, done := p.cmd, p.waited
	go func() { _ = cmd.Wait(); close(done) }()
	CheckFor(p.t, 20*time.Second, 20*time.Millisecond, func() error {
		nc, err := nats.Connect(p.URL(), nats.Timeout(time.Second))
		if err != nil {
			return err
		}
		defer nc.Close()
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_, err = nc.RequestWithContext(ctx, "$JS.API.INFO", nil)
		return err
	})
}

// Stop kills the server (SIGKILL: no graceful shutdown, like a crash).
func (p *Process) Stop() {
	if p.cmd == nil || p.cmd.Process == nil {
		return
	}
	_ = p.cmd.Process.Kill()
	<-p.waited
	p.cmd = nil
}

func freePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}
