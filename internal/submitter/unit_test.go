package submitter

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/kreabus/kreabus/internal/accountpause"
	"github.com/kreabus/kreabus/internal/config"
)

func validConfig() Config {
	return Config{
		APIToken:      "secret-token-value",
		PublicURL:     "https://kreabus.example.com",
		WebhookSecret: "hook-secret-value",
	}
}

func TestConfigValidate(t *testing.T) {
	c := validConfig()
	c.SetDefaults()
	if err := c.Validate(); err != nil {
		t.Fatalf("valid config: %v", err)
	}
	if c.Concurrency != DefaultConcurrency || c.Consumer != DefaultConsumer || c.APIURL != DefaultAPIURL {
		t.Errorf("defaults not applied: %+v", c)
	}
	cases := map[string]func(*Config){
		"KREABUS_PUBLIC_URL":         func(c *Config) { c.PublicURL = "kreabus.example.com/hooks" },
		"KREA_API_URL":               func(c *Config) { c.APIURL = "ftp://api.krea.ai" },
		"KREA_API_TOKEN":             func(c *Config) { c.APIToken = "" },
		"KREABUS_WEBHOOK_SECRET":     func(c *Config) { c.WebhookSecret = "" },
		"KREABUS_SUBMIT_CONCURRENCY": func(c *Config) { c.Concurrency = -1 },
		"KREABUS_SUBMIT_RATE":        func(c *Config) { c.Rate = -2 },
		"KREABUS_MAX_DELIVERIES":     func(c *Config) { c.MaxDeliveries = -1 },
		"KREABUS_RETRY_BACKOFF_MAX":  func(c *Config) { c.RetryBackoffMax = time.Millisecond },
		"KREABUS_CONSUMER":           func(c *Config) { c.Consumer = "a.b" },
		"KREABUS_API_TIMEOUT":        func(c *Config) { c.APITimeout = -time.Second },
	}
	for name, mutate := range cases {
		c := validConfig()
		c.SetDefaults()
		mutate(&c)
		err := c.Validate()
		if err == nil || !strings.Contains(err.Error(), name) {
			t.Errorf("%s: error %v", name, err)
		}
		if err != nil && (strings.Contains(err.Error(), "secret-token-value") || strings.Contains(err.Error(), "hook-secret-value")) {
			t.Errorf("%s: error leaks a secret: %v", name, err)
		}
	}
}

func TestConfigLoad(t *testing.T) {
	env := map[string]string{
		"KREA_API_TOKEN":             "tok",
		"KREABUS_WEBHOOK_SECRET":     "sec",
		"KREABUS_SUBMIT_CONCURRENCY": "32",
		"KREABUS_SUBMIT_RATE":        "2.5",
	}
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	var c Config
	err := config.Load(&c, "submitter", nil, lookup)
	var se *config.SettingError
	if !errors.As(err, &se) || se.Env != "KREABUS_PUBLIC_URL" {
		t.Fatalf("missing public URL: %v", err)
	}
	c = Config{}
	if err := config.Load(&c, "submitter", []string{"--public-url", "http://localhost:8080", "--submit-concurrency", "4"}, lookup); err != nil {
		t.Fatal(err)
	}
	if c.Concurrency != 4 || c.Rate != 2.5 || c.MaxDeliveries != 10 || c.RetryBackoffMin != time.Second ||
		c.RetryBackoffMax != 5*time.Minute || c.APITimeout != 30*time.Second || c.Consumer != "kreabus-submitter" {
		t.Errorf("loaded %+v", c)
	}
	if err := c.Validate(); err != nil {
		t.Error(err)
	}
	for _, s := range config.Settings(&c) {
		if (s.Env == "KREA_API_TOKEN" || strings.HasPrefix(s.Env, "KREABUS_WEBHOOK_SECRET")) && !s.Secret {
			t.Errorf("%s is not marked secret", s.Env)
		}
	}
}

// TestBackoffFromSettings: the redelivery delay is events.Backoff of
// KREABUS_RETRY_BACKOFF_MIN and _MAX: doubling per delivery, capped,
// jittered in the upper half.
func TestBackoffFromSettings(t *testing.T) {
	s := &Submitter{cfg: Config{RetryBackoffMin: time.Second, RetryBackoffMax: 8 * time.Second}}
	for n, ceil := range map[uint64]time.Duration{1: time.Second, 2: 2 * time.Second, 3: 4 * time.Second, 4: 8 * time.Second, 30: 8 * time.Second} {
		var low, top time.Duration = ceil, 0
		for range 2000 {
			d := s.backoff(n)
			if d < ceil/2 || d > ceil {
				t.Fatalf("delivery %d: %v outside [%v, %v]", n, d, ceil/2, ceil)
			}
			low, top = min(low, d), max(top, d)
		}
		if top < ceil*9/10 || low > ceil*6/10 {
			t.Errorf("delivery %d: draws in [%v, %v] of 2000, want them to spread over [%v, %v]", n, low, top, ceil/2, ceil)
		}
	}
}

