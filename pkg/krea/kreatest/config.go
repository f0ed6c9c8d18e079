package kreatest

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// Defaults for Config. Durations are short so tests run fast; a command
// (cmd/kreasim) can set realistic ones.
const (
	// DefaultToken is the API token the simulator accepts when Config.Token
	// is empty. It is a public test value, not a secret.
	DefaultToken = "kreatest-token"
	// DefaultQueueTime is how long a job stays queued before processing.
	DefaultQueueTime = 50 * time.Millisecond
	// DefaultRunTime is how long a job processes before it ends.
	DefaultRunTime = 150 * time.Millisecond
	// DefaultConcurrency is how many jobs may be queued or processing at
	// once; further jobs are backlogged, as Krea does beyond a plan's limit.
	DefaultConcurrency = 10
	// DefaultMaxBacklog is how many jobs may wait in the backlog before
	// submissions are refused with 429.
	DefaultMaxBacklog = 1000
	// DefaultWebhookAttempts is how many times a webhook is POSTed before
	// the simulator gives up on a receiver that fails or answers non-2xx.
	// Krea does not document its schedule; this is a plausible stand-in.
	DefaultWebhookAttempts = 3
	// DefaultWebhookBackoff is the wait before the second attempt; it
	// doubles for each further attempt.
	DefaultWebhookBackoff = 50 * time.Millisecond
	// DefaultWebhookTimeout bounds one webhook POST.
	DefaultWebhookTimeout = 5 * time.Second
	// DefaultLateWebhookDelay is the extra delay of a late webhook
	// (Faults.LateWebhookRate).
	DefaultLateWebhookDelay = 500 * time.Millisecond
	// MaxBodyBytes bounds a submission body; larger ones get 413.
	MaxBodyBytes = 1 << 20
	// DefaultListLimit and MaxListLimit are GET /jobs's page sizes.
	DefaultListLimit = 100
	MaxListLimit     = 1000
)

// Directives a submission's "prompt" may contain to steer one job without
// probabilities, so a test of a whole pipeline can script outcomes.
const (
	// DirectiveFail makes the job end failed.
	DirectiveFail = "kreatest:fail"
	// DirectiveNoWebhook makes the job end without any webhook.
	DirectiveNoWebhook = "kreatest:no-webhook"
)

