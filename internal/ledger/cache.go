package ledger

import (
	"bytes"
	"encoding/json"
	"sync"
	"unsafe"
)

// jobFacts is what the cache keeps of a job: who owns it, whether it is
// settled (terminal), whether it is extra, and its request's metadata.
type jobFacts struct {
	owner    string
	terminal bool
	extra    bool
	metadata json.RawMessage
}

func (f jobFacts) ownership(requestID string) Ownership {
	if f.owner != "" && requestID != "" && f.owner != requestID {
		return Ownership{Foreign: true, Terminal: f.terminal}
	}
	return Ownership{Terminal: f.terminal, Extra: f.extra, Metadata: f.metadata}
}

// jobCache is a bounded cache of jobFacts by job ID, built to hold many
// jobs in little memory without work for the garbage collector: keys are
// the 16 bytes of the job's UUID (a job whose ID is not a UUID is simply not
// cached), and each entry is 8 bytes of offsets into an append-only byte
// arena holding the owner and the metadata, so neither maps nor arenas hold
// pointers. It is sharded, and each shard has two generations: when the
// current one is full (entries or arena bytes), the old one is dropped
// whole, arena included, and a new one begun; a hit in the old generation
// moves up. What it holds is bounded by its size in entries and by
// maxBytesPerEntry bytes per entry on average.
type jobCache struct {
	per      int // entries per generation and shard; 0: no cache
	perBytes int // arena bytes per generation and shard
	shards   [cacheShards]cacheShard
}

const (
	cacheShards = 16
	// maxBytesPerEntry is the arena budget per entry: a UUID owner and
	// ~100 bytes of metadata. Jobs with more share the budget; the
	// generation turns over sooner.
	maxBytesPerEntry = 160
	// typicalBytesPerEntry sizes a new arena: a UUID owner and ~50 bytes
	// of metadata.
	typicalBytesPerEntry = 96
	// Bounds of one entry's parts (entries beyond are not cached).
	maxCachedOwner    = 255
	maxCachedMetadata = 1<<16 - 1
)

type cacheKey [16]byte

type cacheEntry struct {
	off      uint32 // owner, then metadata, in the generation's arena
	mdLen    uint16
	ownerLen uint8
	flags    uint8
}

const (
	flagTerminal = 1 << iota
	flagExtra
)

type generation struct {
	m     map[cacheKey]cacheEntry
	arena []byte
}

type cacheShard struct {
	mu       sync.Mutex
	cur, old generation
}

func newJobCache(size int) *jobCache {
	c := &jobCache{}
	if size > 0 {
		c.per = max(1, size/(2*cacheShards))
		c.perBytes = c.per * maxBytesPerEntry
	}
	return c
}

func (c *jobCache) off() bool { return c.per == 0 }

// cacheKeyOf parses a canonical UUID (8-4-4-4-12 hex digits, either case).
func cacheKeyOf(id string) (cacheKey, bool) {
	var k cacheKey
	if len(id) != 36 || id[8] != '-' || id[13] != '-' || id[18] != '-' || id[23] != '-' {
		return k, false
	}
	j := 0
	for i := 0; i < 36; {
		if id[i] == '-' {
			i++
			continue
		}
		hi, ok1 := hexVal(id[i])
		lo, ok2 := hexVal(id[i+1])
		if !ok1 || !ok2 {
			return k, false
		}
		k[j] = hi<<4 | lo
		j++
		i += 2
	}
	return k, true
}

