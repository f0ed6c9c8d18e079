package loadgen

import (
	"math"
	"math/bits"
	"sync/atomic"
	"time"
)

// subBits sets the histogram's precision: every power of two is split into
// 2^subBits linear buckets, so a recorded value is off by at most
// 1/2^subBits (0.4 %) of itself. Values below 2^subBits ns are exact.
const subBits = 8

const (
	subCount   = 1 << subBits
	numBuckets = (64 - subBits + 1) * subCount
)

// Histogram is a log-linear latency histogram in the manner of HdrHistogram:
// fixed memory (about 114 KiB), lock-free Record, bounded relative error. The zero
// value is ready to use and safe for concurrent use.
type Histogram struct {
	counts [numBuckets]atomic.Uint64
	n      atomic.Uint64
	sum    atomic.Uint64
	min    atomic.Int64 // stored as value+1 so 0 means unset
	max    atomic.Int64
}

func bucketOf(v uint64) int {
	if v < subCount {
		return int(v)
	}
	shift := bits.Len64(v) - subBits - 1
	return (shift+1)*subCount + int(v>>uint(shift)) - subCount
}

// bucketHigh is the largest value that falls into bucket i.
func bucketHigh(i int) uint64 {
	if i < subCount {
		return uint64(i)
	}
	shift := i/subCount - 1
	mant := uint64(i%subCount + subCount)
	return (mant+1)<<uint(shift) - 1
}

// Record adds one duration. Negative durations count as zero.
func (h *Histogram) Record(d time.Duration) {
	v := int64(d)
	if v < 0 {
		v = 0
	}
	h.counts[bucketOf(uint64(v))].Add(1)
	h.n.Add(1)
	h.sum.Add(uint64(v))
	for {
		cur := h.max.Load()
		if v <= cur || h.max.CompareAndSwap(cur, v) {
			break
		}
	}
	for {
		cur := h.min.Load()
		if (cur != 0 && v+1 >= cur) || h.min.CompareAndSwap(cur, v+1) {
			break
		}
	}
}

// Count is the number of recorded samples.
func (h *Histogram) Count() uint64 { return h.n.Load() }

// Max is the largest recorded sample (exact).
func (h *Histogram) Max() time.Duration { return time.Duration(h.max.Load()) }

// Min is the smallest recorded sample (exact), 0 when empty.
func (h *Histogram) Min() time.Duration {
	if v := h.min.Load(); v > 0 {
		return time.Duration(v - 1)
	}
	return 0
}

// Mean is the arithmetic mean of the samples (exact).
func (h *Histogram) Mean() time.Duration {
	n := h.n.Load()
	if n == 0 {
		return 0
	}
	return time.Duration(h.sum.Load() / n)
}

// Percentile returns the value at or below which q percent (0 < q ≤ 100) of
// the samples fall: the highest value equivalent to the bucket holding the
// sample of that rank, never above the exact maximum. 0 when empty.
func (h *Histogram) Percentile(q float64) time.Duration {
	n := h.n.Load()
	if n == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q / 100 * float64(n)))
	if rank < 1 {
		rank = 1
	}
	if rank > n {
		rank = n
	}
	var seen uint64
	for i := range h.counts {
		seen += h.counts[i].Load()
		if seen >= rank {
			v := time.Duration(bucketHigh(i))
			if m := h.Max(); v > m {
				v = m
			}
			return v
		}
	}
	return h.Max()
}
