package mirror

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"testing"
)

// TestPrefetch: the bytes come through unchanged whatever the sizes, and a
// read error comes after the bytes read before it.
func TestPrefetch(t *testing.T) {
	for _, size := range []int{0, 1, chunkSize - 1, chunkSize, chunkSize + 1, 7*chunkSize + 12345} {
		data := make([]byte, size)
		for i := range data {
			data[i] = byte(rand.N(256))
		}
		p := newPrefetch(io.MultiReader(bytes.NewReader(data[:size/2]), bytes.NewReader(data[size/2:])), chunkSize)
		got, err := io.ReadAll(p)
		p.Close()
		if err != nil || !bytes.Equal(got, data) {
			t.Errorf("size %d: got %d bytes, %v", size, len(got), err)
		}
	}
	boom := errors.New("boom")
	p := newPrefetch(io.MultiReader(bytes.NewReader(make([]byte, 3*chunkSize+5)), &failing{boom}), chunkSize)
	defer p.Close()
	n, err := io.Copy(io.Discard, p)
	if n != 3*chunkSize+5 || !errors.Is(err, boom) {
		t.Errorf("copied %d, %v; want %d then boom", n, err, 3*chunkSize+5)
	}
	if _, err := p.Read(make([]byte, 10)); !errors.Is(err, boom) {
		t.Errorf("read after the error: %v", err)
	}
}

type failing struct{ err error }

func (f *failing) Read([]byte) (int, error) { return 0, f.err }

// chunkSize is the chunk the prefetch tests read in.
const chunkSize = defaultChunkSize

func TestChunkSizeFor(t *testing.T) {
	for maxPayload, want := range map[int64]int{
		0:         defaultChunkSize, // not connected yet
		1 << 20:   maxChunkSize,     // the server's default max_payload
		8 << 20:   maxChunkSize,
		256 << 10: 256<<10 - chunkRoom,
		64 << 10:  64<<10 - chunkRoom,
	} {
		if got := chunkSizeFor(maxPayload); got != want {
			t.Errorf("max_payload %d: chunk %d, want %d", maxPayload, got, want)
		}
	}
}
