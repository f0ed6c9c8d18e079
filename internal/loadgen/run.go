// Package loadgen drives a kreabus webhook bridge (or the baseline) over
// HTTP with valid tokens, measures throughput and latency, and then checks
// the KREA_JOBS stream: every job answered 200 is stored exactly once.
// It also runs side-by-side comparisons against fresh nats-servers, the
// JetStream publish ceiling and end-to-end latency.
package loadgen

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"

	"github.com/kreabus/kreabus/pkg/events"
	"github.com/kreabus/kreabus/pkg/krea"
)

// Config describes one load run.
type Config struct {
	// URL is the bridge's base URL, e.g. http://127.0.0.1:8080.
	URL string
	// Secret is the webhook secret the bridge verifies tokens with.
	Secret string
	// Concurrency is the number of workers, and so of keep-alive
	// connections (closed loop), or the cap on requests in flight (open
	// loop). Default 64.
	Concurrency int
	// Rate > 0 makes the run open-loop: requests are due at fixed
	// intervals and latency is measured from when each was due, so time
	// spent queueing behind a slow server counts (no coordinated omission).
	Rate float64
	// Duration of the measured part; Requests, when > 0, stops the run
	// after that many measured requests, whichever comes first. With
	// neither, the run lasts 10 s.
	Duration time.Duration
	Requests int
	// Warmup runs load before measuring; its jobs are checked too.
	Warmup time.Duration
	// RepeatShare is the share of requests that re-POST a job already
	// sent and answered (default 0.1; negative means none).
	RepeatShare float64
	// FailedShare is the share of new jobs with status failed rather than
	// completed (default 0.1; negative means none).
	FailedShare float64
	// BodySize pads bodies to this many bytes (default DefaultBodySize).
	BodySize int
	// Timeout bounds one HTTP request (default 10 s).
	Timeout time.Duration
	// Seed makes the choice of repeats reproducible (0: random).
	Seed uint64
	// OnMeasureStart is called once when the warmup ends.
	OnMeasureStart func()
	// OnSend, when set, is called with a new job's ID, the time its first
	// POST was due and whether it falls in the measured window, before it
	// is sent (end-to-end latency).
	OnSend func(jobID string, due time.Time, measured bool)
}

func (c *Config) setDefaults() {
	if c.Concurrency <= 0 {
		c.Concurrency = 64
	}
	if c.Duration <= 0 && c.Requests <= 0 {
		c.Duration = 10 * time.Second
	}
	if c.RepeatShare == 0 {
		c.RepeatShare = 0.1
	}
	if c.RepeatShare < 0 {
		c.RepeatShare = 0
	}
	if c.FailedShare == 0 {
		c.FailedShare = 0.1
	}
	if c.FailedShare < 0 {
		c.FailedShare = 0
	}
	if c.BodySize <= 0 {
		c.BodySize = DefaultBodySize
	}
	if c.Timeout <= 0 {
		c.Timeout = 10 * time.Second
	}
	if c.Seed == 0 {
		c.Seed = rand.Uint64()
	}
}

// Job is one job the run sent, with what the bridge answered for it.
type Job struct {
	ID     string
	Status krea.Status
	Body   []byte
	url    string

	sent      atomic.Int32 // POSTs sent
	ok        atomic.Int32 // 200 answers
	okFresh   atomic.Int32 // 200 answers with duplicate false
	answered  atomic.Bool
	firstSent time.Time
}

// OK is the number of 200 answers the job got.
func (j *Job) OK() int { return int(j.ok.Load()) }

// Sent is the number of POSTs of the job.
func (j *Job) Sent() int { return int(j.sent.Load()) }

// Result is the outcome of a run: the report and the jobs, for Check.
type Result struct {
	Report *Report
	Jobs   []*Job
	// Latency holds the measured 200 answers' latencies.
	Latency *Histogram
}

// Run drives the bridge at cfg.URL until the duration or request count is
// reached or ctx is done.
func Run(ctx context.Context, cfg Config) (*Result, error) {
	cfg.setDefaults()
	if cfg.URL == "" {
		return nil, errors.New("loadgen: no target URL")
	}
	tok, err := events.NewTokenizer(cfg.Secret, "")
	if err != nil {
		return nil, fmt.Errorf("loadgen: %w", err)
	}
	tr := &http.Transport{
		Proxy:               nil,
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxConnsPerHost:     cfg.Concurrency,
		MaxIdleConns:        cfg.Concurrency,
		MaxIdleConnsPerHost: cfg.Concurrency,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
	}
	defer tr.CloseIdleConnections()
	r := &runner{
		cfg:    cfg,
		tok:    tok,
		client: &http.Client{Transport: tr, Timeout: cfg.Timeout},
		base:   strings.TrimRight(cfg.URL, "/"),
		hist:   new(Histogram),
		errs:   map[string]int{},
	}
	return r.run(ctx)
}

