package jsonscan_test

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/kreabus/kreabus/internal/jsonscan"
)

var seeds = []string{
	``, ` `, `{}`, `[]`, `""`, `0`, `-0.5e+3`, `01`, `1.`, `-`, `true`, `tru`, `nul`, `null `,
	`{"a":1,"b":[true,false,null,{"c":"d\u00e9\n"}]}`, `{"a":1,}`, `[1,]`, `{"a" 1}`, `{"a":}`,
	`"\x"`, `"\u12"`, "\"\x01\"", "\"\xff\"", `"é"`, `{} {}`, `[`, `{"a":"b"`,
	strings.Repeat("[", jsonscan.MaxDepth) + strings.Repeat("]", jsonscan.MaxDepth),
	strings.Repeat("[", jsonscan.MaxDepth+1) + strings.Repeat("]", jsonscan.MaxDepth+1),
	strings.Repeat(`{"a":`, jsonscan.MaxDepth) + "1" + strings.Repeat("}", jsonscan.MaxDepth),
	strings.Repeat(`{"a":`, jsonscan.MaxDepth+1) + "1" + strings.Repeat("}", jsonscan.MaxDepth+1),
}

// TestValid: the scanner's grammar, nesting limit included, is
// encoding/json's.
func TestValid(t *testing.T) {
	for _, s := range seeds {
		if got, want := jsonscan.Valid([]byte(s)), json.Valid([]byte(s)); got != want {
			t.Errorf("%.40q: Valid %v, json.Valid %v", s, got, want)
		}
	}
}

func FuzzValid(f *testing.F) {
	for _, s := range seeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if got, want := jsonscan.Valid(b), json.Valid(b); got != want {
			t.Fatalf("%q: Valid %v, json.Valid %v", b, got, want)
		}
	})
}

// TestMembers reads an object's members in place, as the bridge and the
// ledger do.
func TestMembers(t *testing.T) {
	text := []byte(` { "a" : "x\"y" , "b\n" : [1, {"c": 2}] , "d":null } `)
	s := jsonscan.New(text)
	s.Space()
	if s.Peek() != '{' || s.Open('}') {
		t.Fatal("not an object, or empty")
	}
	var got []string
	for end := false; !end; {
		key, escaped, ok := s.Key()
		if !ok {
			t.Fatal("key")
		}
		if string(key) == "a" {
			raw, esc, ok := s.String()
			if !ok || !esc {
				t.Fatalf("string %q %v %v", raw, esc, ok)
			}
			got = append(got, string(key)+"="+string(raw))
		} else {
			start := s.Pos()
			if !s.Value(1) {
				t.Fatal("value")
			}
			got = append(got, fmt.Sprintf("%s(%v)=%s", key, escaped, text[start:s.Pos()]))
		}
		if end, ok = s.Next('}'); !ok {
			t.Fatal("next")
		}
	}
	if !s.End() || s.NotUTF8() {
		t.Fatal("trailing text, or not UTF-8")
	}
	if want := `a=x\"y b\n(true)=[1, {"c": 2}] d(false)=null`; strings.Join(got, " ") != want {
		t.Fatalf("got  %s\nwant %s", strings.Join(got, " "), want)
	}
	if u, ok := jsonscan.Unquote([]byte(`x\"y\u00e9`)); !ok || string(u) != `x"yé` {
		t.Fatalf("Unquote: %q %v", u, ok)
	}
}
