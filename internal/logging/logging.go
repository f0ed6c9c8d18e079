// Package logging builds the programs' slog loggers.
package logging

import (
	"fmt"
	"io"
	"log/slog"
	"strings"
)

// Defaults.
const (
	DefaultFormat = "json"
	DefaultLevel  = "info"
)

// Config holds the logging settings.
type Config struct {
	Format string `env:"KREABUS_LOG_FORMAT" flag:"log-format" usage:"log format: json or text"`
	Level  string `env:"KREABUS_LOG_LEVEL" flag:"log-level" usage:"log level: debug, info, warn or error"`
}

// SetDefaults fills the zero fields from the Default* constants.
func (c *Config) SetDefaults() {
	if c.Format == "" {
		c.Format = DefaultFormat
	}
	if c.Level == "" {
		c.Level = DefaultLevel
	}
}

// New returns a logger writing to w as the settings say.
func New(c Config, w io.Writer) (*slog.Logger, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(c.Level)); err != nil {
		return nil, fmt.Errorf("KREABUS_LOG_LEVEL: %q is not a level", c.Level)
	}
	o := &slog.HandlerOptions{Level: lvl}
	switch strings.ToLower(c.Format) {
	case "json", "":
		return slog.New(slog.NewJSONHandler(w, o)), nil
	case "text":
		return slog.New(slog.NewTextHandler(w, o)), nil
	}
	return nil, fmt.Errorf("KREABUS_LOG_FORMAT: %q is neither json nor text", c.Format)
}

// Discard is a logger that writes nothing, for tests and embedding.
var Discard = slog.New(slog.DiscardHandler)
