package bridge

import (
	"errors"
	"io"
	"net/http"
	"strconv"
)

// The body of a webhook: read within the limits (KREABUS_MAX_BODY, the
// NATS server's max_payload, KREABUS_BODY_BUDGET) into pooled buffers.

// Pool limits for body buffers.
const (
	initialBufSize = 4 << 10
	maxPooledBuf   = 64 << 10
)

// HeaderRoom is what the bridge keeps, under the NATS server's
// max_payload, for an event's headers (the request's metadata, up to
// 4 KiB, and the contract headers): a body larger than max_payload less
// HeaderRoom could never be stored, so it is refused with 413.
const HeaderRoom = 8 << 10

// limitAnswer is the 413 answer naming the body limit in force.
type limitAnswer struct {
	limit int
	a     *answer
}

// MaxBody is the body limit in force: KREABUS_MAX_BODY, lowered to what
// the NATS server takes (its max_payload less HeaderRoom) while connected
// to a server that takes less.
func (b *Bridge) MaxBody() int {
	limit := b.cfg.MaxBody
	if mp := b.nc.MaxPayload() - HeaderRoom; mp > 0 && mp < int64(limit) {
		limit = int(mp)
	}
	return limit
}

// tooLargeAnswer is the 413 answer for limit, made once per limit.
func (b *Bridge) tooLargeAnswer(limit int) *answer {
	if la := b.tooLarge.Load(); la != nil && la.limit == limit {
		return la.a
	}
	la := &limitAnswer{limit: limit, a: b.m.answer(http.StatusRequestEntityTooLarge, OutcomeTooLarge,
		"body larger than "+strconv.Itoa(limit)+" bytes")}
	b.tooLarge.Store(la)
	return la.a
}

// errBodyBudget: the body would take the webhooks in flight past
// KREABUS_BODY_BUDGET.
var errBodyBudget = errors.New("body budget exhausted")

// readBody reads the body into *bp, at most limit bytes: the limit is
// enforced while reading, so a large body is never buffered whole. Every
// byte of buffer it uses is first taken from the body budget and added to
// *held (the caller gives it back); errBodyBudget when the budget has no
// room.
func (b *Bridge) readBody(w http.ResponseWriter, r *http.Request, bp *[]byte, limit int, held *int64) ([]byte, error) {
	buf := (*bp)[:0]
	if cl := int(r.ContentLength); cl >= cap(buf) {
		if !b.bodies.take(int64(cl) + 1) {
			return nil, errBodyBudget
		}
		*held += int64(cl) + 1
		buf = make([]byte, 0, cl+1) // room for the read that sees EOF
	} else {
		if cl >= 0 {
			// A known length smaller than a pooled buffer (grown by an
			// earlier large body) takes only what it needs from the
			// budget, and from the buffer.
			buf = buf[: 0 : cl+1]
		}
		if !b.bodies.take(int64(cap(buf))) {
			return nil, errBodyBudget
		}
		*held += int64(cap(buf))
	}
	rd := http.MaxBytesReader(w, r.Body, int64(limit))
	for {
		if len(buf) == cap(buf) {
			// Unknown length (chunked): grow by doubling, never past
			// the limit (and the byte that sees EOF or the excess).
			grow := min(max(cap(buf), initialBufSize), limit+1-cap(buf))
			if grow <= 0 {
				grow = 1
			}
			if !b.bodies.take(int64(grow)) {
				keepBuf(bp, buf)
				return nil, errBodyBudget
			}
			*held += int64(grow)
			nb := make([]byte, len(buf), cap(buf)+grow)
			copy(nb, buf)
			buf = nb
		}
		n, err := rd.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err == io.EOF {
			break
		}
		if err != nil {
			keepBuf(bp, buf)
			return nil, err
		}
	}
	keepBuf(bp, buf)
	return buf, nil
}

// keepBuf keeps buf for the pool when it is a larger buffer than *bp; a
// pooled buffer cut down to a small body's length stays whole.
func keepBuf(bp *[]byte, buf []byte) {
	if cap(buf) > cap(*bp) {
		*bp = buf
	}
}

func (b *Bridge) putBuf(bp *[]byte) {
	if cap(*bp) > maxPooledBuf {
		return
	}
	*bp = (*bp)[:0]
	b.bufs.Put(bp)
}
