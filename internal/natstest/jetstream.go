package natstest

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// JetStream starts an embedded JetStream server (RunServer with o),
// connects to it (Connect) and returns the server, the connection and its
// JetStream context, all closed when the test ends.
func JetStream(t testing.TB, o ...Options) (*server.Server, *nats.Conn, jetstream.JetStream) {
	t.Helper()
	s := RunServer(t, o...)
	nc, js := ConnectJetStream(t, s.ClientURL())
	return s, nc, js
}

// ConnectJetStream connects to url (Connect) and returns the connection
// and its JetStream context.
func ConnectJetStream(t testing.TB, url string) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	nc := Connect(t, url)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return nc, js
}

// StoredMsgs reads every message of stream, in order, with an ordered
// consumer; it fails the test when they cannot all be read in 30 s.
func StoredMsgs(t testing.TB, js jetstream.JetStream, stream string) []jetstream.Msg {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := js.Stream(ctx, stream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	n := int(info.State.Msgs)
	if n == 0 {
		return nil
	}
	c, err := st.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	var out []jetstream.Msg
	for len(out) < n {
		batch, err := c.Fetch(n-len(out), jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		got := 0
		for m := range batch.Messages() {
			out = append(out, m)
			got++
		}
		if err := batch.Error(); err != nil {
			t.Fatalf("fetch: %v", err)
		}
		if got == 0 {
			t.Fatalf("fetched %d of %d messages", len(out), n)
		}
	}
	return out
}