type runner struct {
	cfg    Config
	tok    *events.Tokenizer
	client *http.Client
	base   string
	hist   *Histogram

	mu       sync.Mutex
	jobs     []*Job
	answered []*Job // jobs with at least one answer: candidates for repeats
	errs     map[string]int
	samples  []string

	measureStart time.Time
	measuring    atomic.Bool
	issued       atomic.Int64 // measured requests started
	done         atomic.Int64 // measured requests answered (any outcome)
	okN          atomic.Int64
	dupN         atomic.Int64
	repeatN      atomic.Int64
	dupWrong     atomic.Int64
	lastEnd      atomic.Int64 // unix nanos of the last measured answer
}

func (r *runner) run(ctx context.Context) (*Result, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	start := time.Now()
	r.measureStart = start.Add(r.cfg.Warmup)
	var end time.Time
	if r.cfg.Duration > 0 {
		end = r.measureStart.Add(r.cfg.Duration)
	}
	// The warmup boundary: flip measuring and call the hook exactly once.
	go func() {
		t := time.NewTimer(time.Until(r.measureStart))
		defer t.Stop()
		select {
		case <-t.C:
		case <-ctx.Done():
			return
		}
		if r.cfg.OnMeasureStart != nil {
			r.cfg.OnMeasureStart()
		}
		r.measuring.Store(true)
	}()
	if r.cfg.Warmup <= 0 {
		// Make sure the hook ran before the first request is measured.
		for !r.measuring.Load() {
			time.Sleep(50 * time.Microsecond)
		}
	}

	var wg sync.WaitGroup
	if r.cfg.Rate > 0 {
		due := make(chan time.Time, 1<<16)
		for i := 0; i < r.cfg.Concurrency; i++ {
			rng := rand.New(rand.NewPCG(r.cfg.Seed, uint64(i)))
			wg.Go(func() {
				for t := range due {
					r.one(ctx, rng, t)
				}
			})
		}
		interval := time.Duration(float64(time.Second) / r.cfg.Rate)
		timer := time.NewTimer(time.Hour)
		defer timer.Stop()
	schedule:
		for i := int64(0); ; i++ {
			t := start.Add(time.Duration(i) * interval)
			if !end.IsZero() && !t.Before(end) {
				break
			}
			if t.After(r.measureStart) && r.cfg.Requests > 0 && r.issued.Add(1) > int64(r.cfg.Requests) {
				break
			}
			if d := time.Until(t); d > 0 {
				timer.Reset(d)
				select {
				case <-timer.C:
				case <-ctx.Done():
					break schedule
				}
			}
			select {
			case due <- t:
			case <-ctx.Done():
				break schedule
			}
		}
		close(due)
	} else {
		for i := 0; i < r.cfg.Concurrency; i++ {
			rng := rand.New(rand.NewPCG(r.cfg.Seed, uint64(i)))
			wg.Go(func() {
				for ctx.Err() == nil {
					now := time.Now()
					if !end.IsZero() && !now.Before(end) {
						return
					}
					if r.measuring.Load() && r.cfg.Requests > 0 && r.issued.Add(1) > int64(r.cfg.Requests) {
						return
					}
					r.one(ctx, rng, now)
				}
			})
		}
	}
	wg.Wait()

	elapsed := time.Duration(r.lastEnd.Load() - r.measureStart.UnixNano())
	if elapsed <= 0 {
		elapsed = time.Since(r.measureStart)
	}
	rep := &Report{
		Mode:         "closed",
		Concurrency:  r.cfg.Concurrency,
		BodySize:     r.cfg.BodySize,
		RepeatShare:  r.cfg.RepeatShare,
		Warmup:       Millis(r.cfg.Warmup),
		Elapsed:      Millis(elapsed),
		Requests:     r.done.Load(),
		OK:           r.okN.Load(),
		Duplicates:   r.dupN.Load(),
		Repeats:      r.repeatN.Load(),
		DupFlagWrong: r.dupWrong.Load(),
		Latency:      Summarize(r.hist),
		Errors:       r.errs,
		ErrorSamples: r.samples,
	}
	if r.cfg.Rate > 0 {
		rep.Mode = "open"
		rep.Rate = r.cfg.Rate
	}
	rep.Throughput = float64(rep.Requests) / elapsed.Seconds()
	rep.OKThroughput = float64(rep.OK) / elapsed.Seconds()
	r.mu.Lock()
	jobs := r.jobs
	r.mu.Unlock()
	rep.Jobs = len(jobs)
	return &Result{Report: rep, Jobs: jobs, Latency: r.hist}, nil
}

