package bridge

import (
	"errors"
	"testing"
)

func TestConfigDefaults(t *testing.T) {
	var c Config
	c.SetDefaults()
	if err := c.Validate(); !errors.Is(err, ErrNoSecret) {
		t.Fatalf("Validate without secret: %v", err)
	}
	c.Secret = "x"
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	want := Config{Secret: "x", Listen: DefaultListen, MaxBody: DefaultMaxBody, PublishTimeout: DefaultPublishTimeout,
		MaxInFlight: DefaultMaxInFlight, MaxInFlightPerToken: DefaultMaxInFlightPerToken, BodyBudget: DefaultBodyBudget,
		MaxConns: DefaultMaxConns, ReadHeaderTimeout: DefaultReadHeaderTimeout, ReadTimeout: DefaultReadTimeout,
		WriteTimeout: DefaultWriteTimeout, IdleTimeout: DefaultIdleTimeout, MaxHeaderBytes: DefaultMaxHeaderBytes}
	if c != want {
		t.Errorf("defaults %+v", c)
	}
}
