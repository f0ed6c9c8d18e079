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
		p := newPrefetch(io.MultiReader(bytes.NewReader(data[:size/2]), bytes.NewReader(data[size/2:])))
		got, err := io.ReadAll(p)
		p.Close()
		if err != nil || !bytes.Equal(got, data) {
			t.Errorf("size %d: got %d bytes, %v", size, len(got), err)
		}
	}
	boom := errors.New("boom")
	p := newPrefetch(io.MultiReader(bytes.NewReader(make([]byte, 3*chunkSize+5)), &failing{boom}))
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
