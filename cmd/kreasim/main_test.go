package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"io"
	"testing"
	"time"

	"github.com/kreabus/kreabus/pkg/krea"
	"github.com/kreabus/kreabus/pkg/krea/kreatest"
)

func env(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func TestParseConfig(t *testing.T) {
	cfg, listen, err := parseConfig([]string{
		"-listen", ":9999", "-run-time", "2s", "-concurrency", "3", "-rate-429", "0.25",
		"-retired", "/generate/image/bfl/flux-1, /generate/video/kling/kling-1", "-seed", "7",
		"-late-webhook-delay", "1s", "-out-of-credits",
	}, env(map[string]string{"KREA_API_TOKEN": "from-env"}), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if listen != ":9999" || cfg.Token != "from-env" || cfg.RunTime != 2*time.Second || cfg.Concurrency != 3 ||
		cfg.Faults.Rate429 != 0.25 || len(cfg.Retired) != 2 || cfg.Seed != 7 || !cfg.Faults.OutOfCredits ||
		cfg.Faults.LateWebhookDelay != time.Second {
		t.Errorf("cfg = %+v, listen %q", cfg, listen)
	}
	cfg, _, err = parseConfig([]string{"-token", "flag"}, env(map[string]string{"KREA_API_TOKEN": "env"}), io.Discard)
	if err != nil || cfg.Token != "flag" {
		t.Errorf("flag should beat env: %q, %v", cfg.Token, err)
	}
	if _, _, err := parseConfig([]string{"-nope"}, env(nil), io.Discard); err == nil {
		t.Error("unknown flag accepted")
	}
	if _, _, err := parseConfig([]string{"extra"}, env(nil), io.Discard); err == nil {
		t.Error("stray argument accepted")
	}
	if _, _, err := parseConfig([]string{"-h"}, env(nil), io.Discard); !errors.Is(err, flag.ErrHelp) {
		t.Errorf("-h: %v", err)
	}
}

func TestRunServesAndStops(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ready := make(chan string, 1)
	errc := make(chan error, 1)
	var logs bytes.Buffer
	go func() {
		errc <- run(ctx, []string{"-listen", "127.0.0.1:0", "-queue-time", "-1ns", "-run-time", "-1ns"},
			env(map[string]string{"KREA_API_TOKEN": "sim-token"}), &logs, ready)
	}()
	var addr string
	select {
	case addr = <-ready:
	case err := <-errc:
		t.Fatal(err)
	case <-time.After(5 * time.Second):
		t.Fatal("not ready")
	}
	c, err := krea.NewClient("sim-token", krea.WithBaseURL("http://"+addr))
	if err != nil {
		t.Fatal(err)
	}
	res, err := c.Submit(ctx, "/generate/image/bfl/flux-1-dev", json.RawMessage(`{"prompt":"x"}`))
	if err != nil {
		t.Fatal(err)
	}
	kreatest.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		j, err := c.GetJob(ctx, res.Job.JobID)
		if err != nil {
			return err
		}
		if j.Status != krea.StatusCompleted {
			return errors.New(string(j.Status))
		}
		return nil
	})
	cancel()
	select {
	case err := <-errc:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("run did not stop")
	}
	// log.Logger serialises its writes and run has returned: safe to read.
	if !bytes.Contains(logs.Bytes(), []byte("simulating the Krea API on http://"+addr)) || bytes.Contains(logs.Bytes(), []byte("sim-token")) {
		t.Errorf("logs: %s", logs.String())
	}
}

func TestRunRejectsBadConfig(t *testing.T) {
	err := run(context.Background(), []string{"-rate-5xx", "2"}, env(nil), io.Discard, nil)
	if err == nil {
		t.Fatal("accepted a rate of 2")
	}
}
