package ledger

import (
	"bytes"
	"encoding/json"

	"github.com/kreabus/kreabus/internal/jsonscan"
)

// Every bridge replica decodes every job record the bucket stores (Follow),
// one per webhook stored anywhere: encoding/json's reflection and
// validation cost more than the rest of a cache update, so the four fields
// the cache keeps are read by a scan of the record's top level. Records
// are written by this package with json.Marshal; anything the scan does
// not expect (an escape in the owner, a key in another letter case, text
// that is not JSON) makes it give up, and the caller decodes the record
// with encoding/json instead, so both read the same facts from any input.

// scanJobFacts reads owner (request_id), terminal, extra and metadata from
// a job record. ok is false when the record is not one the scan is sure
// of; the facts are then to be read with decodeJobFacts. The metadata is a
// slice of data (the cache copies what it keeps).
func scanJobFacts(data []byte) (f jobFacts, ok bool) {
	s := jsonscan.New(data)
	s.Space()
	if s.Peek() != '{' {
		return jobFacts{}, false
	}
	for end := s.Open('}'); !end; {
		key, escaped, ok := s.Key()
		start := s.Pos()
		if !ok || escaped || !s.Value(1) {
			return jobFacts{}, false
		}
		v := data[start:s.Pos()]
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
		if end, ok = s.Next('}'); !ok {
			return jobFacts{}, false
		}
	}
	if !s.End() || s.NotUTF8() {
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

// foldsTo reports whether encoding/json would match key to name.
func foldsTo(key []byte, name string) bool {
	return bytes.EqualFold(key, []byte(name))
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
