package loadgen

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// CeilingConfig describes a JetStream publish ceiling measurement, the
// in-process equivalent of `nats bench js pub sync`: Clients connections,
// each publishing synchronously (one message in flight) to a fresh
// file-storage stream.
type CeilingConfig struct {
	// URL of the NATS server(s), comma separated.
	URL      string
	Clients  int
	Duration time.Duration
	Warmup   time.Duration
	// Size of each message's payload in bytes.
	Size     int
	Replicas int
	// Dedup sets a unique Nats-Msg-Id on every message, as the bridge
	// does (natscli's --dedup).
	Dedup bool
	// Stream and Subject of the benchmark stream (recreated).
	Stream  string
	Subject string
	// OnMeasureStart is called once when the warmup ends.
	OnMeasureStart func()
}

// CeilingReport is the measured JetStream publish ceiling.
type CeilingReport struct {
	Clients    int     `json:"clients"`
	Size       int     `json:"size"`
	Replicas   int     `json:"replicas"`
	Dedup      bool    `json:"dedup"`
	Elapsed    Millis  `json:"elapsed_ms"`
	Msgs       int64   `json:"msgs"`
	Throughput float64 `json:"throughput_msgs_per_s"`
	Latency    Latency `json:"latency"`
	Errors     int64   `json:"errors"`
	// NATSCommand is the natscli v0.5.0 command measuring the same.
	NATSCommand string     `json:"nats_command"`
	NATS        *ProcUsage `json:"nats_server,omitempty"`
}

// Ceiling measures how many synchronous JetStream publishes per second
// the server takes from cfg.Clients clients.
func Ceiling(ctx context.Context, cfg CeilingConfig) (*CeilingReport, error) {
	if cfg.Clients <= 0 {
		cfg.Clients = 64
	}
	if cfg.Duration <= 0 {
		cfg.Duration = 10 * time.Second
	}
	if cfg.Size <= 0 {
		cfg.Size = DefaultBodySize
	}
	if cfg.Replicas <= 0 {
		cfg.Replicas = 1
	}
	if cfg.Stream == "" {
		cfg.Stream = "KREABUS_BENCH"
	}
	if cfg.Subject == "" {
		cfg.Subject = "kreabus.bench"
	}
	admin, err := nats.Connect(cfg.URL)
	if err != nil {
		return nil, err
	}
	defer admin.Close()
	ajs, err := jetstream.New(admin)
	if err != nil {
		return nil, err
	}
	if err := ajs.DeleteStream(ctx, cfg.Stream); err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil, err
	}
	if _, err := ajs.CreateStream(ctx, jetstream.StreamConfig{
		Name:       cfg.Stream,
		Subjects:   []string{cfg.Subject},
		Storage:    jetstream.FileStorage,
		Replicas:   cfg.Replicas,
		Duplicates: time.Hour,
	}); err != nil {
		return nil, fmt.Errorf("create %s: %w", cfg.Stream, err)
	}
	defer func() { _ = ajs.DeleteStream(context.Background(), cfg.Stream) }()

	conns := make([]*nats.Conn, cfg.Clients)
	defer func() {
		for _, nc := range conns {
			if nc != nil {
				nc.Close()
			}
		}
	}()
	for i := range conns {
		if conns[i], err = nats.Connect(cfg.URL); err != nil {
			return nil, err
		}
	}
	payload := []byte(strings.Repeat("k", cfg.Size))
	hist := new(Histogram)
	var msgs, errs, lastEnd atomic.Int64
	var measuring atomic.Bool
	start := time.Now()
	measureStart := start.Add(cfg.Warmup)
	end := measureStart.Add(cfg.Duration)
	time.AfterFunc(cfg.Warmup, func() {
		if cfg.OnMeasureStart != nil {
			cfg.OnMeasureStart()
		}
		measuring.Store(true)
	})
	var wg sync.WaitGroup
	for i, nc := range conns {
		js, err := jetstream.New(nc)
		if err != nil {
			return nil, err
		}
		prefix := "c" + strconv.Itoa(i) + "-" + strconv.FormatInt(start.UnixNano(), 36) + "-"
		wg.Go(func() {
			for n := 0; ctx.Err() == nil; n++ {
				t0 := time.Now()
				if !t0.Before(end) {
					return
				}
				m := &nats.Msg{Subject: cfg.Subject, Data: payload}
				if cfg.Dedup {
					m.Header = nats.Header{jetstream.MsgIDHeader: []string{prefix + strconv.Itoa(n)}}
				}
				pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
				_, err := js.PublishMsg(pctx, m)
				cancel()
				t1 := time.Now()
				if !measuring.Load() || t0.Before(measureStart) {
					continue
				}
				if err != nil {
					errs.Add(1)
					continue
				}
				msgs.Add(1)
				hist.Record(t1.Sub(t0))
				for {
					cur := lastEnd.Load()
					if t1.UnixNano() <= cur || lastEnd.CompareAndSwap(cur, t1.UnixNano()) {
						break
					}
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Duration(lastEnd.Load() - measureStart.UnixNano())
	if elapsed <= 0 {
		elapsed = time.Since(measureStart)
	}
	r := &CeilingReport{
		Clients:    cfg.Clients,
		Size:       cfg.Size,
		Replicas:   cfg.Replicas,
		Dedup:      cfg.Dedup,
		Elapsed:    Millis(elapsed),
		Msgs:       msgs.Load(),
		Throughput: float64(msgs.Load()) / elapsed.Seconds(),
		Latency:    Summarize(hist),
		Errors:     errs.Load(),
	}
	r.NATSCommand = NATSBenchCommand(cfg.URL, cfg.Clients, cfg.Size, cfg.Replicas, cfg.Dedup, int64(r.Throughput*cfg.Duration.Seconds()))
	return r, nil
}

// NATSBenchCommand is the natscli (v0.5.0) command that measures the same
// ceiling: `nats bench js pub sync` with one synchronous publisher per
// client on a fresh file-storage stream. msgs is the total to publish
// (natscli runs by count; pick about rate × duration).
func NATSBenchCommand(url string, clients, size, replicas int, dedup bool, msgs int64) string {
	if msgs < int64(clients)*100 {
		msgs = int64(clients) * 100
	}
	// Round to two significant digits for a readable command.
	for p := int64(1); ; p *= 10 {
		if msgs < p*100 {
			msgs = (msgs + p - 1) / p * p
			break
		}
	}
	cmd := fmt.Sprintf("nats bench js pub sync kreabus.bench --server %s --create --purge --storage file --replicas %d --clients %d --size %d --msgs %d --no-progress",
		url, replicas, clients, size, msgs)
	if dedup {
		cmd += " --dedup --dedupwindow 1h"
	}
	return cmd
}

// WriteText prints the ceiling for humans.
func (r *CeilingReport) WriteText(w io.Writer) {
	dedup := "no msg id"
	if r.Dedup {
		dedup = "unique Nats-Msg-Id"
	}
	fmt.Fprintf(w, "ceiling: JetStream sync publish, %d clients, %d B, R%d, %s: %.0f msgs/s over %s, %d errors\n",
		r.Clients, r.Size, r.Replicas, dedup, r.Throughput, r.Elapsed, r.Errors)
	fmt.Fprintf(w, "  latency    %s\n", r.Latency)
	if r.NATS != nil {
		fmt.Fprintf(w, "  nats-server %s\n", r.NATS)
	}
	fmt.Fprintf(w, "  natscli    %s\n", r.NATSCommand)
}
