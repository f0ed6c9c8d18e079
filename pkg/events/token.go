package events

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"hash"
	"strings"
	"sync"
)

// tokenContext separates kreabus tokens from any other use of the secret.
const tokenContext = "kreabus/v1/"

// macLen is the length of an HMAC-SHA256 in base64url without padding:
// base64.RawURLEncoding.EncodedLen(sha256.Size).
const macLen = 43

// MaxTokenLen is the longest well-formed token: a 64-byte request ID, a dot
// and the MAC.
const MaxTokenLen = MaxRequestIDLen + 1 + macLen

// ErrInvalidToken is returned for a token that is malformed or whose MAC does
// not match any configured secret. It deliberately says nothing more.
var ErrInvalidToken = errors.New("events: invalid webhook token")

// ErrNoSecret is returned by NewTokenizer when the current secret is empty.
var ErrNoSecret = errors.New("events: webhook secret is empty")

// Tokenizer mints and verifies webhook tokens:
//
//	token = <request_id> "." base64url_nopad(HMAC-SHA256(secret, "kreabus/v1/" + <request_id>))
//
// It accepts tokens made with the current or the previous secret, so secrets
// can be rotated without losing webhooks in flight. A Tokenizer is safe for
// concurrent use.
type Tokenizer struct {
	current  *macPool
	previous *macPool // nil when there is no previous secret
}

// macPool recycles keyed HMAC states: building one costs two SHA-256 block
// computations and a dozen allocations, on every webhook otherwise.
type macPool struct{ p sync.Pool }

func newMACPool(secret string) *macPool {
	key := []byte(secret)
	return &macPool{p: sync.Pool{New: func() any { return hmac.New(sha256.New, key) }}}
}

// sum appends HMAC(secret, tokenContext+requestID) to dst.
func (m *macPool) sum(requestID string, dst []byte) []byte {
	h := m.p.Get().(hash.Hash)
	h.Reset()
	h.Write([]byte(tokenContext))
	h.Write([]byte(requestID))
	dst = h.Sum(dst)
	m.p.Put(h)
	return dst
}

// NewTokenizer returns a Tokenizer minting with current and also accepting
// previous (which may be empty).
func NewTokenizer(current, previous string) (*Tokenizer, error) {
	if current == "" {
		return nil, ErrNoSecret
	}
	t := &Tokenizer{current: newMACPool(current)}
	if previous != "" {
		t.previous = newMACPool(previous)
	}
	return t, nil
}

// Mint returns the token for requestID, signed with the current secret.
// requestID must be valid (see ValidRequestID).
func (t *Tokenizer) Mint(requestID string) string {
	var buf [sha256.Size]byte
	mac := t.current.sum(requestID, buf[:0])
	return requestID + "." + base64.RawURLEncoding.EncodeToString(mac)
}

// Verify checks token and returns the request ID it was minted for. The MAC
// is compared in constant time against every configured secret.
func (t *Tokenizer) Verify(token string) (requestID string, err error) {
	if len(token) > MaxTokenLen {
		return "", ErrInvalidToken
	}
	dot := strings.LastIndexByte(token, '.')
	if dot < 0 || len(token)-dot-1 != macLen {
		return "", ErrInvalidToken
	}
	requestID = token[:dot]
	if !ValidRequestID(requestID) {
		return "", ErrInvalidToken
	}
	var got [sha256.Size]byte
	var enc [macLen]byte
	copy(enc[:], token[dot+1:])
	n, derr := base64.RawURLEncoding.Strict().Decode(got[:], enc[:])
	if derr != nil || n != sha256.Size {
		return "", ErrInvalidToken
	}
	var buf [sha256.Size]byte
	ok := hmac.Equal(got[:], t.current.sum(requestID, buf[:0]))
	if t.previous != nil {
		// Always compute both so timing does not reveal which secret matched.
		okPrev := hmac.Equal(got[:], t.previous.sum(requestID, buf[:0]))
		ok = ok || okPrev
	}
	if !ok {
		return "", ErrInvalidToken
	}
	return requestID, nil
}

// URL returns the webhook URL for requestID under publicBase (the bridge's
// public base URL, without the /webhooks/krea path).
func (t *Tokenizer) URL(publicBase, requestID string) string {
	return strings.TrimRight(publicBase, "/") + WebhookPathPrefix + t.Mint(requestID)
}

// WebhookPathPrefix is the path under which the bridge serves webhooks.
const WebhookPathPrefix = "/webhooks/krea/"
