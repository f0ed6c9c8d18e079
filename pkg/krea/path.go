package krea

import "strings"

// Limits of ValidPath.
const (
	// MaxPathSegmentLen bounds each provider, model and variant segment.
	MaxPathSegmentLen = 64
)

// ValidPath reports whether path names an endpoint that starts a job, the
// only paths Client.Submit sends to (and the only ones kreabus forwards:
// it is no open proxy to the API): "/styles/train", or
// "/generate/{image|video|enhance}/<provider>/<model>[/<variant>]" with
// each of provider, model and variant 1 to MaxPathSegmentLen characters of
// [a-z0-9._-] starting with a letter or digit (so never "." or ".."). Every
// generation endpoint of Krea's published API fits; nothing that could
// smuggle a query, another host or a traversal into the request line does.
func ValidPath(path string) bool {
	if path == "/styles/train" {
		return true
	}
	rest, ok := strings.CutPrefix(path, "/generate/")
	if !ok {
		return false
	}
	kind, rest, ok := strings.Cut(rest, "/")
	if !ok || (kind != "image" && kind != "video" && kind != "enhance") {
		return false
	}
	for n := 1; ; n++ {
		seg, more, found := strings.Cut(rest, "/")
		if !validPathSegment(seg) {
			return false
		}
		if !found {
			return n >= 2 // provider and model, maybe a variant
		}
		if n == 3 {
			return false
		}
		rest = more
	}
}

func validPathSegment(s string) bool {
	if len(s) == 0 || len(s) > MaxPathSegmentLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
		case i > 0 && (c == '.' || c == '_' || c == '-'):
		default:
			return false
		}
	}
	return true
}
