package natstest

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// RunCluster starts n embedded JetStream servers on 127.0.0.1 that form one
// cluster ("kreabus-test"): each listens for clients on a random port and
// for routes on an explicit free port, routes to every other, and has its
// own store in t.TempDir(). It returns once every server accepts clients,
// all routes are up and the JetStream meta leader is elected, so a
// replicated stream can be created at once. The servers are shut down when
// the test ends; a test may shut one down earlier (to lose a node), which
// the cleanup tolerates.
func RunCluster(t testing.TB, n int) []*server.Server {
	t.Helper()
	if n < 1 {
		t.Fatalf("RunCluster: n = %d, want at least 1", n)
	}
	const name = "kreabus-test"
	ports := make([]int, n)
	for i := range ports {
		ports[i] = freePort(t)
	}
	routes := make([]string, n)
	for i, p := range ports {
		routes[i] = fmt.Sprintf("nats-route://127.0.0.1:%d", p)
	}
	ss := make([]*server.Server, 0, n)
	t.Cleanup(func() {
		for _, s := range ss {
			s.Shutdown()
		}
		for _, s := range ss {
			s.WaitForShutdown()
		}
	})
	for i := 0; i < n; i++ {
		opts := &server.Options{
			ServerName: fmt.Sprintf("%s-%d", name, i+1),
			Host:       "127.0.0.1",
			Port:       server.RANDOM_PORT,
			NoLog:      true,
			NoSigs:     true,
			JetStream:  true,
			StoreDir:   t.TempDir(),
			MaxPayload: 8 << 20,
			Cluster: server.ClusterOpts{
				Name: name,
				Host: "127.0.0.1",
				Port: ports[i],
			},
			Routes: server.RoutesFromStr(strings.Join(routes, ",")),
		}
		s, err := server.NewServer(opts)
		if err != nil {
			t.Fatalf("nats server %d: %v", i+1, err)
		}
		ss = append(ss, s)
		go s.Start()
	}
	for i, s := range ss {
		if !s.ReadyForConnections(10 * time.Second) {
			t.Fatalf("nats server %d not ready", i+1)
		}
	}
	CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		for _, s := range ss {
			if got := s.NumRoutes(); got < n-1 {
				return fmt.Errorf("%s has %d routes, want %d", s.Name(), got, n-1)
			}
		}
		leader := 0
		for _, s := range ss {
			if !s.JetStreamIsClustered() && n > 1 {
				return fmt.Errorf("%s: JetStream not clustered yet", s.Name())
			}
			if s.JetStreamIsLeader() {
				leader++
			}
		}
		if leader != 1 {
			return fmt.Errorf("%d JetStream meta leaders, want 1", leader)
		}
		// Every server answers JetStream API requests.
		for _, s := range ss {
			if err := jsInfo(s.ClientURL()); err != nil {
				return fmt.Errorf("%s: %w", s.Name(), err)
			}
		}
		return nil
	})
	return ss
}

// jsInfo asks the server at url for its account's JetStream info.
func jsInfo(url string) error {
	nc, err := nats.Connect(url, nats.Timeout(time.Second))
	if err != nil {
		return err
	}
	defer nc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	m, err := nc.RequestWithContext(ctx, "$JS.API.INFO", nil)
	if err != nil {
		return err
	}
	if strings.Contains(string(m.Data), `"error"`) {
		return errors.New(string(m.Data))
	}
	return nil
}

// ClusterURL is the comma-separated client URLs of ss, as NATS_URL takes
// them.
func ClusterURL(ss []*server.Server) string {
	urls := make([]string, len(ss))
	for i, s := range ss {
		urls[i] = s.ClientURL()
	}
	return strings.Join(urls, ",")
}
