package clip

import (
	"strings"
	"testing"
	"unicode/utf8"
)

func TestString(t *testing.T) {
	for _, c := range []struct {
		s    string
		n    int
		want string
	}{
		{"", 3, ""},
		{"abc", 3, "abc"},
		{"abcd", 3, "abc…"},
		{"abcd", 0, "…"},
		{"héllo", 2, "h…"},  // é is 2 bytes: not cut in half
		{"héllo", 3, "hé…"}, // é fits
		{"日本語", 4, "日…"},
		{"日本語", 9, "日本語"},
		{"\xff\xfe", 1, "\xff…"}, // invalid bytes are not continuation bytes
	} {
		if got := String(c.s, c.n); got != c.want {
			t.Errorf("String(%q, %d) = %q, want %q", c.s, c.n, got, c.want)
		}
	}
	long := strings.Repeat("ü", 100)
	for n := range 40 {
		got := String(long, n)
		if !utf8.ValidString(got) || len(got) > n+len(Ellipsis) || !strings.HasSuffix(got, Ellipsis) {
			t.Errorf("String(ü×100, %d) = %q", n, got)
		}
	}
}
