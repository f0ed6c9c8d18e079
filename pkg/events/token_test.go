package events_test

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"strings"
	"testing"

	"github.com/kreabus/kreabus/pkg/events"
)

func mustTokenizer(t testing.TB, current, previous string) *events.Tokenizer {
	t.Helper()
	tk, err := events.NewTokenizer(current, previous)
	if err != nil {
		t.Fatal(err)
	}
	return tk
}

func TestTokenFormat(t *testing.T) {
	// The contract's formula, computed independently.
	const secret, id = "s3cret", "0b9d6c1e-5f0a-4f57-a8f1-2a6f0f8b9a11"
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte("kreabus/v1/" + id))
	want := id + "." + base64.RawURLEncoding.EncodeToString(m.Sum(nil))

	tk := mustTokenizer(t, secret, "")
	if got := tk.Mint(id); got != want {
		t.Fatalf("Mint = %q, want %q", got, want)
	}
	if got := tk.URL("https://hooks.example.com/", id); got != "https://hooks.example.com/webhooks/krea/"+want {
		t.Errorf("URL = %q", got)
	}
	if events.MaxTokenLen != 64+1+43 {
		t.Errorf("MaxTokenLen = %d", events.MaxTokenLen)
	}
}

func TestTokenRoundTrip(t *testing.T) {
	tk := mustTokenizer(t, "current", "")
	for _, id := range []string{"a", "req-1", "A_b-C", strings.Repeat("z", events.MaxRequestIDLen), events.NewRequestID()} {
		tok := tk.Mint(id)
		got, err := tk.Verify(tok)
		if err != nil || got != id {
			t.Errorf("Verify(Mint(%q)) = %q, %v", id, got, err)
		}
	}
}

func TestTokenRotation(t *testing.T) {
	old := mustTokenizer(t, "old", "")
	rotated := mustTokenizer(t, "new", "old")
	tok := old.Mint("req-1")
	if id, err := rotated.Verify(tok); err != nil || id != "req-1" {
		t.Fatalf("token of the previous secret rejected: %q, %v", id, err)
	}
	// Minting uses the current secret.
	if rotated.Mint("req-1") == tok {
		t.Error("rotated tokenizer minted with the previous secret")
	}
	if _, err := rotated.Verify(rotated.Mint("req-1")); err != nil {
		t.Error(err)
	}
	// Once the previous secret is dropped, its tokens are refused.
	if _, err := mustTokenizer(t, "new", "").Verify(tok); !errors.Is(err, events.ErrInvalidToken) {
		t.Errorf("old token after rotation: %v", err)
	}
}

func TestTokenRejected(t *testing.T) {
	tk := mustTokenizer(t, "current", "previous")
	good := tk.Mint("req-1")
	mac := good[len("req-1."):]
	other := mustTokenizer(t, "other", "").Mint("req-1")
	flip := func(s string, i int) string {
		b := []byte(s)
		if b[i] == 'A' {
			b[i] = 'B'
		} else {
			b[i] = 'A'
		}
		return string(b)
	}
	for name, tok := range map[string]string{
		"empty":               "",
		"wrong secret":        other,
		"other request id":    "req-2." + mac,
		"tampered mac":        flip(good, len(good)-5),
		"tampered request id": flip(good, 0),
		"no dot":              "req-1" + mac,
		"no mac":              "req-1.",
		"only mac":            "." + mac,
		"mac too short":       good[:len(good)-1],
		"mac too long":        good + "A",
		"padded mac":          good + "=",
		"std base64 alphabet": "req-1.+" + mac[1:],
		"bad base64":          "req-1." + mac[:len(mac)-1] + "*",
		"non-canonical last":  "req-1." + nonCanonical(mac),
		"request id with dot": "a.b." + mustTokenizer(t, "current", "").Mint("b")[2:],
		"bad request id":      "req 1." + mac,
		"too long":            strings.Repeat("a", events.MaxRequestIDLen+1) + "." + mac,
		"far too long":        strings.Repeat("a", 1<<20),
		"two tokens":          good + "." + mac,
	} {
		if id, err := tk.Verify(tok); !errors.Is(err, events.ErrInvalidToken) || id != "" {
			t.Errorf("%s: Verify(%q) = %q, %v; want ErrInvalidToken", name, tok, id, err)
		}
	}
}

// nonCanonical changes the unused low bits of the MAC's last character, which
// a lenient decoder would ignore.
func nonCanonical(mac string) string {
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	last := strings.IndexByte(alphabet, mac[len(mac)-1])
	return mac[:len(mac)-1] + string(alphabet[last^1])
}

func TestNewTokenizerNeedsSecret(t *testing.T) {
	if _, err := events.NewTokenizer("", "prev"); !errors.Is(err, events.ErrNoSecret) {
		t.Errorf("err = %v, want ErrNoSecret", err)
	}
}

// FuzzVerifyToken: Verify never panics, accepts only what Mint produces,
// and refuses anything a byte away from a good token.
func FuzzVerifyToken(f *testing.F) {
	tk := mustTokenizer(f, "fuzz-current", "fuzz-previous")
	prev := mustTokenizer(f, "fuzz-previous", "")
	f.Add(tk.Mint("req-1"))
	f.Add(prev.Mint("0b9d6c1e-5f0a-4f57-a8f1-2a6f0f8b9a11"))
	f.Add("")
	f.Add("a.b")
	f.Fuzz(func(t *testing.T, token string) {
		id, err := tk.Verify(token)
		if err != nil {
			if !errors.Is(err, events.ErrInvalidToken) || id != "" {
				t.Fatalf("Verify(%q) = %q, %v", token, id, err)
			}
		} else {
			if !events.ValidRequestID(id) {
				t.Fatalf("Verify(%q) accepted invalid request id %q", token, id)
			}
			if token != tk.Mint(id) && token != prev.Mint(id) {
				t.Fatalf("Verify accepted %q, which neither secret mints for %q", token, id)
			}
		}
		// Used as a request ID, the input round-trips when valid.
		if events.ValidRequestID(token) {
			minted := tk.Mint(token)
			if got, err := tk.Verify(minted); err != nil || got != token {
				t.Fatalf("Verify(Mint(%q)) = %q, %v", token, got, err)
			}
			if len(minted) > events.MaxTokenLen {
				t.Fatalf("Mint(%q) longer than MaxTokenLen", token)
			}
			// Any single-byte change is refused.
			for i := range len(minted) {
				b := []byte(minted)
				b[i] ^= 0x01
				if got, err := tk.Verify(string(b)); err == nil && string(b) != tk.Mint(got) {
					t.Fatalf("Verify accepted tampered %q as %q", b, got)
				}
			}
		}
	})
}

func TestMACLen(t *testing.T) {
	const id = "req-1"
	tok := mustTokenizer(t, "current-secret-current-secret-00", "").Mint(id)
	if got, want := len(tok)-len(id)-1, base64.RawURLEncoding.EncodedLen(sha256.Size); got != want {
		t.Fatalf("MAC of %d characters in %q, want %d", got, tok, want)
	}
}

func BenchmarkVerify(b *testing.B) {
	tk := mustTokenizer(b, "current-secret-current-secret-00", "previous-secret-previous-secret-")
	tok := tk.Mint("0b9d6c1e-5f0a-4f57-a8f1-2a6f0f8b9a11")
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := tk.Verify(tok); err != nil {
				b.Fatal(err)
			}
		}
	})
}
