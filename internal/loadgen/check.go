package loadgen

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/kreabus/kreabus/internal/retry"
	"github.com/kreabus/kreabus/pkg/events"
	"github.com/kreabus/kreabus/pkg/krea"
)

// CheckResult is what the stream check found.
type CheckResult struct {
	Pass bool `json:"pass"`
	// FromSeq and ToSeq bound the stream sequences read.
	FromSeq uint64 `json:"from_seq"`
	ToSeq   uint64 `json:"to_seq"`
	// Read is the number of messages read; Stored of those for our jobs.
	Read   int `json:"read"`
	Stored int `json:"stored"`
	// Expected is the number of jobs answered 200 at least once.
	Expected int `json:"expected"`
	// Missing: answered 200 but not in the stream.
	Missing []string `json:"missing,omitempty"`
	// Twice: stored more than once (any job, ours or not).
	Twice []string `json:"twice,omitempty"`
	// Mismatch: stored on the wrong subject or with other bytes than sent.
	Mismatch []string `json:"mismatch,omitempty"`
	// Unacknowledged: stored although never answered 200 (a timeout or a
	// 503 after the store); allowed, the sender would retry.
	Unacknowledged int `json:"unacknowledged"`
	// Restarts counts read consumers recreated after an error.
	Restarts      int      `json:"consumer_restarts,omitempty"`
	RestartErrors []string `json:"restart_errors,omitempty"`
	Error         string   `json:"error,omitempty"`
}

// StartSeq returns the first stream sequence a run will write to: the
// stream's last sequence plus one, or 1 when the stream does not exist yet.
func StartSeq(ctx context.Context, js jetstream.JetStream) (uint64, error) {
	s, err := js.Stream(ctx, events.StreamJobs)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return 1, nil
	}
	if err != nil {
		return 0, err
	}
	info, err := s.Info(ctx)
	if err != nil {
		return 0, err
	}
	return info.State.LastSeq + 1, nil
}

// readRetry paces the restarts of the stream read after a failure.
var readRetry = events.Backoff{Min: 200 * time.Millisecond, Max: 2 * time.Second}

