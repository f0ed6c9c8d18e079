package jsonscan

import (
	"encoding/binary"
	"math/bits"
	"testing"
)

// TestSpecial: the eight-byte test finds the first byte the table says is
// not plain, whatever byte stands at whatever place among plain ones, and
// with two such bytes.
func TestSpecial(t *testing.T) {
	for p := range 8 {
		for c := range 256 {
			for _, fill := range []byte{'a', ' ', '~', 0x21} {
				var b [8]byte
				for i := range b {
					b[i] = fill
				}
				b[p] = byte(c)
				if got := first(b); (got < 8) != !plain[c] || (got < 8 && got != p) {
					t.Fatalf("byte %#x at %d among %q: special %v", c, p, fill, got)
				}
				for q := p + 1; q < 8; q++ {
					for _, d := range []byte{0, 0x1f, 0x20, '"', '\\', 0x7f, 0x80, 0xff} {
						b2 := b
						b2[q] = d
						want := 8
						if !plain[d] {
							want = q
						}
						if !plain[c] {
							want = p
						}
						if got := first(b2); got != want {
							t.Fatalf("%q: special %v", b2, got)
						}
					}
				}
			}
		}
	}
}

// first is the place of the first byte special marks in b, 8 for none.
func first(b [8]byte) int {
	return bits.TrailingZeros64(special(binary.LittleEndian.Uint64(b[:]))) >> 3
}
