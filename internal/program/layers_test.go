package program_test

import (
	"os/exec"
	"strings"
	"testing"
)

const module = "github.com/kreabus/kreabus/"

// TestDomainImportsNoWiring keeps the floors apart: the domain packages
// (what the programs do) import none of the wiring (settings loading, the
// NATS connection, the admin server, the lifecycle), which lives in
// internal/{bridged,submitterd,mirrord}; the bridge and the submitter
// never import each other.
func TestDomainImportsNoWiring(t *testing.T) {
	wiring := []string{"internal/admin", "internal/natsconn", "internal/program", "internal/config",
		"internal/bridged", "internal/submitterd", "internal/mirrord"}
	rules := map[string][]string{
		"internal/bridge":     append([]string{"internal/submitter"}, wiring...),
		"internal/submitter":  append([]string{"internal/bridge"}, wiring...),
		"internal/ledger":     wiring,
		"internal/reconciler": wiring,
		"internal/mirror":     wiring,
	}
	for pkg, banned := range rules {
		out, err := exec.Command("go", "list", "-deps", "-f", "{{.ImportPath}}", module+pkg).CombinedOutput()
		if err != nil {
			t.Fatalf("go list %s: %v\n%s", pkg, err, out)
		}
		for _, dep := range strings.Fields(string(out)) {
			rel, ok := strings.CutPrefix(dep, module)
			if !ok {
				continue
			}
			for _, b := range banned {
				if rel == b || strings.HasPrefix(rel, strings.TrimSuffix(b, "/")+"/") {
					t.Errorf("%s imports %s", pkg, rel)
				}
			}
		}
	}
}
