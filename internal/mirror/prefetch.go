package mirror

import (
	"io"
	"sync"
)

// Read-ahead of a download. The Object Store's Put reads a chunk, then
// publishes it; reading the next chunk from the network while one is being
// published overlaps the two, which is what lets a copy run about as fast
// as the slower of download and store rather than their sum. Memory stays
// bounded: depth+1 buffers of one chunk each.
const (
	// maxChunkSize is the largest object chunk: fewer, larger messages
	// copy 100 MiB about a quarter faster than the Object Store's default
	// 128 KiB (BENCHMARKS.md), and five buffers of it stay small.
	maxChunkSize = 512 << 10
	// defaultChunkSize is the Object Store's default chunk, for a server
	// whose max_payload is not known yet.
	defaultChunkSize = 128 << 10
	// chunkRoom is what a chunk leaves under max_payload for the message's
	// subject and protocol line.
	chunkRoom     = 4 << 10
	prefetchDepth = 4
)

// chunkSizeFor is the chunk to store objects in on a server taking
// maxPayload bytes per message.
func chunkSizeFor(maxPayload int64) int {
	if maxPayload <= 0 {
		return defaultChunkSize
	}
	return int(max(1<<10, min(maxChunkSize, maxPayload-chunkRoom)))
}

type prefetch struct {
	ch       chan filled
	free     chan []byte
	stop     chan struct{}
	stopOnce sync.Once

	cur  []byte // being handed out
	buf  []byte // cur's buffer, back to free once handed out
	err  error  // what follows cur
	done bool
}

type filled struct {
	b   []byte
	err error
}

// newPrefetch reads r ahead in a goroutine that ends at r's end or error,
// or once Close is called and r's Read returns (close r after Close).
func newPrefetch(r io.Reader, chunk int) *prefetch {
	p := &prefetch{
		ch:   make(chan filled, prefetchDepth),
		free: make(chan []byte, prefetchDepth+1),
		stop: make(chan struct{}),
	}
	for range prefetchDepth + 1 {
		p.free <- make([]byte, chunk)
	}
	go func() {
		defer close(p.ch)
		for {
			var b []byte
			select {
			case b = <-p.free:
			case <-p.stop:
				return
			}
			n, err := io.ReadFull(r, b)
			if err == io.ErrUnexpectedEOF {
				err = io.EOF // a short last chunk
			}
			select {
			case p.ch <- filled{b[:n], err}:
			case <-p.stop:
				return
			}
			if err != nil {
				return
			}
		}
	}()
	return p
}

func (p *prefetch) Read(dst []byte) (int, error) {
	for len(p.cur) == 0 {
		if p.done {
			return 0, p.err
		}
		if p.err != nil {
			p.done = true
			return 0, p.err
		}
		if p.buf != nil {
			p.free <- p.buf[:cap(p.buf)]
			p.buf = nil
		}
		f, ok := <-p.ch
		if !ok {
			p.done, p.err = true, io.ErrUnexpectedEOF // cannot happen: the last chunk carries the error
			return 0, p.err
		}
		p.cur, p.buf, p.err = f.b, f.b, f.err
	}
	n := copy(dst, p.cur)
	p.cur = p.cur[n:]
	return n, nil
}

// Close stops reading ahead.
func (p *prefetch) Close() { p.stopOnce.Do(func() { close(p.stop) }) }