// fakeClock drives a gate deterministically.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time      { return c.t }
func (c *fakeClock) add(d time.Duration) { c.t = c.t.Add(d) }
func newTestGate(slots int) (*gate, *fakeClock) {
	clk := &fakeClock{t: time.Unix(1000, 0)}
	acct, err := accountpause.New(time.Second, 8*time.Second, accountpause.WithClock(clk.now))
	if err != nil {
		panic(err)
	}
	g := newGate(slots, 0, acct, time.Second, time.Minute)
	g.now = clk.now
	return g, clk
}

func TestGateAIMD(t *testing.T) {
	g, clk := newTestGate(16)
	ctx := context.Background()
	take := func() time.Time {
		if _, err := g.acquire(ctx); err != nil {
			t.Fatal(err)
		}
		return clk.now()
	}
	// A wave of 429s from calls started together halves the limit once.
	var starts []time.Time
	for range 8 {
		starts = append(starts, take())
	}
	clk.add(time.Millisecond)
	for _, s := range starts {
		g.done(false, outcomeThrottled, s, 0)
	}
	if l := g.Limit(); l != 8 {
		t.Fatalf("limit %d after one wave of 429s, want 8", l)
	}
	// A 429 of a call started after the cut halves again.
	s := take()
	clk.add(time.Millisecond)
	g.done(false, outcomeThrottled, s, 0)
	if l := g.Limit(); l != 4 {
		t.Fatalf("limit %d, want 4", l)
	}
	// It never goes below 1.
	for range 10 {
		s := take()
		clk.add(time.Millisecond)
		g.done(false, outcomeThrottled, s, 0)
	}
	if l := g.Limit(); l != 1 {
		t.Fatalf("limit %d, want 1", l)
	}
	// Successes regain it additively: about one slot per round of calls.
	for i := 0; g.Limit() < 16; i++ {
		if i > 1000 {
			t.Fatalf("limit stuck at %d", g.Limit())
		}
		s := take()
		g.done(false, outcomeOK, s, 0)
	}
	// The in-flight bound holds.
	for range 16 {
		take()
	}
	if n := g.acquireMore(5); n != 0 {
		t.Errorf("took %d slots beyond the limit", n)
	}
	cctx, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	if _, err := g.acquire(cctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("acquire beyond the limit: %v", err)
	}
}

func TestGateRetryAfterHold(t *testing.T) {
	g, clk := newTestGate(4)
	ctx := context.Background()
	g.acquire(ctx)
	g.done(false, outcomeThrottled, clk.now(), 30*time.Second)
	if n := g.acquireMore(1); n != 0 {
		t.Error("slot taken during a Retry-After hold")
	}
	clk.add(31 * time.Second)
	if n := g.acquireMore(1); n != 1 {
		t.Error("no slot after the hold")
	}
}

func TestGatePauseProbe(t *testing.T) {
	g, clk := newTestGate(4)
	var changes []bool
	g.onPause = func(p bool, _ string) { changes = append(changes, p) }
	ctx := context.Background()
	g.acquire(ctx)
	started := clk.now()
	clk.add(time.Millisecond)
	if !g.pause(ctx, "401 Unauthorized") {
		t.Fatal("pause did not pause")
	}
	g.done(false, outcomeAccount, started, 0)
	if p, reason, at := g.Paused(); !p || reason != "401 Unauthorized" || !at.Equal(clk.now().Add(time.Second)) {
		t.Fatalf("Paused() = %v %q %v", p, reason, at)
	}
	if n := g.acquireMore(1); n != 0 {
		t.Fatal("slot taken while paused")
	}
	// Before the probe time nothing passes.
	cctx, cancel := context.WithTimeout(ctx, 10*time.Millisecond)
	if _, err := g.acquire(cctx); err == nil {
		t.Fatal("acquired while paused")
	}
	cancel()
	// At the probe time exactly one probe passes.
	clk.add(time.Second)
	probe, err := g.acquire(ctx)
	if err != nil || !probe {
		t.Fatalf("probe %v %v", probe, err)
	}
	cctx, cancel = context.WithTimeout(ctx, 10*time.Millisecond)
	if _, err := g.acquire(cctx); err == nil {
		t.Fatal("second slot during a probe")
	}
	cancel()
	// The probe fails again: the backoff doubles.
	g.pause(ctx, "401 Unauthorized")
	g.done(true, outcomeAccount, clk.now(), 0)
	if _, _, at := g.Paused(); !at.Equal(clk.now().Add(2 * time.Second)) {
		t.Fatalf("next probe at %v, want now+2s", at)
	}
	// A probe that is answered 2xx resumes.
	clk.add(2 * time.Second)
	probe, _ = g.acquire(ctx)
	if !probe {
		t.Fatal("not a probe")
	}
	g.done(true, outcomeOK, clk.now(), 0)
	if p, _, _ := g.Paused(); p {
		t.Fatal("still paused after a good probe")
	}
	if len(changes) != 2 || !changes[0] || changes[1] {
		t.Errorf("pause callbacks %v", changes)
	}
	if n := g.acquireMore(4); n != 4 {
		t.Errorf("took %d slots after resuming, want 4", n)
	}
}
