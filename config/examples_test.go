// Package config_test checks that the example configuration files in this
// folder load into the programs' settings: a renamed or mistyped key fails
// CI instead of a deployment.
package config_test

import (
	"testing"

	"github.com/kreabus/kreabus/internal/bridge"
	"github.com/kreabus/kreabus/internal/config"
	"github.com/kreabus/kreabus/internal/submitter"
)

func TestExampleFilesLoad(t *testing.T) {
	secrets := map[string]string{
		"KREABUS_WEBHOOK_SECRET": "example-secret-example-secret-000",
		"KREA_API_TOKEN":         "example-token",
	}
	env := func(k string) (string, bool) { v, ok := secrets[k]; return v, ok }
	for _, tc := range []struct {
		file string
		dst  interface{ Validate() error }
	}{
		{"bridge.yaml", &bridge.Settings{}},
		{"submitter.yaml", &submitter.Settings{}},
	} {
		t.Run(tc.file, func(t *testing.T) {
			if err := config.Load(tc.dst, "example", []string{"--config", tc.file}, env); err != nil {
				t.Fatal(err)
			}
			if err := tc.dst.Validate(); err != nil {
				t.Fatal(err)
			}
		})
	}
}
