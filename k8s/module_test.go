package k8s

import (
	"os"
	"strings"
	"testing"
)

// TestRootModuleHasNoKubernetes: these tests are a module of their own, so
// a service importing kreabus' packages pulls no Kubernetes or kustomize
// module into its build.
func TestRootModuleHasNoKubernetes(t *testing.T) {
	b, err := os.ReadFile("../go.mod")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		line = strings.TrimPrefix(strings.TrimSpace(line), "require ")
		// sigs.k8s.io/yaml is a YAML library (the settings loader uses it),
		// not Kubernetes.
		for _, bad := range []string{"k8s.io/", "sigs.k8s.io/kustomize"} {
			if strings.HasPrefix(line, bad) {
				t.Errorf("root go.mod requires %q: keep Kubernetes packages in k8s/go.mod", strings.TrimSpace(line))
			}
		}
	}
}
