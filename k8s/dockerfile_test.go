package k8s_test

// Tests of the Dockerfile and .dockerignore (there is no Docker engine in CI,
// so the image is never built here): the build stays static, trimmed and
// pinned, and the final image runs as non-root with the two binaries the
// manifests start.

import (
	"os"
	"regexp"
	"strings"
	"testing"
)

type dockerInstr struct {
	cmd, args string
}

// parseDockerfile returns the instructions, continuation lines joined and
// comments dropped.
func parseDockerfile(t *testing.T, file string) []dockerInstr {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var out []dockerInstr
	var cur strings.Builder
	for _, line := range strings.Split(string(data), "\n") {
		trimmed := strings.TrimSpace(line)
		if strings.HasPrefix(trimmed, "#") || (trimmed == "" && cur.Len() == 0) {
			continue
		}
		if strings.HasSuffix(trimmed, "\\") {
			cur.WriteString(strings.TrimSuffix(trimmed, "\\") + " ")
			continue
		}
		cur.WriteString(trimmed)
		full := strings.TrimSpace(cur.String())
		cur.Reset()
		if full == "" {
			continue
		}
		cmd, args, _ := strings.Cut(full, " ")
		out = append(out, dockerInstr{strings.ToUpper(cmd), strings.TrimSpace(args)})
	}
	return out
}

func TestDockerfile(t *testing.T) {
	instrs := parseDockerfile(t, "../Dockerfile")
	args := map[string]string{}
	var froms []string
	var final []dockerInstr // instructions of the last stage
	var all string
	for _, in := range instrs {
		all += in.cmd + " " + in.args + "\n"
		switch in.cmd {
		case "ARG":
			if k, v, ok := strings.Cut(in.args, "="); ok {
				args[k] = v
			}
		case "FROM":
			image := in.args
			for _, f := range strings.Fields(in.args) {
				if !strings.HasPrefix(f, "--") {
					image = f
					break
				}
			}
			image = regexp.MustCompile(`\$\{?(\w+)\}?`).ReplaceAllStringFunc(image, func(ref string) string {
				return args[strings.Trim(ref, "${}")]
			})
			froms = append(froms, image)
			final = nil
		}
		final = append(final, in)
	}
	if len(froms) < 2 {
		t.Fatalf("want a multi-stage build, got FROM %v", froms)
	}
	for _, img := range froms {
		if tag, digest := imageTag(img); (tag == "" && digest == "") || tag == "latest" {
			t.Errorf("FROM %s: pin a tag", img)
		}
	}

	// The builder's Go is the module's Go.
	gomod, err := os.ReadFile("../go.mod")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^go (\d+\.\d+)`).FindSubmatch(gomod)
	if m == nil {
		t.Fatal("no go directive in go.mod")
	}
	if want := "golang:" + string(m[1]); froms[0] != want {
		t.Errorf("builder is %s, want %s (go.mod)", froms[0], want)
	}
	if want := "gcr.io/distroless/static-debian12:nonroot"; froms[len(froms)-1] != want {
		t.Errorf("final stage is %s, want %s", froms[len(froms)-1], want)
	}

	for _, want := range []string{"CGO_ENABLED=0", "-trimpath", `-ldflags "-s -w"`, "./cmd/bridge", "./cmd/submitter", "./cmd/mirror"} {
		if !strings.Contains(all, want) {
			t.Errorf("Dockerfile: build lacks %s", want)
		}
	}

	user, copied := "", map[string]bool{}
	for _, in := range final {
		switch in.cmd {
		case "USER":
			user = in.args
		case "COPY":
			f := strings.Fields(in.args)
			copied[f[len(f)-1]] = true
		case "RUN":
			t.Errorf("final stage runs %q: distroless has no shell", in.args)
		}
	}
	if user != "65532:65532" {
		t.Errorf("final USER %q, want 65532:65532 (the manifests' runAsUser)", user)
	}
	// Every program the manifests start is in the image.
	m2, err := parseManifests(build(t, baseDir))
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range m2.deployments {
		for _, c := range d.Spec.Template.Spec.Containers {
			if len(c.Command) == 0 || !copied[c.Command[0]] {
				t.Errorf("Deployment %s runs %v, which the image does not contain (%v)", d.Name, c.Command, copied)
			}
		}
	}
}

func TestDockerignore(t *testing.T) {
	data, err := os.ReadFile("../.dockerignore")
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, l := range strings.Split(string(data), "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
			lines = append(lines, l)
		}
	}
	if len(lines) == 0 || lines[0] != "*" {
		t.Fatalf(".dockerignore must start by excluding everything (*), then allow what the build needs")
	}
	for _, want := range []string{"!go.mod", "!go.sum", "!cmd/", "!pkg/", "!internal/"} {
		found := false
		for _, l := range lines {
			found = found || l == want
		}
		if !found {
			t.Errorf(".dockerignore does not allow %s", want)
		}
	}
}