// pick returns the job for the next request: a repeat of an answered job
// with probability RepeatShare, otherwise a new one.
func (r *runner) pick(rng *rand.Rand, due time.Time) (j *Job, repeat bool) {
	if r.cfg.RepeatShare > 0 && rng.Float64() < r.cfg.RepeatShare {
		r.mu.Lock()
		if n := len(r.answered); n > 0 {
			j = r.answered[rng.IntN(n)]
		}
		r.mu.Unlock()
		if j != nil {
			return j, true
		}
	}
	status := krea.StatusCompleted
	if r.cfg.FailedShare > 0 && rng.Float64() < r.cfg.FailedShare {
		status = krea.StatusFailed
	}
	id := uuid.NewString()
	reqID := uuid.NewString()
	j = &Job{
		ID:        id,
		Status:    status,
		Body:      jobBody(id, status, r.cfg.BodySize, due),
		url:       r.base + events.WebhookPathPrefix + r.tok.Mint(reqID),
		firstSent: due,
	}
	r.mu.Lock()
	r.jobs = append(r.jobs, j)
	r.mu.Unlock()
	return j, false
}

// one sends one request due at due and records the outcome.
func (r *runner) one(ctx context.Context, rng *rand.Rand, due time.Time) {
	measured := r.measuring.Load() && !due.Before(r.measureStart)
	j, repeat := r.pick(rng, due)
	priorOK := j.ok.Load() > 0
	if !repeat && r.cfg.OnSend != nil {
		r.cfg.OnSend(j.ID, due, measured)
	}
	j.sent.Add(1)
	code, dup, err := r.post(ctx, j)
	now := time.Now()
	if ctx.Err() != nil && err != nil {
		return // cancelled: neither an answer nor an error of the target
	}
	if !j.answered.Swap(true) {
		r.mu.Lock()
		r.answered = append(r.answered, j)
		r.mu.Unlock()
	}
	if code == http.StatusOK {
		j.ok.Add(1)
		if !dup {
			j.okFresh.Add(1)
		}
		// A repeat of a job already answered 200 must be answered as a
		// duplicate; the first POST of a job must not be.
		if (priorOK && !dup) || (!repeat && dup) {
			r.dupWrong.Add(1)
		}
	}
	if !measured {
		return
	}
	r.done.Add(1)
	if repeat {
		r.repeatN.Add(1)
	}
	if code == http.StatusOK {
		r.okN.Add(1)
		if dup {
			r.dupN.Add(1)
		}
		r.hist.Record(now.Sub(due))
	} else {
		key := itoa(code)
		if err != nil {
			key = "transport"
		}
		r.mu.Lock()
		r.errs[key]++
		if len(r.samples) < 5 {
			msg := key
			if err != nil {
				msg += ": " + err.Error()
			}
			r.samples = append(r.samples, msg)
		}
		r.mu.Unlock()
	}
	for {
		cur := r.lastEnd.Load()
		if now.UnixNano() <= cur || r.lastEnd.CompareAndSwap(cur, now.UnixNano()) {
			break
		}
	}
}

var bufPool = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// post POSTs the job and returns the status code and, for a 200, the
// answer's duplicate flag.
func (r *runner) post(ctx context.Context, j *Job) (code int, dup bool, err error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, j.url, bytes.NewReader(j.Body))
	if err != nil {
		return 0, false, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := r.client.Do(req)
	if err != nil {
		return 0, false, err
	}
	buf := bufPool.Get().(*bytes.Buffer)
	buf.Reset()
	_, err = io.Copy(buf, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	if err == nil && resp.StatusCode == http.StatusOK {
		dup = duplicateFlag(buf.Bytes())
	}
	bufPool.Put(buf)
	if err != nil {
		return 0, false, err
	}
	return resp.StatusCode, dup, nil
}

// duplicateFlag reads "duplicate": true|false from a bridge answer without
// a full JSON decode (the load generator shares the CPUs with the target).
func duplicateFlag(b []byte) bool {
	i := bytes.Index(b, []byte(`"duplicate"`))
	if i < 0 {
		return false
	}
	b = b[i+len(`"duplicate"`):]
	b = bytes.TrimLeft(b, " \t\r\n")
	if len(b) == 0 || b[0] != ':' {
		return false
	}
	b = bytes.TrimLeft(b[1:], " \t\r\n")
	return bytes.HasPrefix(b, []byte("true"))
}
