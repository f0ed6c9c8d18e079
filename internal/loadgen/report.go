package loadgen

import (
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"
)

// Millis is a duration that prints and marshals as milliseconds.
type Millis time.Duration

// MarshalJSON writes the duration as a number of milliseconds.
func (m Millis) MarshalJSON() ([]byte, error) {
	return json.Marshal(float64(m) / float64(time.Millisecond))
}

// UnmarshalJSON reads a number of milliseconds.
func (m *Millis) UnmarshalJSON(b []byte) error {
	var f float64
	if err := json.Unmarshal(b, &f); err != nil {
		return err
	}
	*m = Millis(f * float64(time.Millisecond))
	return nil
}

func (m Millis) String() string { return fmtMs(time.Duration(m)) }

// fmtMs prints a duration in milliseconds with sensible precision.
func fmtMs(d time.Duration) string {
	ms := float64(d) / float64(time.Millisecond)
	switch {
	case ms < 10:
		return fmt.Sprintf("%.2fms", ms)
	case ms < 100:
		return fmt.Sprintf("%.1fms", ms)
	default:
		return fmt.Sprintf("%.0fms", ms)
	}
}

// Latency is a latency summary (all values in milliseconds in JSON).
type Latency struct {
	Count uint64 `json:"count"`
	Min   Millis `json:"min_ms"`
	Mean  Millis `json:"mean_ms"`
	P50   Millis `json:"p50_ms"`
	P90   Millis `json:"p90_ms"`
	P99   Millis `json:"p99_ms"`
	P999  Millis `json:"p99_9_ms"`
	Max   Millis `json:"max_ms"`
}

// Summarize reads the usual percentiles off h.
func Summarize(h *Histogram) Latency {
	return Latency{
		Count: h.Count(),
		Min:   Millis(h.Min()),
		Mean:  Millis(h.Mean()),
		P50:   Millis(h.Percentile(50)),
		P90:   Millis(h.Percentile(90)),
		P99:   Millis(h.Percentile(99)),
		P999:  Millis(h.Percentile(99.9)),
		Max:   Millis(h.Max()),
	}
}

func (l Latency) String() string {
	return fmt.Sprintf("p50 %s  p90 %s  p99 %s  p99.9 %s  max %s  (mean %s, n=%d)",
		l.P50, l.P90, l.P99, l.P999, l.Max, l.Mean, l.Count)
}

// Report is what one load run measured.
type Report struct {
	Target      string  `json:"target,omitempty"`
	Mode        string  `json:"mode"` // closed (fixed concurrency) or open (fixed rate)
	Concurrency int     `json:"concurrency"`
	Rate        float64 `json:"rate,omitempty"`
	BodySize    int     `json:"body_size"`
	RepeatShare float64 `json:"repeat_share"`
	Warmup      Millis  `json:"warmup_ms"`
	Elapsed     Millis  `json:"elapsed_ms"`
	// Requests answered in the measured window (any outcome).
	Requests     int64   `json:"requests"`
	OK           int64   `json:"ok"`
	Duplicates   int64   `json:"duplicates"` // 200 answers with duplicate true
	Repeats      int64   `json:"repeats"`    // repeats sent
	Throughput   float64 `json:"throughput_rps"`
	OKThroughput float64 `json:"ok_throughput_rps"`
	// Latency of the 200 answers, from when the request was due.
	Latency Latency `json:"latency"`
	// Errors by HTTP status code, or "transport".
	Errors       map[string]int `json:"errors"`
	ErrorSamples []string       `json:"error_samples,omitempty"`
	// DupFlagWrong counts 200 answers whose duplicate flag was wrong: a
	// repeat of a job already answered 200 that said false, or a job's
	// first POST that said true.
	DupFlagWrong int64 `json:"dup_flag_wrong"`
	// Jobs is the number of distinct jobs sent (warmup included).
	Jobs  int          `json:"jobs"`
	Check *CheckResult `json:"check,omitempty"`
	Proc  *ProcUsage   `json:"process,omitempty"`
	NATS  *ProcUsage   `json:"nats_server,omitempty"`
	// Generator is the load generator's own use (this process; includes
	// the baseline when it runs in-process).
	Generator *ProcUsage `json:"generator,omitempty"`
}

// ErrorCount is the number of non-200 answers and transport errors.
func (r *Report) ErrorCount() int {
	n := 0
	for _, c := range r.Errors {
		n += c
	}
	return n
}

// Passed reports whether the run's guarantees held: the stream check
// passed (when run) and no duplicate flag was wrong.
func (r *Report) Passed() bool {
	if r.DupFlagWrong > 0 {
		return false
	}
	return r.Check == nil || r.Check.Pass
}

func errorsString(m map[string]int) string {
	if len(m) == 0 {
		return "none"
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s×%d", k, m[k]))
	}
	return strings.Join(parts, " ")
}

// WriteText prints the report for humans.
func (r *Report) WriteText(w io.Writer) {
	name := r.Target
	if name == "" {
		name = "target"
	}
	load := fmt.Sprintf("closed loop, %d connections", r.Concurrency)
	if r.Mode == "open" {
		load = fmt.Sprintf("open loop, %.0f req/s, up to %d in flight", r.Rate, r.Concurrency)
	}
	fmt.Fprintf(w, "%s: %s, body %d B, %.0f%% repeats, %s measured after %s warmup\n",
		name, load, r.BodySize, r.RepeatShare*100, r.Elapsed, r.Warmup)
	fmt.Fprintf(w, "  requests   %d answered, %d × 200 (%d duplicates of %d repeats), %d jobs\n",
		r.Requests, r.OK, r.Duplicates, r.Repeats, r.Jobs)
	fmt.Fprintf(w, "  throughput %.0f req/s (%.0f × 200/s)\n", r.Throughput, r.OKThroughput)
	fmt.Fprintf(w, "  latency    %s\n", r.Latency)
	fmt.Fprintf(w, "  errors     %s\n", errorsString(r.Errors))
	for _, s := range r.ErrorSamples {
		fmt.Fprintf(w, "             e.g. %s\n", s)
	}
	if r.DupFlagWrong > 0 {
		fmt.Fprintf(w, "  WRONG duplicate flag on %d answers\n", r.DupFlagWrong)
	}
	if r.Proc != nil {
		fmt.Fprintf(w, "  process    %s\n", r.Proc)
	}
	if r.NATS != nil {
		fmt.Fprintf(w, "  nats-server %s\n", r.NATS)
	}
	if r.Generator != nil {
		fmt.Fprintf(w, "  loadgen    %s\n", r.Generator)
	}
	if r.Check != nil {
		r.Check.WriteText(w)
	}
}
