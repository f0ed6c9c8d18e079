package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

type inner struct {
	URL string `env:"T_URL" flag:"url"`
}

func (c *inner) SetDefaults() {
	if c.URL == "" {
		c.URL = "nats://x"
	}
}

type group struct {
	Size int64 `env:"T_SIZE" flag:"size"`
}

type cfg struct {
	inner
	Group   group
	Listen  string        `env:"T_LISTEN" flag:"listen" usage:"listen address"`
	Secret  string        `env:"T_SECRET" flag:"secret" required:"true" secret:"true"`
	N       int           `env:"T_N" flag:"count"`
	Rate    float64       `env:"T_RATE" flag:"rate"`
	On      bool          `env:"T_ON" flag:"enabled"`
	Window  time.Duration `env:"T_WINDOW" flag:"window"`
	ignored string
}

func (c *cfg) SetDefaults() {
	c.inner.SetDefaults()
	if c.Group.Size == 0 {
		c.Group.Size = 1 << 20
	}
	if c.Listen == "" {
		c.Listen = ":8080"
	}
	if c.N == 0 {
		c.N = 16
	}
	c.On = true // fresh structs only: false is a setting
	if c.Window == 0 {
		c.Window = time.Hour
	}
}

// tagged declares a default in a tag: defaults come from SetDefaults only.
type tagged struct {
	N int `env:"T_N" flag:"count" default:"3"`
}

func env(m map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}

func TestPrecedence(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "c.yaml")
	if err := os.WriteFile(file, []byte("listen: \":1\"\ncount: 3\nrate: 2.5\nwindow: 5m\nurl: nats://file\nsecret: fromfile\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var c cfg
	err := Load(&c, "t", []string{"--config", file, "--count", "7"}, env(map[string]string{"T_LISTEN": ":2", "T_N": "5", "T_ON": "false"}))
	if err != nil {
		t.Fatal(err)
	}
	if c.Listen != ":2" || c.N != 7 || c.Rate != 2.5 || c.On || c.Window != 5*time.Minute || c.URL != "nats://file" || c.Secret != "fromfile" {
		t.Fatalf("got %+v", c)
	}
}

func TestDefaultsAndMissing(t *testing.T) {
	var c cfg
	err := Load(&c, "t", nil, env(nil))
	var se *SettingError
	if !errors.As(err, &se) || se.Env != "T_SECRET" || !errors.Is(err, ErrMissing) {
		t.Fatalf("want missing T_SECRET, got %v", err)
	}
	if !strings.Contains(err.Error(), "T_SECRET") {
		t.Fatalf("error does not name the setting: %v", err)
	}
	if c.Listen != ":8080" || c.N != 16 || !c.On || c.Window != time.Hour || c.URL != "nats://x" || c.Group.Size != 1<<20 {
		t.Fatalf("defaults not applied: %+v", c)
	}
}

func TestNamedGroupAndDefaultTag(t *testing.T) {
	var c cfg
	if err := Load(&c, "t", []string{"--secret", "s", "--size", "7"}, env(map[string]string{"T_ON": "false"})); err != nil {
		t.Fatal(err)
	}
	if c.Group.Size != 7 || c.On {
		t.Fatalf("got %+v", c)
	}
	defer func() {
		if recover() == nil {
			t.Error("a default tag was accepted")
		}
	}()
	Settings(&tagged{})
}

func TestBadValues(t *testing.T) {
	for _, tc := range []struct {
		args []string
		env  map[string]string
		want string
	}{
		{env: map[string]string{"T_SECRET": "s", "T_N": "x"}, want: "T_N"},
		{env: map[string]string{"T_SECRET": "s", "T_WINDOW": "1"}, want: "T_WINDOW"},
		{args: []string{"--secret", "s", "--enabled", "maybe"}, want: "T_ON"},
		{args: []string{"--secret", "s", "--nope", "1"}, want: "nope"},
		{args: []string{"--secret", "s", "extra"}, want: "extra"},
	} {
		var c cfg
		err := Load(&c, "t", tc.args, env(tc.env))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v %v: want error naming %s, got %v", tc.args, tc.env, tc.want, err)
		}
	}
}

func TestUnknownFileKey(t *testing.T) {
	file := filepath.Join(t.TempDir(), "c.yaml")
	if err := os.WriteFile(file, []byte("secret: s\nlistn: x\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var c cfg
	err := Load(&c, "t", nil, env(map[string]string{FileEnv: file}))
	if err == nil || !strings.Contains(err.Error(), "listn") {
		t.Fatalf("want unknown key error, got %v", err)
	}
}

func TestMarkdown(t *testing.T) {
	md := Markdown(Program{"a", &cfg{}}, Program{"b", &inner{}})
	for _, want := range []string{"`T_SECRET`", "required", "| `T_URL` | `--url` | a, b | `nats://x` |", "listen address",
		"| `T_WINDOW` | `--window` | a | `1h` |", "| `T_ON` | `--enabled` | a | `true` |", "| `T_SIZE` | `--size` | a | `1048576` |"} {
		if !strings.Contains(md, want) {
			t.Errorf("table lacks %q:\n%s", want, md)
		}
	}
}