// Config configures a simulator. The zero value is usable: every zero field
// takes the default named next to it.
type Config struct {
	// Token is the bearer token the API accepts (default DefaultToken).
	// Any other or missing Authorization answers 401 {"error": ...}.
	Token string

	// QueueTime is how long a job stays queued (default DefaultQueueTime),
	// RunTime how long it then processes (default DefaultRunTime); a
	// negative value means no wait at all. RunJitter adds a random
	// [0, RunJitter) to each job's RunTime so jobs end out of order.
	QueueTime time.Duration
	RunTime   time.Duration
	RunJitter time.Duration

	// Concurrency is how many jobs may be queued or processing at once
	// (default DefaultConcurrency). Jobs beyond it are answered as
	// "backlogged" and start in submission order when a slot frees.
	Concurrency int
	// MaxBacklog bounds the backlog (default DefaultMaxBacklog; negative:
	// no backlog). A submission that finds it full is answered 429
	// "Maximum number of concurrent jobs reached", without creating a job.
	MaxBacklog int

	// Retired lists retired models by path (e.g.
	// "/generate/image/bfl/flux-1"); they answer 410 with Krea's
	// model_unavailable body. Empty fields get plausible defaults.
	Retired map[string]Retirement
	// Models, when not empty, is the complete list of generation paths;
	// others answer 404. Empty means any well-formed path is a model.
	Models []string
	// CheckInput, when set, vets each submission body; an error answers 400
	// with the error's text, as Krea does for a body its schema refuses.
	CheckInput func(path string, input json.RawMessage) error

	// NonTerminalWebhooks also POSTs a webhook when a job starts
	// processing, which one Krea docs page hints at. Default: only
	// terminal states, as the webhook page says.
	NonTerminalWebhooks bool
	// ExtraFields adds fields some Krea examples show ("type",
	// "estimated_time") so clients prove they ignore unknown fields.
	ExtraFields bool
	// LegacyFailureDetail puts a failed job's reason in result.error (the
	// job-lifecycle page's reading) instead of the top-level
	// error {code, message} newer examples show.
	LegacyFailureDetail bool

	// WebhookAttempts is how many times one webhook is tried (default
	// DefaultWebhookAttempts): a transport error or a non-2xx answer is
	// retried after WebhookBackoff (default DefaultWebhookBackoff),
	// doubling each time. WebhookTimeout bounds one POST (default
	// DefaultWebhookTimeout).
	WebhookAttempts int
	WebhookBackoff  time.Duration
	WebhookTimeout  time.Duration
	// WebhookClient delivers webhooks (default: a private client).
	WebhookClient *http.Client

	// ResultsURL is the base of result URLs, for a simulator served behind
	// another name; the default is the scheme and Host the submission
	// came in with, so the URLs reach the simulator that made them.
	ResultsURL string
	// ResultSize is the size in bytes of every result file (default: a
	// small file, about 1 KiB: a 64×64 PNG, or an MP4 of minVideoSize).
	// Larger sizes are padded (a PNG ancillary chunk, a larger mdat box)
	// and streamed, never held in memory; a PNG comes out exactly this
	// size when it is at least 12 bytes above the small file's.
	ResultSize int64

	// Seed makes the fault dice deterministic; 0 picks a random seed.
	// Jobs, IDs and timing stay nondeterministic.
	Seed uint64
	// Logf, when set, receives a line for each notable event (webhook
	// failures, injected faults). testing.T.Logf fits.
	Logf func(format string, args ...any)

	// Faults are the initial fault switches; Server.SetFaults changes them
	// while running.
	Faults Faults
}

// Faults are the simulator's misbehaviours. Rates are probabilities in
// [0, 1], rolled independently per request, job or webhook.
type Faults struct {
	// Rate429 answers a submission 429 "Maximum number of concurrent jobs
	// reached" without doing anything (Krea's document has 429 on
	// submissions only). Rate5xx answers any request 500, 502 or 503
	// without doing anything.
	Rate429 float64
	Rate5xx float64
	// LostAnswerRate creates the job (and later delivers its webhook) but
	// answers the submission 502: the answer was lost on the way back.
	// A client that retries creates a second job, as it would with Krea.
	LostAnswerRate float64
	// RetryAfter, when positive, is sent as a Retry-After header (whole
	// seconds, rounded up) on every 429 and 5xx answer. Krea documents
	// none; the default sends none.
	RetryAfter time.Duration
	// Latency delays every answer by Latency plus a random
	// [0, LatencyJitter). The delay comes before any work, so a client
	// that gives up during it has changed nothing.
	Latency       time.Duration
	LatencyJitter time.Duration
	// CompleteAbandoned makes a call the client gives up on during its
	// Latency go through all the same, as a server does with a request it
	// has received: a submission still creates its job (and later sends
	// its webhook), though nobody reads the answer. This is how a client
	// timeout or a client killed mid-call meets the real API. Default: a
	// call abandoned during its latency changes nothing.
	CompleteAbandoned bool
	// FailRate makes a job end failed.
	FailRate float64
	// OutOfCredits answers submissions 402 "Insufficient credits".
	OutOfCredits bool
	// DropWebhookRate never sends a job's webhook. DuplicateWebhookRate
	// sends it a second time after the first delivery. LateWebhookRate
	// holds it back by LateWebhookDelay (default DefaultLateWebhookDelay).
	DropWebhookRate      float64
	DuplicateWebhookRate float64
	LateWebhookRate      float64
	LateWebhookDelay     time.Duration
	// ResultNotFound answers 404 for every result file, as a CDN does
	// for an expired URL. ResultLatency delays each result file's answer.
	// ResultStallAfter, when positive, stops sending a result file after
	// that many bytes until the client gives up: a stuck download.
	ResultNotFound   bool
	ResultLatency    time.Duration
	ResultStallAfter int64
}

