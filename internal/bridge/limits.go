package bridge

import (
	"hash/maphash"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
)

// The bridge's memory is bounded by three limits, each checked without
// blocking and answered at once, so no load makes it grow:
//
//   - byteBudget: body bytes held by webhooks in flight
//     (KREABUS_BODY_BUDGET), so a thousand large bodies at once cannot
//     take a thousand times the largest body;
//   - tokenSlots: webhooks in flight per token
//     (KREABUS_MAX_IN_FLIGHT_PER_TOKEN), so one slow or leaked token
//     cannot take every in-flight slot from the others;
//   - connLimit: open connections (KREABUS_MAX_CONNS), each costing its
//     goroutine and buffers even while idle.

// byteBudget counts body bytes reserved by webhooks in flight.
type byteBudget struct {
	used atomic.Int64
	max  int64
}

// take reserves n bytes, or reports false and reserves nothing when that
// would go over the budget.
func (g *byteBudget) take(n int64) bool {
	if g.used.Add(n) > g.max {
		g.used.Add(-n)
		return false
	}
	return true
}

// give returns n reserved bytes.
func (g *byteBudget) give(n int64) { g.used.Add(-n) }

// tokenShards spreads tokenSlots over locks, so webhooks of different
// requests rarely wait for one another.
const tokenShards = 64

// tokenSlots counts webhooks in flight per request ID (the token's
// verified part). A map per shard holds only the IDs in flight now: an
// entry goes when its count drops to zero, so its size is bounded by
// KREABUS_MAX_IN_FLIGHT.
type tokenSlots struct {
	max    int32
	seed   maphash.Seed // per process: nobody can aim IDs at one shard
	shards [tokenShards]struct {
		mu sync.Mutex
		n  map[string]int32
		_  [40]byte // a cache line each
	}
}

func newTokenSlots(max int) *tokenSlots {
	s := &tokenSlots{max: int32(max), seed: maphash.MakeSeed()}
	for i := range s.shards {
		s.shards[i].n = make(map[string]int32)
	}
	return s
}

// acquire takes a slot for id, or reports false when id has all its slots.
func (s *tokenSlots) acquire(id string) bool {
	sh := &s.shards[maphash.String(s.seed, id)%tokenShards]
	sh.mu.Lock()
	n := sh.n[id]
	ok := n < s.max
	if ok {
		sh.n[id] = n + 1
	}
	sh.mu.Unlock()
	return ok
}

// release gives back a slot acquire took.
func (s *tokenSlots) release(id string) {
	sh := &s.shards[maphash.String(s.seed, id)%tokenShards]
	sh.mu.Lock()
	if n := sh.n[id]; n <= 1 {
		delete(sh.n, id)
	} else {
		sh.n[id] = n - 1
	}
	sh.mu.Unlock()
}

// connLimit bounds open connections through the server's ConnState hook:
// a connection beyond max is closed as soon as it is accepted, before a
// byte is read; while more than half of max are open, a keep-alive
// connection that turns idle is closed instead of kept, so idle
// connections cannot crowd out working ones.
type connLimit struct {
	open    atomic.Int64
	max     int64
	refused atomic.Uint64 // closed at accept, for the metric
}

func (l *connLimit) hook(c net.Conn, st http.ConnState) {
	switch st {
	case http.StateNew:
		if l.open.Add(1) > l.max {
			l.refused.Add(1)
			_ = c.Close() // the server sees the read fail and ends it: StateClosed
		}
	case http.StateIdle:
		if l.open.Load() > l.max/2 {
			_ = c.Close()
		}
	case http.StateClosed, http.StateHijacked:
		l.open.Add(-1)
	}
}
