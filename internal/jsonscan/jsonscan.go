// Package jsonscan walks JSON text without decoding it: a validator with
// the grammar of RFC 8259 as encoding/json implements it (its nesting
// limit included), with the steps to read an object's members in place.
// It is kreabus's one JSON scanner: the bridge checks webhook bodies with
// it, and the ledger reads the few facts it caches from job records.
//
// Invalid UTF-8 inside strings does not stop a scan (json.Valid accepts
// it) but is noted (NotUTF8), so that a syntax error later in the text
// still wins.
package jsonscan

import (
	"encoding/binary"
	"encoding/json"
	"math/bits"
	"unicode/utf8"
)

// MaxDepth is encoding/json's nesting limit: text it refuses, Value
// refuses.
const MaxDepth = 10000

// Scanner is a position in JSON text.
type Scanner struct {
	b       []byte
	i       int
	notUTF8 bool
}

// New returns a Scanner at the start of b.
func New(b []byte) Scanner { return Scanner{b: b} }

// Valid reports whether b is one JSON value, as json.Valid does.
func Valid(b []byte) bool {
	s := New(b)
	s.Space()
	return s.Value(0) && s.End()
}

// Pos is the offset of the next byte to scan.
func (s *Scanner) Pos() int { return s.i }

// Peek returns the next byte, 0 at the end.
func (s *Scanner) Peek() byte {
	if s.i < len(s.b) {
		return s.b[s.i]
	}
	return 0
}

// NotUTF8 reports whether a string scanned so far holds bytes that are
// not UTF-8.
func (s *Scanner) NotUTF8() bool { return s.notUTF8 }

// Space skips white space.
func (s *Scanner) Space() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\n', '\r':
			s.i++
		default:
			return
		}
	}
}

// End skips white space and reports whether the text ends there.
func (s *Scanner) End() bool {
	s.Space()
	return s.i == len(s.b)
}

// Open consumes the '{' or '[' at the position and reports whether closer
// follows at once (an empty object or array), consuming that too.
func (s *Scanner) Open(closer byte) bool {
	s.i++
	s.Space()
	if s.i < len(s.b) && s.b[s.i] == closer {
		s.i++
		return true
	}
	return false
}

// Key scans an object member's name and the colon after it, and leaves the
// position at the member's value. raw is the name between its quotes, as
// in the text; escaped reports escape sequences in it.
func (s *Scanner) Key() (raw []byte, escaped, ok bool) {
	if raw, escaped, ok = s.String(); !ok {
		return nil, false, false
	}
	s.Space()
	if s.i >= len(s.b) || s.b[s.i] != ':' {
		return nil, false, false
	}
	s.i++
	s.Space()
	return raw, escaped, true
}

// Next consumes what follows a member or an element: a comma, after which
// another comes, or closer, which ends the object or array (end). ok is
// false for anything else.
func (s *Scanner) Next(closer byte) (end, ok bool) {
	s.Space()
	if s.i >= len(s.b) {
		return false, false
	}
	switch s.b[s.i] {
	case ',':
		s.i++
		s.Space()
		return false, true
	case closer:
		s.i++
		return true, true
	}
	return false, false
}

// Value scans any value at the position, whose container is at depth (0
// for the top level).
func (s *Scanner) Value(depth int) bool {
	if s.i >= len(s.b) {
		return false
	}
	switch c := s.b[s.i]; c {
	case '"':
		_, _, ok := s.String()
		return ok
	case '{':
		return s.object(depth + 1)
	case '[':
		return s.array(depth + 1)
	case 't':
		return s.lit("true")
	case 'f':
		return s.lit("false")
	case 'n':
		return s.lit("null")
	default:
		if c == '-' || isDigit(c) {
			return s.number()
		}
		return false
	}
}

func (s *Scanner) lit(want string) bool {
	if len(s.b)-s.i < len(want) || string(s.b[s.i:s.i+len(want)]) != want {
		return false
	}
	s.i += len(want)
	return true
}

func (s *Scanner) object(depth int) bool {
	if depth > MaxDepth {
		return false
	}
	if s.Open('}') {
		return true
	}
	for {
		if _, _, ok := s.Key(); !ok || !s.Value(depth) {
			return false
		}
		if end, ok := s.Next('}'); !ok || end {
			return ok
		}
	}
}