// Retirement is what a retired model's 410 answer says.
type Retirement struct {
	Reason       string // default "retired"
	Message      string // default "<path> has been retired"
	SunsetDate   string // default "2026-01-01"
	Replacement  string // optional: path of the model to use instead
	MigrationURL string // optional
}

func (f Faults) validate() error {
	rates := map[string]float64{
		"Rate429": f.Rate429, "Rate5xx": f.Rate5xx, "LostAnswerRate": f.LostAnswerRate,
		"FailRate": f.FailRate, "DropWebhookRate": f.DropWebhookRate,
		"DuplicateWebhookRate": f.DuplicateWebhookRate, "LateWebhookRate": f.LateWebhookRate,
	}
	for name, r := range rates {
		if !(r >= 0 && r <= 1) { // also catches NaN
			return fmt.Errorf("kreatest: %s %v is not a probability in [0, 1]", name, r)
		}
	}
	if f.Latency < 0 || f.LatencyJitter < 0 || f.RetryAfter < 0 || f.LateWebhookDelay < 0 || f.ResultLatency < 0 || f.ResultStallAfter < 0 {
		return errors.New("kreatest: negative fault duration")
	}
	return nil
}

// withDefaults validates c and fills in defaults.
func (c Config) withDefaults() (Config, error) {
	if strings.ContainsFunc(c.Token, func(r rune) bool { return r <= ' ' || r == 0x7f }) {
		return c, errors.New("kreatest: token contains white space or control characters")
	}
	if c.Token == "" {
		c.Token = DefaultToken
	}
	c.QueueTime = durationDefault(c.QueueTime, DefaultQueueTime)
	c.RunTime = durationDefault(c.RunTime, DefaultRunTime)
	if c.RunJitter < 0 {
		return c, errors.New("kreatest: negative RunJitter")
	}
	switch {
	case c.Concurrency < 0:
		return c, errors.New("kreatest: negative Concurrency")
	case c.Concurrency == 0:
		c.Concurrency = DefaultConcurrency
	}
	switch {
	case c.MaxBacklog < 0:
		c.MaxBacklog = 0
	case c.MaxBacklog == 0:
		c.MaxBacklog = DefaultMaxBacklog
	}
	switch {
	case c.WebhookAttempts < 0:
		return c, errors.New("kreatest: negative WebhookAttempts")
	case c.WebhookAttempts == 0:
		c.WebhookAttempts = DefaultWebhookAttempts
	}
	c.WebhookBackoff = durationDefault(c.WebhookBackoff, DefaultWebhookBackoff)
	c.WebhookTimeout = durationDefault(c.WebhookTimeout, DefaultWebhookTimeout)
	if c.WebhookTimeout == 0 {
		return c, errors.New("kreatest: WebhookTimeout must be positive")
	}
	if c.ResultSize < 0 {
		return c, errors.New("kreatest: negative ResultSize")
	}
	if c.ResultsURL != "" {
		if u, err := url.Parse(c.ResultsURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return c, fmt.Errorf("kreatest: ResultsURL %q is not an absolute http(s) URL", c.ResultsURL)
		}
	}
	for p := range c.Retired {
		if !generatePath(p) {
			return c, fmt.Errorf("kreatest: retired model %q is not a generation path", p)
		}
	}
	for _, p := range c.Models {
		if !generatePath(p) {
			return c, fmt.Errorf("kreatest: model %q is not a generation path", p)
		}
	}
	if err := c.Faults.validate(); err != nil {
		return c, err
	}
	return c, nil
}

// durationDefault maps 0 to def and a negative value to 0 ("no wait").
func durationDefault(d, def time.Duration) time.Duration {
	switch {
	case d == 0:
		return def
	case d < 0:
		return 0
	}
	return d
}
