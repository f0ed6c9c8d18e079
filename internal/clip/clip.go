// Package clip shortens untrusted strings before they go into logs, error
// messages and events.
package clip

// Ellipsis marks a string String shortened.
const Ellipsis = "…"

// String returns s when it is at most n bytes long, else its longest
// prefix of at most n bytes that ends on a UTF-8 rune boundary, followed
// by Ellipsis: a valid string stays valid.
func String(s string, n int) string {
	if len(s) <= n {
		return s
	}
	cut := max(n, 0)
	for cut > 0 && s[cut]&0xC0 == 0x80 { // a continuation byte
		cut--
	}
	return s[:cut] + Ellipsis
}
