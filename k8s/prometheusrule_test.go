package k8s_test

// Tests of k8s/monitoring/prometheusrule.yaml: every alert reads only
// metrics the running programs register, and the alerts fire as
// k8s/monitoring/rules_test.yaml says (promtool, where installed:
// scripts/install-promtool.sh).

import (
	"context"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/kreabus/kreabus/internal/bridged"
	"github.com/kreabus/kreabus/internal/config"
	"github.com/kreabus/kreabus/internal/natstest"
	"github.com/kreabus/kreabus/internal/submitterd"
	"github.com/kreabus/kreabus/pkg/krea/kreatest"
)

const (
	prometheusRuleFile = "monitoring/prometheusrule.yaml"
	promtoolTestsFile  = "monitoring/rules_test.yaml"
)

type promRule struct {
	Alert       string            `json:"alert"`
	Expr        string            `json:"expr"`
	For         string            `json:"for,omitempty"`
	Labels      map[string]string `json:"labels,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

// prometheusRuleObject is the PrometheusRule kind, for strict decoding.
type prometheusRuleObject struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              promRuleSpec `json:"spec"`
}

type promRuleSpec struct {
	Groups []struct {
		Name  string     `json:"name"`
		Rules []promRule `json:"rules"`
	} `json:"groups"`
}

func loadPrometheusRule(t *testing.T) (promRuleSpec, []byte) {
	t.Helper()
	data, err := os.ReadFile(prometheusRuleFile)
	if err != nil {
		t.Fatal(err)
	}
	var obj prometheusRuleObject
	if err := yaml.UnmarshalStrict(data, &obj); err != nil {
		t.Fatalf("%s: %v", prometheusRuleFile, err)
	}
	if obj.APIVersion != "monitoring.coreos.com/v1" || obj.Kind != "PrometheusRule" {
		t.Fatalf("%s is %s %s", prometheusRuleFile, obj.APIVersion, obj.Kind)
	}
	spec, err := yaml.Marshal(obj.Spec)
	if err != nil {
		t.Fatal(err)
	}
	return obj.Spec, spec
}

// scrape returns the metric names a /metrics page lists.
func scrape(t *testing.T, addr string) map[string]bool {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	for _, line := range strings.Split(string(body), "\n") {
		if f := strings.Fields(line); len(f) >= 3 && f[0] == "#" && f[1] == "TYPE" {
			out[f[2]] = true
		}
	}
	return out
}

// TestPrometheusRuleMetricsRegistered runs a bridge and a submitter and
// checks every metric the alerts read is on their /metrics.
func TestPrometheusRuleMetricsRegistered(t *testing.T) {
	spec, _ := loadPrometheusRule(t)
	want := map[string][]string{} // metric -> alerts
	alerts := map[string]bool{}
	for _, g := range spec.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" || r.Expr == "" || r.Labels["severity"] == "" || r.Annotations["summary"] == "" {
				t.Errorf("rule %+v lacks alert, expr, severity or summary", r)
			}
			alerts[r.Alert] = true
			refs, err := metricRefs(r.Expr)
			if err != nil {
				t.Errorf("%s: %v", r.Alert, err)
			}
			for _, ref := range refs {
				want[ref.name] = append(want[ref.name], r.Alert)
			}
		}
	}
	// What the issue asks alerts for.
	for _, a := range []string{"KreabusSubmissionPaused", "KreabusExtraJobs", "KreabusHighRejectionRate",
		"KreabusWebhook5xx", "KreabusWebhook503", "KreabusReconcilerPollFailures", "KreabusLedgerErrors"} {
		if !alerts[a] {
			t.Errorf("no alert %s", a)
		}
	}

	ns := natstest.RunServer(t)
	sim := kreatest.NewServer(kreatest.Config{})
	t.Cleanup(sim.Close)
	vars := map[string]string{
		"NATS_URL": ns.ClientURL(), "KREABUS_WEBHOOK_SECRET": "0123456789abcdef0123456789abcdef",
		"KREABUS_LISTEN": "127.0.0.1:0", "KREABUS_ADMIN_LISTEN": "127.0.0.1:0",
		"KREA_API_URL": sim.URL, "KREA_API_TOKEN": sim.Token(), "KREABUS_PUBLIC_URL": "http://127.0.0.1:1",
	}
	env := func(k string) (string, bool) { v, ok := vars[k]; return v, ok }
	var bs bridged.Settings
	var ss submitterd.Settings
	if err := config.Load(&bs, "bridge", nil, env); err != nil {
		t.Fatal(err)
	}
	if err := config.Load(&ss, "submitter", nil, env); err != nil {
		t.Fatal(err)
	}
	b, err := bridged.Start(bs, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Shutdown(context.Background()) })
	s, err := submitterd.Start(ss, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Shutdown(context.Background()) })
	var have map[string]bool
	natstest.CheckFor(t, 15*time.Second, 50*time.Millisecond, func() error {
		have = scrape(t, b.AdminAddr())
		for k := range scrape(t, s.AdminAddr()) {
			have[k] = true
		}
		for m, as := range want {
			if !have[m] {
				return &missingMetric{m, as}
			}
		}
		return nil
	})
	if len(want) < 6 {
		t.Errorf("the alerts read only %d metrics", len(want))
	}
}

type missingMetric struct {
	name   string
	alerts []string
}

func (m *missingMetric) Error() string {
	return "no program registers " + m.name + ", read by " + strings.Join(m.alerts, ", ")
}

// TestPrometheusRulePromtool checks the rules and runs their unit tests
// with promtool, when it is on PATH.
func TestPrometheusRulePromtool(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Skip("promtool not on PATH (scripts/install-promtool.sh installs it)")
	}
	_, spec := loadPrometheusRule(t)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "rules.yaml"), spec, 0o600); err != nil {
		t.Fatal(err)
	}
	tests, err := os.ReadFile(promtoolTestsFile)
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`(?m)^\s*-\s*rules\.yaml\s*$`).Match(tests) {
		t.Fatalf("%s must read rules.yaml", promtoolTestsFile)
	}
	if err := os.WriteFile(filepath.Join(dir, "rules_test.yaml"), tests, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{"check", "rules", "rules.yaml"}, {"test", "rules", "rules_test.yaml"}} {
		cmd := exec.Command(promtool, args...)
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}
