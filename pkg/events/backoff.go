package events

import (
	"fmt"
	"math/rand/v2"
	"time"
)

// Backoff is kreabus's one policy for "try again later": the delay before
// attempt n+1 (n counts from 1) is Min doubled for every attempt after the
// first, capped at Max, then jittered into its upper half so replicas that
// failed together do not retry together. The same policy sets the
// redelivery delay of a message a handler could not process (n is its
// delivery count) and the pause between in-process retries.
type Backoff struct {
	// Min is the delay after the first failure.
	Min time.Duration
	// Max caps the delay.
	Max time.Duration
}

// DefaultBackoff is the redelivery policy of ConsumeJobs.
var DefaultBackoff = Backoff{Min: DefaultBackoffMin, Max: DefaultBackoffMax}

// Validate reports whether 0 < Min <= Max.
func (b Backoff) Validate() error {
	if b.Min <= 0 || b.Max < b.Min {
		return fmt.Errorf("backoff needs 0 < min <= max, got %v, %v", b.Min, b.Max)
	}
	return nil
}

// Ceiling is the delay after failure n before jitter: Min·2^(n-1), at most
// Max. n below 1 counts as 1.
func (b Backoff) Ceiling(n uint64) time.Duration {
	d := b.Min
	for i := uint64(1); i < n; i++ {
		if d >= b.Max/2 {
			return b.Max
		}
		d *= 2
	}
	return min(d, b.Max)
}

// Delay is the delay after failure n: uniformly random in
// [Ceiling(n)/2, Ceiling(n)].
func (b Backoff) Delay(n uint64) time.Duration {
	c := b.Ceiling(n)
	if c <= 1 {
		return c
	}
	return c/2 + rand.N(c-c/2+1)
}
