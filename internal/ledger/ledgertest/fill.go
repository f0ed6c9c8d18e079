// Package ledgertest fills a job ledger with many product-shaped jobs, for
// tests and benchmarks that show what does and does not grow with history.
package ledgertest

import (
	"context"
	"encoding/json"
	"errors"
	"strconv"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kreabus/kreabus/internal/ledger"
	"github.com/kreabus/kreabus/internal/natstest"
	"github.com/kreabus/kreabus/pkg/events"
	"github.com/kreabus/kreabus/pkg/krea"
)

// FillIDs are the IDs of filled job i: a request ID and a job ID, both
// UUIDs as in production.
func FillIDs(i int) (requestID, jobID string) {
	b := []byte(strconv.Itoa(i))
	return uuid.NewSHA1(fillSpace, append([]byte("r"), b...)).String(), uuid.NewSHA1(fillSpace, append([]byte("j"), b...)).String()
}

var fillSpace = uuid.MustParse("0b7e2c7c-1f5e-4a36-9c1a-7d8e9f0a1b2c")

// Fill writes n settled jobs and open jobs still running, overdue for a
// poll, into the job ledger (created when missing), as the submitter and
// the Recorder would have left them, with asynchronous publishes to the
// bucket's subjects.
func Fill(ctx context.Context, js jetstream.JetStream, n, open int, logf func(string, ...any)) (*ledger.Ledger, error) {
	led, err := ledger.Open(ctx, js, ledger.Config{Create: true})
	if err != nil {
		return nil, err
	}
	prefix := "$KV." + led.Bucket() + "."
	put := func(key string, rec *ledger.Record) error {
		data, err := json.Marshal(rec)
		if err != nil {
			return err
		}
		_, err = js.PublishAsync(prefix+key, data, jetstream.WithStallWait(time.Minute))
		return err
	}
	now := time.Now().UTC()
	md := json.RawMessage(`{"user":"u-4812","campaign":"spring-launch"}`)
	const path = "/generate/image/bfl/flux-1-dev"
	for i := range n + open {
		rid, jid := FillIDs(i)
		at := now.Add(-time.Hour).Add(time.Duration(i) * time.Millisecond)
		req := ledger.Record{RequestID: rid, JobID: jid, Path: path, Status: events.StatusSubmitted, Metadata: md,
			SubmittedAt: at, UpdatedAt: at, Source: events.SourceSubmitter, Attempt: 1, IntentAt: at}
		job := ledger.Record{RequestID: rid, JobID: jid, Path: path, Status: krea.StatusCompleted, Terminal: true,
			Metadata: md, SubmittedAt: at, UpdatedAt: at.Add(8 * time.Second), Source: events.SourceWebhook}
		if i >= n {
			job.Status, job.Terminal, job.Source = events.StatusSubmitted, false, events.SourceSubmitter
			if err := put(ledger.OpenKey(jid), &ledger.Record{RequestID: rid, JobID: jid, Path: path, Metadata: md, SubmittedAt: at}); err != nil {
				return nil, err
			}
		}
		if err := put(ledger.RequestKey(rid), &req); err != nil {
			return nil, err
		}
		if err := put(ledger.JobKey(jid), &job); err != nil {
			return nil, err
		}
		if i > 0 && i%200_000 == 0 && logf != nil {
			logf("filled %d jobs", i)
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return led, nil
}

// FeedRegion is a run of jobs a load generator sends the webhooks of in
// order: First, First+1, ... up to Span of them (0: no end).
type FeedRegion struct{ First, Span int }

// FeedRegions is n regions of span jobs side by side from first (one per
// load generator thread).
func FeedRegions(first, n, span int) []FeedRegion {
	rs := make([]FeedRegion, max(n, 1))
	for k := range rs {
		rs[k] = FeedRegion{First: first + k*span, Span: span}
	}
	return rs
}

// Feed writes the job record of running job i (the IDs of FillIDs) for the
// jobs of each region in order, staying lead records ahead of the region's
// furthest job whose event KREA_JOBS has stored: the shape of production,
// where the submitter records a job shortly before its webhook comes. How
// far each region has come is read from the last stored event, sampled
// every 5 ms (regions sent side by side take turns being last). It returns
// when ctx ends.
func Feed(ctx context.Context, js jetstream.JetStream, regions []FeedRegion, lead int) error {
	led, err := ledger.Open(ctx, js, ledger.Config{Create: true})
	if err != nil {
		return err
	}
	st, err := js.Stream(ctx, events.StreamJobs)
	if err != nil {
		return err
	}
	// Job ID to region and position, for the jobs a run can reach.
	const reach = 1 << 20
	type at struct{ r, i int }
	pos := make(map[string]at)
	next := make([]int, len(regions))  // next job to record, per region
	front := make([]int, len(regions)) // furthest job stored, per region
	for k, r := range regions {
		n := r.Span
		if n <= 0 {
			n = reach
		}
		for i := r.First; i < r.First+n; i++ {
			_, jid := FillIDs(i)
			pos[jid] = at{k, i}
		}
		next[k], front[k] = r.First, r.First-1
	}
	prefix := "$KV." + led.Bucket() + "."
	md := json.RawMessage(`{"user":"u-4812","campaign":"spring-launch"}`)
	for {
		m, err := st.GetLastMsgForSubject(ctx, events.JobsSubjects)
		switch {
		case err == nil:
			if p, ok := pos[m.Header.Get(events.HeaderJobID)]; ok && p.i > front[p.r] {
				front[p.r] = p.i
			}
		case errors.Is(err, jetstream.ErrMsgNotFound):
		case ctx.Err() != nil:
			return nil
		default:
			return err
		}
		for k, r := range regions {
			target := front[k] + 1 + lead
			if r.Span > 0 {
				target = min(target, r.First+r.Span)
			}
			for ; next[k] < target; next[k]++ {
				rid, jid := FillIDs(next[k])
				now := time.Now().UTC()
				data, err := json.Marshal(&ledger.Record{RequestID: rid, JobID: jid, Path: "/generate/image/bfl/flux-1-dev",
					Status: events.StatusSubmitted, Metadata: md, SubmittedAt: now, UpdatedAt: now, Source: events.SourceSubmitter})
				if err != nil {
					return err
				}
				if _, err := js.PublishAsync(prefix+ledger.JobKey(jid), data, jetstream.WithStallWait(time.Minute)); err != nil {
					return err
				}
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// Filled starts a nats-server process (not under the race detector: a
// fill is server work) with kreabus' streams and a job ledger filled with
// settled and open jobs, for tests of what must not grow with history. It
// returns the server's URL, a JetStream context on it and the ledger.
func Filled(t testing.TB, settled, open int) (string, jetstream.JetStream, *ledger.Ledger) {
	t.Helper()
	ns := natstest.StartProcess(t)
	nc := natstest.Connect(t, ns.URL())
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(8192))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := events.EnsureStreams(ctx, js, events.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	led, err := Fill(ctx, js, settled, open, nil)
	if err != nil {
		t.Fatal(err)
	}
	return ns.URL(), js, led
}
