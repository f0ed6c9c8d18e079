package krea_test

import (
	"encoding/json"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/kreabus/kreabus/pkg/krea"
)

// refPathRE is ValidPath's rule written as a regular expression.
var refPathRE = regexp.MustCompile(`^(/generate/(image|video|enhance)/[a-z0-9][a-z0-9._-]{0,63}/[a-z0-9][a-z0-9._-]{0,63}(/[a-z0-9][a-z0-9._-]{0,63})?|/styles/train)$`)

func TestValidPath(t *testing.T) {
	for path, want := range map[string]bool{
		"/generate/image/bfl/flux-1-dev":                 true,
		"/generate/image/bfl/flux-1.1-pro":               true,
		"/generate/image/krea/krea-2/medium":             true,
		"/generate/video/kling/kling-2.1":                true,
		"/generate/enhance/topaz/standard-enhance":       true,
		"/generate/image/z-image/z-image":                true,
		"/generate/image/qwen/2512":                      true,
		"/styles/train":                                  true,
		"/jobs":                                          false,
		"/jobs/123":                                      false,
		"/styles":                                        false,
		"/styles/train/":                                 false,
		"/styles/train/x":                                false,
		"/assets":                                        false,
		"/generate/image/../x":                           false,
		"/generate/image/bfl/..":                         false,
		"/generate/image/bfl/.":                          false,
		"/generate/image/./flux":                         false,
		"/generate/image/bfl/flux-1-dev/":                false,
		"/generate/image/bfl/flux-1-dev/variant/x":       false, // 4 segments after the kind
		"/generate/image/bfl":                            false,
		"/generate/image":                                false,
		"/generate/audio/a/b":                            false,
		"/generate/IMAGE/bfl/flux":                       false,
		"/generate/image/BFL/flux":                       false,
		"/generate/image/bfl/flux?x=1":                   false,
		"/generate/image/bfl/flux#x":                     false,
		"/generate/image/bfl/flux%2F..":                  false,
		"/generate/image//flux":                          false,
		"//generate/image/bfl/flux":                      false,
		"generate/image/bfl/flux":                        false,
		"https://api.krea.ai/generate/image/bfl/x":       false,
		"/generate/image/bfl/flux\n":                     false,
		"/generate/image/bfl/flux\n/styles/train":        false,
		"/generate/image/bfl/-flux":                      false,
		"/generate/image/bfl/" + strings.Repeat("a", 64): true,
		"/generate/image/bfl/" + strings.Repeat("a", 65): false,
		"":  false,
		"/": false,
	} {
		if got := krea.ValidPath(path); got != want {
			t.Errorf("krea.ValidPath(%q) = %v, want %v", path, got, want)
		}
		if got := refPathRE.MatchString(path); got != want {
			t.Errorf("refPathRE matches %q: %v, want %v", path, got, want)
		}
	}
}

// TestValidPathMatchesOpenAPI checks the allow-list against Krea's published
// OpenAPI document, when the checkout has it beside the repository: every
// generation path and /styles/train is allowed, nothing else is.
func TestValidPathMatchesOpenAPI(t *testing.T) {
	data, err := os.ReadFile("../../../shared/krea/openapi.json")
	if err != nil {
		t.Skipf("Krea OpenAPI document not available: %v", err)
	}
	var doc struct {
		Paths map[string]map[string]json.RawMessage `json:"paths"`
	}
	if err := json.Unmarshal(data, &doc); err != nil {
		t.Fatal(err)
	}
	generation := 0
	for path, ops := range doc.Paths {
		_, post := ops["post"]
		want := post && (strings.HasPrefix(path, "/generate/") || path == "/styles/train")
		if want {
			generation++
		}
		if got := krea.ValidPath(path); got != want {
			t.Errorf("krea.ValidPath(%q) = %v, want %v", path, got, want)
		}
	}
	if generation < 10 {
		t.Errorf("only %d generation paths in the OpenAPI document", generation)
	}
}

// FuzzValidPath checks ValidPath against its regular expression.
func FuzzValidPath(f *testing.F) {
	f.Add("/generate/image/bfl/flux-1-dev")
	f.Add("/generate/image/krea/krea-2/medium")
	f.Add("/styles/train")
	f.Add("/generate/image/bfl/../x")
	f.Fuzz(func(t *testing.T, path string) {
		if got, want := krea.ValidPath(path), refPathRE.MatchString(path); got != want {
			t.Fatalf("ValidPath(%q) = %v, want %v", path, got, want)
		}
	})
}
