package ledger

import (
	"bytes"
	"encoding/json"
)

// Every bridge replica decodes every job record the bucket stores (Follow),
// one per webhook stored anywhere: encoding/json's reflection and
// validation cost more than the rest of a cache update, so the four fields
// the cache keeps are read by a scan of the record's top level. Records
// are written by this package with json.Marshal; anything the scan does
// not expect (an escape in the owner, a key in another letter case, a
// malformed value) makes it give up, and the caller decodes the record
// with encoding/json instead, so both read the same facts from any input.

// scanJobFacts reads owner (request_id), terminal, extra and metadata from
// a job record. ok is false when the record is not one the scan is sure
// of; the facts are then to be read with decodeJobFacts. The metadata is a
// slice of data (the cache copies what it keeps).
func scanJobFacts(data []byte) (f jobFacts, ok bool) {
	s := scanner{b: data}
	s.space()
	if !s.eat('{') {
		return jobFacts{}, false
	}
	s.space()
	if s.eat('}') {
		return jobFacts{}, true
	}
	for {
		s.space()
		key, ok := s.plainString()
		if !ok {
			return jobFacts{}, false
		}
		s.space()
		if !s.eat(':') {
			return jobFacts{}, false
		}
		s.space()
		start := s.i
		if !s.skipValue() {
			return jobFacts{}, false
		}
		v := data[start:s.i]
		switch string(key) {
		case "request_id":
			// null leaves the field as it was, as with encoding/json.
			if string(v) != "null" {
				if !plainASCII(v) {
					return jobFacts{}, false
				}
				f.owner = string(v[1 : len(v)-1])
			}
		case "terminal", "extra":
			if string(v) == "null" {
				break
			}
			if string(v) != "true" && string(v) != "false" {
				return jobFacts{}, false
			}
			if string(key) == "terminal" {
				f.terminal = string(v) == "true"
			} else {
				f.extra = string(v) == "true"
			}
		case "metadata":
			f.metadata = v
		default:
			// encoding/json matches keys in any letter case: leave such
			// records to it.
			if foldsTo(key, "request_id") || foldsTo(key, "terminal") || foldsTo(key, "extra") || foldsTo(key, "metadata") {
				return jobFacts{}, false
			}
		}
		s.space()
		if s.eat('}') {
			break
		}
		if !s.eat(',') {
			return jobFacts{}, false
		}
	}
	s.space()
	if s.i != len(data) {
		return jobFacts{}, false
	}
	if !hasMetadata(f.metadata) {
		f.metadata = nil
	}
	return f, true
}

// decodeJobFacts reads the same facts as scanJobFacts with encoding/json.
func decodeJobFacts(data []byte) (jobFacts, error) {
	var rec struct {
		RequestID string          `json:"request_id"`
		Terminal  bool            `json:"terminal"`
		Extra     bool            `json:"extra"`
		Metadata  json.RawMessage `json:"metadata"`
	}
	if err := json.Unmarshal(data, &rec); err != nil {
		return jobFacts{}, err
	}
	if !hasMetadata(rec.Metadata) {
		rec.Metadata = nil
	}
	return jobFacts{owner: rec.RequestID, terminal: rec.Terminal, extra: rec.Extra, metadata: rec.Metadata}, nil
}

// readJobFacts is scanJobFacts with decodeJobFacts behind it.
func readJobFacts(data []byte) (jobFacts, error) {
	if f, ok := scanJobFacts(data); ok {
		return f, nil
	}
	return decodeJobFacts(data)
}

// scanner walks JSON text without decoding it.
type scanner struct {
	b []byte
	i int
}

func (s *scanner) space() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\n', '\r':
			s.i++
		default:
			return
		}
	}
}

func (s *scanner) eat(c byte) bool {
	if s.i < len(s.b) && s.b[s.i] == c {
		s.i++
		return true
	}
	return false
}

// plainString reads a string without escapes and returns its contents
// (a slice of the input).
func (s *scanner) plainString() ([]byte, bool) {
	if !s.eat('"') {
		return nil, false
	}
	start := s.i
	for s.i < len(s.b) {
		switch c := s.b[s.i]; {
		case c == '"':
			v := s.b[start:s.i]
			s.i++
			return v, true
		case c == '\\' || c < 0x20:
			return nil, false
		}
		s.i++
	}
	return nil, false
}

// foldsTo reports whether encoding/json would match key to name.
func foldsTo(key []byte, name string) bool {
	return bytes.EqualFold(key, []byte(name))
}

// skipValue moves past one value, checking only what the scan relies on:
// strings end where JSON says they do, brackets balance.
func (s *scanner) skipValue() bool {
	if s.i >= len(s.b) {
		return false
	}
	switch s.b[s.i] {
	case '"':
		return s.skipString()
	case '{', '[':
		depth := 0
		for s.i < len(s.b) {
			switch s.b[s.i] {
			case '"':
				if !s.skipString() {
					return false
				}
				continue
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					s.i++
					return true
				}
			}
			s.i++
		}
		return false
	default:
		start := s.i
		for s.i < len(s.b) {
			switch s.b[s.i] {
			case ',', '}', ']', ' ', '\t', '\n', '\r':
				return s.i > start && literal(s.b[start:s.i])
			}
			s.i++
		}
		return false
	}
}

func (s *scanner) skipString() bool {
	s.i++ // the opening quote
	for s.i < len(s.b) {
		switch c := s.b[s.i]; {
		case c == '"':
			s.i++
			return true
		case c == '\\':
			s.i += 2
			continue
		case c < 0x20:
			return false
		}
		s.i++
	}
	return false
}

// plainASCII reports whether v is a string of printable ASCII without
// escapes: its contents are then what encoding/json would decode.
func plainASCII(v []byte) bool {
	if len(v) < 2 || v[0] != '"' || v[len(v)-1] != '"' {
		return false
	}
	for _, c := range v[1 : len(v)-1] {
		if c < 0x20 || c >= 0x7f || c == '\\' || c == '"' {
			return false
		}
	}
	return true
}

// literal reports whether v is true, false, null or looks like a number.
func literal(v []byte) bool {
	switch string(v) {
	case "true", "false", "null":
		return true
	}
	for _, c := range v {
		if (c < '0' || c > '9') && c != '-' && c != '+' && c != '.' && c != 'e' && c != 'E' {
			return false
		}
	}
	return true
}
