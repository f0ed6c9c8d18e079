package loadgen

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kreabus/kreabus/internal/retry"
	"github.com/kreabus/kreabus/pkg/events"
)

// ModuleRoot returns the directory of the go.mod the current directory
// belongs to (where `go build ./cmd/bridge` must run).
func ModuleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", errors.New("not inside a Go module: run from the kreabus repository")
	}
	return filepath.Dir(mod), nil
}

// GoBuild builds pkg (a package path or ./dir relative to the module root)
// into dir/name and returns the binary's path.
func GoBuild(ctx context.Context, dir, name, pkg string) (string, error) {
	root, err := ModuleRoot()
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, name)
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, pkg)
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build %s: %v\n%s", pkg, err, out)
	}
	return bin, nil
}

// BuildNATSServer builds the nats-server version go.mod requires.
func BuildNATSServer(ctx context.Context, dir string) (string, error) {
	return GoBuild(ctx, dir, "nats-server", "github.com/nats-io/nats-server/v2")
}

// FreePort returns a free TCP port on loopback.
func FreePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// Proc is a child process with its log file.
type Proc struct {
	Name   string
	Cmd    *exec.Cmd
	Log    string
	waited chan struct{}
}

// PID is the process id.
func (p *Proc) PID() int { return p.Cmd.Process.Pid }

// Exited reports whether the process has exited.
func (p *Proc) Exited() bool {
	select {
	case <-p.waited:
		return true
	default:
		return false
	}
}

// StartProc starts bin with args and extra environment, logging to
// dir/name.log.
func StartProc(name, dir, bin string, args, env []string) (*Proc, error) {
	logPath := filepath.Join(dir, name+".log")
	f, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &Proc{Name: name, Cmd: cmd, Log: logPath, waited: make(chan struct{})}
	go func() { _ = cmd.Wait(); f.Close(); close(p.waited) }()
	return p, nil
}

// Stop sends SIGTERM, waits up to grace, then kills.
func (p *Proc) Stop(grace time.Duration) {
	if p == nil || p.Cmd.Process == nil {
		return
	}
	_ = p.Cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.waited:
	case <-time.After(grace):
		_ = p.Cmd.Process.Kill()
		<-p.waited
	}
}

// LogTail returns the end of the process' log, for error messages.
func (p *Proc) LogTail() string {
	b, _ := os.ReadFile(p.Log)
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return string(b)
}

// NATSOptions shape a set of nats-server processes.
type NATSOptions struct {
	// Nodes: 1 for a single server, 3 (or more) for a JetStream cluster on
	// loopback.
	Nodes int
	// SyncAlways writes jetstream { sync_interval: always }: fsync on
	// every write.
	SyncAlways bool
}

// NATS is a running nats-server or cluster.
type NATS struct {
	Procs []*Proc
	URLs  []string
}

// URL is the comma-separated client URL list (for NATS_URL).
func (n *NATS) URL() string { return strings.Join(n.URLs, ",") }

// PIDs of the servers.
func (n *NATS) PIDs() []int {
	pids := make([]int, len(n.Procs))
	for i, p := range n.Procs {
		pids[i] = p.PID()
	}
	return pids
}

// Stop stops every server.
func (n *NATS) Stop() {
	for _, p := range n.Procs {
		p.Stop(5 * time.Second)
	}
}

// StartNATS starts fresh nats-server processes from bin with their stores
// under dir and waits until JetStream answers (with a meta leader, for a
// cluster).
func StartNATS(ctx context.Context, bin, dir string, o NATSOptions) (*NATS, error) {
	if o.Nodes <= 0 {
		o.Nodes = 1
	}
	ports := make([]int, o.Nodes)
	cports := make([]int, o.Nodes)
	for i := range ports {
		var err error
		if ports[i], err = FreePort(); err != nil {
			return nil, err
		}
		if cports[i], err = FreePort(); err != nil {
			return nil, err
		}
	}
	n := &NATS{}
	for i := 0; i < o.Nodes; i++ {
		name := fmt.Sprintf("nats-%d", i+1)
		conf := NATSConf(name, ports[i], filepath.Join(dir, name), o, cports, i)
		confPath := filepath.Join(dir, name+".conf")
		if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
			n.Stop()
			return nil, err
		}
		p, err := StartProc(name, dir, bin, []string{"-c", confPath}, nil)
		if err != nil {
			n.Stop()
			return nil, err
		}
		n.Procs = append(n.Procs, p)
		n.URLs = append(n.URLs, "nats://127.0.0.1:"+strconv.Itoa(ports[i]))
	}
	if err := waitJetStream(ctx, n, o.Nodes); err != nil {
		n.Stop()
		return nil, err
	}
	return n, nil
}