// Check reads KREA_JOBS from sequence from on and verifies that every job
// answered 200 is stored exactly once, on its status' subject, with the
// bytes that were sent, and that no job (of this run or not) is stored
// twice on a terminal subject.
func Check(ctx context.Context, js jetstream.JetStream, from uint64, jobs []*Job) *CheckResult {
	res := &CheckResult{FromSeq: from}
	fail := func(err error) *CheckResult {
		res.Error = err.Error()
		res.Pass = false
		return res
	}
	byID := make(map[string]*Job, len(jobs))
	for _, j := range jobs {
		byID[j.ID] = j
		if j.OK() > 0 {
			res.Expected++
		}
	}
	s, err := js.Stream(ctx, events.StreamJobs)
	if err != nil {
		return fail(fmt.Errorf("stream %s: %w", events.StreamJobs, err))
	}
	info, err := s.Info(ctx)
	if err != nil {
		return fail(err)
	}
	res.ToSeq = info.State.LastSeq
	if from < info.State.FirstSeq {
		from = info.State.FirstSeq
	}
	counts := make(map[string]int, len(jobs))
	if from <= res.ToSeq {
		last := from - 1
		var cons jetstream.Consumer
		failures := 0
		for last < res.ToSeq {
			if ctx.Err() != nil {
				return fail(ctx.Err())
			}
			if failures > 0 {
				// A consumer lost to a leader change or a slow cluster:
				// start a fresh one after the last message read.
				res.Restarts++
				if len(res.RestartErrors) < 3 {
					res.RestartErrors = append(res.RestartErrors, res.Error)
				}
				if failures > 10 {
					return fail(fmt.Errorf("stream read stuck at sequence %d of %d: %v", last, res.ToSeq, res.Error))
				}
				cons = nil
				if !retry.Sleep(ctx, readRetry.Delay(uint64(failures))) {
					return fail(ctx.Err())
				}
			}
			if cons == nil {
				c, err := js.OrderedConsumer(ctx, events.StreamJobs, jetstream.OrderedConsumerConfig{
					DeliverPolicy: jetstream.DeliverByStartSequencePolicy,
					OptStartSeq:   last + 1,
				})
				if err != nil {
					res.Error = "ordered consumer: " + err.Error()
					failures++
					continue
				}
				cons = c
			}
			// Ask for no more than is left, or Fetch waits out its
			// expiry for messages that will never come.
			batch, err := cons.Fetch(int(min(1000, res.ToSeq-last)), jetstream.FetchMaxWait(5*time.Second))
			if err != nil {
				res.Error = "fetch: " + err.Error()
				failures++
				continue
			}
			n := 0
			for m := range batch.Messages() {
				meta, err := m.Metadata()
				if err != nil {
					return fail(err)
				}
				if meta.Sequence.Stream <= last {
					continue // already counted before a restart
				}
				n++
				last = meta.Sequence.Stream
				res.Read++
				h := m.Headers()
				id := h.Get(events.HeaderJobID)
				if id == "" {
					id = h.Get(events.HeaderMsgID)
				}
				status := krea.Status(strings.TrimPrefix(m.Subject(), events.JobsPrefix))
				j, ours := byID[id]
				if !ours && !status.IsTerminal() {
					continue
				}
				counts[id]++
				if !ours {
					continue
				}
				res.Stored++
				if status != j.Status || !bytes.Equal(m.Data(), j.Body) || h.Get(events.HeaderMsgID) != j.ID {
					res.Mismatch = append(res.Mismatch, id)
				}
			}
			if err := batch.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) {
				res.Error = "fetch: " + err.Error()
				failures++
				continue
			}
			if n == 0 {
				res.Error = fmt.Sprintf("no messages after sequence %d", last)
				failures++
				continue
			}
			failures = 0
		}
		res.Error = ""
	}
	for id, c := range counts {
		if c > 1 {
			res.Twice = append(res.Twice, id)
		}
	}
	for _, j := range jobs {
		c := counts[j.ID]
		if j.OK() > 0 && c == 0 {
			res.Missing = append(res.Missing, j.ID)
		}
		if j.OK() == 0 && c > 0 {
			res.Unacknowledged++
		}
	}
	sort.Strings(res.Twice)
	sort.Strings(res.Missing)
	sort.Strings(res.Mismatch)
	res.Pass = len(res.Missing) == 0 && len(res.Twice) == 0 && len(res.Mismatch) == 0
	return res
}

// WriteText prints the check for humans, ending with PASS or FAIL.
func (c *CheckResult) WriteText(w io.Writer) {
	verdict := "PASS"
	if !c.Pass {
		verdict = "FAIL"
	}
	fmt.Fprintf(w, "  stream     %s: read seq %d..%d (%d msgs), %d jobs answered 200, %d stored, %d missing, %d stored twice, %d mismatched, %d stored without a 200\n",
		verdict, c.FromSeq, c.ToSeq, c.Read, c.Expected, c.Stored, len(c.Missing), len(c.Twice), len(c.Mismatch), c.Unacknowledged)
	if c.Error != "" {
		fmt.Fprintf(w, "             error: %s\n", c.Error)
	}
	if c.Restarts > 0 {
		fmt.Fprintf(w, "             (read consumer recreated %d times after: %s)\n", c.Restarts, strings.Join(c.RestartErrors, "; "))
	}
	for _, l := range []struct {
		name string
		ids  []string
	}{{"missing", c.Missing}, {"twice", c.Twice}, {"mismatch", c.Mismatch}} {
		if len(l.ids) > 0 {
			fmt.Fprintf(w, "             %s e.g. %s\n", l.name, strings.Join(l.ids[:min(len(l.ids), 5)], ", "))
		}
	}
}
