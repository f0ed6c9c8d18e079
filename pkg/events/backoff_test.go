package events_test

import (
	"testing"
	"time"

	"github.com/kreabus/kreabus/pkg/events"
)

func TestBackoff(t *testing.T) {
	b := events.Backoff{Min: time.Second, Max: 10 * time.Second}
	for n, want := range map[uint64]time.Duration{0: time.Second, 1: time.Second, 2: 2 * time.Second, 3: 4 * time.Second, 4: 8 * time.Second, 5: 10 * time.Second, 1 << 40: 10 * time.Second} {
		if got := b.Ceiling(n); got != want {
			t.Errorf("Ceiling(%d) = %v, want %v", n, got, want)
		}
		for range 100 {
			if d := b.Delay(n); d < want/2 || d > want {
				t.Fatalf("Delay(%d) = %v outside [%v, %v]", n, d, want/2, want)
			}
		}
	}
	if err := (events.Backoff{Min: 2, Max: 1}).Validate(); err == nil {
		t.Error("Validate accepted Min > Max")
	}
	if err := (events.Backoff{}).Validate(); err == nil {
		t.Error("Validate accepted a zero Backoff")
	}
}
