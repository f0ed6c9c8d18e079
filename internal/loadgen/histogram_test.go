package loadgen

import (
	"math"
	"math/rand/v2"
	"sort"
	"sync"
	"testing"
	"time"
)

func TestHistogramExactSmallValues(t *testing.T) {
	var h Histogram
	for v := 1; v <= 100; v++ {
		h.Record(time.Duration(v))
	}
	for _, c := range []struct {
		q    float64
		want time.Duration
	}{{50, 50}, {90, 90}, {99, 99}, {99.9, 100}, {100, 100}, {1, 1}} {
		if got := h.Percentile(c.q); got != c.want {
			t.Errorf("p%v = %v, want %v", c.q, got, c.want)
		}
	}
	if h.Min() != 1 || h.Max() != 100 || h.Count() != 100 {
		t.Errorf("min %v max %v count %d", h.Min(), h.Max(), h.Count())
	}
	if h.Mean() != 50 { // 5050/100 rounded down
		t.Errorf("mean %v", h.Mean())
	}
}

func TestHistogramRelativeError(t *testing.T) {
	var h Histogram
	rng := rand.New(rand.NewPCG(1, 2))
	samples := make([]time.Duration, 200000)
	for i := range samples {
		// Log-uniform from 10 µs to 10 s, like real latencies.
		v := time.Duration(float64(10*time.Microsecond) * math.Pow(10, rng.Float64()*6))
		samples[i] = v
		h.Record(v)
	}
	sort.Slice(samples, func(i, j int) bool { return samples[i] < samples[j] })
	for _, q := range []float64{50, 90, 99, 99.9, 99.99} {
		rank := int(math.Ceil(q/100*float64(len(samples)))) - 1
		exact := samples[rank]
		got := h.Percentile(q)
		if got < exact || float64(got-exact) > float64(exact)/subCount+1 {
			t.Errorf("p%v = %v, exact %v: off by more than 1/%d", q, got, exact, subCount)
		}
	}
	if h.Max() != samples[len(samples)-1] || h.Min() != samples[0] {
		t.Errorf("min/max %v/%v, want %v/%v", h.Min(), h.Max(), samples[0], samples[len(samples)-1])
	}
	if h.Percentile(100) != h.Max() {
		t.Errorf("p100 %v != max %v", h.Percentile(100), h.Max())
	}
}

func TestHistogramBuckets(t *testing.T) {
	// Every bucket's range is contiguous with the next, and values map into
	// the bucket whose range holds them.
	for i := 0; i < numBuckets-1; i++ {
		hi := bucketHigh(i)
		if bucketOf(hi) != i || bucketOf(hi+1) != i+1 {
			t.Fatalf("bucket %d: high %d maps to %d, next to %d", i, hi, bucketOf(hi), bucketOf(hi+1))
		}
	}
	if b := bucketOf(1<<63 - 1); b >= numBuckets {
		t.Fatalf("max int64 maps to bucket %d of %d", b, numBuckets)
	}
}

func TestHistogramEmptyAndConcurrent(t *testing.T) {
	var h Histogram
	if h.Percentile(99) != 0 || h.Max() != 0 || h.Min() != 0 || h.Mean() != 0 {
		t.Fatal("empty histogram not zero")
	}
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Go(func() {
			for i := 1; i <= 1000; i++ {
				h.Record(time.Duration(i) * time.Microsecond)
			}
		})
	}
	wg.Wait()
	if h.Count() != 8000 || h.Max() != time.Millisecond || h.Min() != time.Microsecond {
		t.Fatalf("count %d max %v min %v", h.Count(), h.Max(), h.Min())
	}
	h.Record(-5)
	if h.Min() != 0 {
		t.Fatalf("negative sample: min %v", h.Min())
	}
}