func (s *Scanner) array(depth int) bool {
	if depth > MaxDepth {
		return false
	}
	if s.Open(']') {
		return true
	}
	for {
		if !s.Value(depth) {
			return false
		}
		if end, ok := s.Next(']'); !ok || end {
			return ok
		}
	}
}

// String scans the string at the position (its opening quote) and leaves
// the position after its closing quote. raw is its contents as in the
// text; escaped reports escape sequences in it (Unquote decodes them).
func (s *Scanner) String() (raw []byte, escaped, ok bool) {
	b := s.b
	if s.i >= len(b) || b[s.i] != '"' {
		return nil, false, false
	}
	start := s.i + 1
	i := start
	for i < len(b) {
		if i+8 <= len(b) {
			// Eight bytes at once, to the first that is not plain.
			m := special(binary.LittleEndian.Uint64(b[i:]))
			if m == 0 {
				i += 8
				continue
			}
			i += bits.TrailingZeros64(m) >> 3
		} else {
			for i < len(b) && plain[b[i]] {
				i++
			}
			if i >= len(b) {
				break
			}
		}
		c := b[i]
		switch {
		case c == '"':
			s.i = i + 1
			return b[start:i], escaped, true
		case c == '\\':
			escaped = true
			if i+1 >= len(b) {
				return nil, false, false
			}
			switch b[i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				i += 2
			case 'u':
				if i+6 > len(b) || !isHex(b[i+2]) || !isHex(b[i+3]) || !isHex(b[i+4]) || !isHex(b[i+5]) {
					return nil, false, false
				}
				i += 6
			default:
				return nil, false, false
			}
		case c < 0x20:
			return nil, false, false
		default:
			// Non-ASCII: the rare path, off the plain loop. A run of
			// non-ASCII bytes is checked at once.
			j := i + 1
			for j < len(b) && b[j] >= utf8.RuneSelf {
				j++
			}
			if !utf8.Valid(b[i:j]) {
				s.notUTF8 = true
			}
			i = j
		}
	}
	return nil, false, false
}

// special marks, in the top bit of each of the eight bytes of x, the bytes
// that are not plain: a quote, a backslash, a control character or a
// non-ASCII byte. A zero byte of x^c is a byte equal to c, and x-0x20
// borrows into the top bit of a byte below 0x20; a borrow can mark bytes
// after the first marked one wrongly, never before it, so the lowest mark
// is exact.
func special(x uint64) uint64 {
	const ones, tops = 0x0101010101010101, 0x8080808080808080
	q, bs := x^'"'*ones, x^'\\'*ones
	return ((x-0x20*ones)&^x | x | (q-ones)&^q | (bs-ones)&^bs) & tops
}

// plain marks the bytes a string holds as they are: printable ASCII but a
// quote or a backslash. Non-ASCII bytes leave the fast loop to have their
// UTF-8 checked.
var plain = func() (t [256]bool) {
	for c := 0x20; c < utf8.RuneSelf; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

func isHex(c byte) bool {
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F')
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

// number scans -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
func (s *Scanner) number() bool {
	b := s.b
	i := s.i
	if b[i] == '-' {
		i++
	}
	if i >= len(b) || !isDigit(b[i]) {
		return false
	}
	if b[i] == '0' {
		i++
	} else {
		for i < len(b) && isDigit(b[i]) {
			i++
		}
	}
	if i < len(b) && b[i] == '.' {
		i++
		if i >= len(b) || !isDigit(b[i]) {
			return false
		}
		for i < len(b) && isDigit(b[i]) {
			i++
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		if i >= len(b) || !isDigit(b[i]) {
			return false
		}
		for i < len(b) && isDigit(b[i]) {
			i++
		}
	}
	s.i = i
	return true
}

// Unquote decodes the escapes of a string's contents (String's raw); rare,
// so it leans on encoding/json.
func Unquote(raw []byte) ([]byte, bool) {
	q := make([]byte, 0, len(raw)+2)
	q = append(q, '"')
	q = append(q, raw...)
	q = append(q, '"')
	var s string
	if json.Unmarshal(q, &s) != nil {
		return nil, false
	}
	return []byte(s), true
}