// NATSConf is the configuration file of server i.
func NATSConf(name string, port int, store string, o NATSOptions, clusterPorts []int, i int) string {
	var b strings.Builder
	fmt.Fprintf(&b, "server_name: %s\nlisten: 127.0.0.1:%d\n", name, port)
	fmt.Fprintf(&b, "jetstream {\n  store_dir: %q\n", store)
	if o.SyncAlways {
		b.WriteString("  sync_interval: always\n")
	}
	b.WriteString("}\n")
	if o.Nodes > 1 {
		fmt.Fprintf(&b, "cluster {\n  name: kreabus-bench\n  listen: 127.0.0.1:%d\n  routes: [\n", clusterPorts[i])
		for j, p := range clusterPorts {
			if j != i {
				fmt.Fprintf(&b, "    nats-route://127.0.0.1:%d\n", p)
			}
		}
		b.WriteString("  ]\n}\n")
	}
	return b.String()
}

func waitJetStream(ctx context.Context, n *NATS, replicas int) error {
	err := poll(ctx, nil, 60*time.Second, 100*time.Millisecond, func(ctx context.Context) error {
		for _, p := range n.Procs {
			if p.Exited() {
				return retry.Permanent(fmt.Errorf("%s exited:\n%s", p.Name, p.LogTail()))
			}
		}
		if err := jsReady(ctx, n); err != nil || replicas <= 1 {
			return err
		}
		return placeable(ctx, n, replicas)
	})
	if err != nil {
		return fmt.Errorf("nats-server not ready: %w", err)
	}
	return nil
}

func jsReady(ctx context.Context, n *NATS) error {
	for _, u := range n.URLs {
		nc, err := nats.Connect(u, nats.Timeout(time.Second))
		if err != nil {
			return err
		}
		js, err := jetstream.New(nc)
		if err == nil {
			actx, cancel := context.WithTimeout(ctx, 2*time.Second)
			_, err = js.AccountInfo(actx)
			cancel()
		}
		nc.Close()
		if err != nil {
			return err
		}
	}
	return nil
}

// placeable creates and deletes a throw-away stream with the given
// replicas: a cluster is ready once its meta leader knows enough peers.
func placeable(ctx context.Context, n *NATS, replicas int) error {
	nc, err := nats.Connect(n.URL(), nats.Timeout(time.Second))
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	name := "LOADGEN_PLACEMENT_PROBE"
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{
		Name: name, Subjects: []string{"loadgen.probe"}, Replicas: replicas, Storage: jetstream.MemoryStorage,
	}); err != nil {
		return err
	}
	return js.DeleteStream(ctx, name)
}

// WaitHTTP polls url until it answers 200, the process exits or the
// timeout passes; the error does not carry the process's log tail.
func WaitHTTP(ctx context.Context, url string, p *Proc, timeout time.Duration) error {
	return poll(ctx, p, timeout, 100*time.Millisecond, func(ctx context.Context) error {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("%s: %s", url, resp.Status)
		}
		return nil
	})
}

// WaitTCP polls addr until it accepts a connection, the process exits or
// the timeout passes.
func WaitTCP(ctx context.Context, addr string, p *Proc, timeout time.Duration) error {
	return poll(ctx, p, timeout, 50*time.Millisecond, func(context.Context) error {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return err
		}
		c.Close()
		return nil
	})
}

// poll runs probe about every pace until it succeeds, p (when not nil)
// exits or timeout passes. Its callers add p's log tail to the error.
func poll(ctx context.Context, p *Proc, timeout, pace time.Duration, probe func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	err := retry.Do(ctx, events.Backoff{Min: pace, Max: pace}, func(ctx context.Context) error {
		if p != nil && p.Exited() {
			return retry.Permanent(fmt.Errorf("%s exited", p.Name))
		}
		return probe(ctx)
	}, nil)
	if err != nil && ctx.Err() != nil {
		return fmt.Errorf("not done after %v: %w", timeout, err)
	}
	return err
}
