package krea

import (
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/kreabus/kreabus/internal/clip"
)

// TestTruncateIsClip: this public package keeps its own copy of
// internal/clip.String rather than import internal code; they must agree.
func TestTruncateIsClip(t *testing.T) {
	inputs := []string{"", "abc", "abcd", "héllo", "日本語", "\xff\xfe\xfd", strings.Repeat("ü", 40), strings.Repeat("a€", 30)}
	for _, s := range inputs {
		for n := -1; n <= len(s)+1; n++ {
			got, want := truncate(s, n), clip.String(s, n)
			if got != want {
				t.Errorf("truncate(%q, %d) = %q, clip.String %q", s, n, got, want)
			}
			if utf8.ValidString(s) && !utf8.ValidString(got) {
				t.Errorf("truncate(%q, %d) = %q: not UTF-8", s, n, got)
			}
		}
	}
}