func hexVal(c byte) (byte, bool) {
	switch {
	case c >= '0' && c <= '9':
		return c - '0', true
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10, true
	case c >= 'A' && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

func (c *jobCache) shard(k cacheKey) *cacheShard {
	return &c.shards[int(k[15]^k[7])%cacheShards]
}

// view returns the facts of e, whose bytes are in arena. The strings and
// slices point into the arena, whose bytes are never written again.
func view(e cacheEntry, arena []byte) jobFacts {
	f := jobFacts{terminal: e.flags&flagTerminal != 0, extra: e.flags&flagExtra != 0}
	if e.ownerLen > 0 {
		f.owner = unsafe.String(&arena[e.off], int(e.ownerLen))
	}
	if e.mdLen > 0 {
		start := int(e.off) + int(e.ownerLen)
		f.metadata = json.RawMessage(arena[start : start+int(e.mdLen) : start+int(e.mdLen)])
	}
	return f
}

func (c *jobCache) get(id string) (jobFacts, bool) {
	k, ok := cacheKeyOf(id)
	if c.off() || !ok {
		return jobFacts{}, false
	}
	s := c.shard(k)
	s.mu.Lock()
	defer s.mu.Unlock()
	if e, ok := s.cur.m[k]; ok {
		return view(e, s.cur.arena), true
	}
	e, ok := s.old.m[k]
	if !ok {
		return jobFacts{}, false
	}
	f := view(e, s.old.arena)
	delete(s.old.m, k)
	c.putLocked(s, k, f)
	return f, true
}

// put stores f for id; a terminal entry is never replaced by one that is
// not (a job never leaves a terminal state; an older record may come late).
func (c *jobCache) put(id string, f jobFacts) {
	k, ok := cacheKeyOf(id)
	if c.off() || !ok || len(f.owner) > maxCachedOwner || len(f.metadata) > maxCachedMetadata {
		return
	}
	s := c.shard(k)
	s.mu.Lock()
	defer s.mu.Unlock()
	if e, ok := s.cur.m[k]; ok {
		if e.flags&flagTerminal != 0 && !f.terminal {
			return
		}
		if cf := view(e, s.cur.arena); cf.owner == f.owner && bytes.Equal(cf.metadata, f.metadata) {
			// The same job settling (its webhook stored): new flags only,
			// no new bytes.
			e.flags = 0
			if f.terminal {
				e.flags |= flagTerminal
			}
			if f.extra {
				e.flags |= flagExtra
			}
			s.cur.m[k] = e
			return
		}
	}
	if e, ok := s.old.m[k]; ok {
		if e.flags&flagTerminal != 0 && !f.terminal {
			f = view(e, s.old.arena)
		}
		delete(s.old.m, k)
	}
	c.putLocked(s, k, f)
}

func (c *jobCache) putLocked(s *cacheShard, k cacheKey, f jobFacts) {
	need := len(f.owner) + len(f.metadata)
	if _, ok := s.cur.m[k]; s.cur.m == nil || (!ok && len(s.cur.m) >= c.per) || len(s.cur.arena)+need > c.perBytes {
		s.old = s.cur
		s.cur = generation{m: make(map[cacheKey]cacheEntry, c.per), arena: make([]byte, 0, c.per*typicalBytesPerEntry)}
	}
	e := cacheEntry{off: uint32(len(s.cur.arena)), ownerLen: uint8(len(f.owner)), mdLen: uint16(len(f.metadata))}
	if f.terminal {
		e.flags |= flagTerminal
	}
	if f.extra {
		e.flags |= flagExtra
	}
	s.cur.arena = append(s.cur.arena, f.owner...)
	s.cur.arena = append(s.cur.arena, f.metadata...)
	s.cur.m[k] = e
}

func (c *jobCache) remove(id string) {
	k, ok := cacheKeyOf(id)
	if c.off() || !ok {
		return
	}
	s := c.shard(k)
	s.mu.Lock()
	delete(s.cur.m, k)
	delete(s.old.m, k)
	s.mu.Unlock()
}

// clear empties the cache.
func (c *jobCache) clear() {
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.Lock()
		s.cur, s.old = generation{}, generation{}
		s.mu.Unlock()
	}
}

// len is the number of entries, for tests.
func (c *jobCache) len() int {
	n := 0
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.Lock()
		n += len(s.cur.m) + len(s.old.m)
		s.mu.Unlock()
	}
	return n
}
