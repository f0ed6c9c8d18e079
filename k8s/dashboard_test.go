package k8s_test

// Tests of dashboards/kreabus.json: valid Grafana JSON whose queries name only
// metrics the programs export, use counters and histograms correctly, and
// cover every kreabus metric.

import (
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

const dashboardFile = "../dashboards/kreabus.json"

type metricType int

const (
	counter metricType = iota
	gauge
	histogram
	summary
)

// knownMetrics: the kreabus metrics (names pinned in the brief of the
// programs) and the Go / process collectors' defaults.
var knownMetrics = map[string]metricType{
	"kreabus_bridge_webhooks_total":             counter,
	"kreabus_bridge_duplicates_total":           counter,
	"kreabus_bridge_publish_duration_seconds":   histogram,
	"kreabus_bridge_requests_in_flight":         gauge,
	"kreabus_submitter_requests_consumed_total": counter,
	"kreabus_submitter_api_calls_total":         counter,
	"kreabus_submitter_api_duration_seconds":    histogram,
	"kreabus_submitter_retries_total":           counter,
	"kreabus_submitter_rejections_total":        counter,
	"kreabus_submitter_paused":                  gauge,
	"kreabus_submitter_pauses_total":            counter,
	"kreabus_reconciler_polls_total":            counter,
	"kreabus_nats_connected":                    gauge,
	// Exported by the programs beyond the list above.
	"kreabus_submitter_submitted_total":     counter,
	"kreabus_submitter_requests_in_flight":  gauge,
	"kreabus_submitter_concurrency_limit":   gauge,
	"kreabus_submitter_republished_total":   counter,
	"kreabus_submitter_ledger_errors_total": counter,
	"kreabus_ledger_events_total":           counter,
	"kreabus_reconciler_pending_jobs":       gauge,

	"go_goroutines":                 gauge,
	"go_threads":                    gauge,
	"go_gc_duration_seconds":        summary,
	"go_memstats_alloc_bytes":       gauge,
	"go_memstats_heap_alloc_bytes":  gauge,
	"go_memstats_heap_inuse_bytes":  gauge,
	"go_memstats_sys_bytes":         gauge,
	"process_cpu_seconds_total":     counter,
	"process_resident_memory_bytes": gauge,
	"process_virtual_memory_bytes":  gauge,
	"process_open_fds":              gauge,
	"process_max_fds":               gauge,
	"process_start_time_seconds":    gauge,
}

// PromQL functions and aggregations the dashboard may call.
var promFuncs = map[string]bool{
	"sum": true, "min": true, "max": true, "avg": true, "count": true, "topk": true, "bottomk": true,
	"quantile": true, "stddev": true, "rate": true, "irate": true, "increase": true, "delta": true,
	"histogram_quantile": true, "clamp_min": true, "clamp_max": true, "abs": true, "vector": true,
	"scalar": true, "time": true, "max_over_time": true, "min_over_time": true, "avg_over_time": true,
	"label_replace": true, "changes": true, "resets": true, "absent": true, "round": true,
}

var promKeywords = map[string]bool{
	"by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true,
	"and": true, "or": true, "unless": true, "bool": true, "offset": true, "inf": true, "nan": true,
}

type metricRef struct {
	name  string
	funcs []string // enclosing functions, outermost first
}

var (
	promString  = regexp.MustCompile(`"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|` + "`[^`]*`")
	promBraces  = regexp.MustCompile(`\{[^{}]*\}`)
	promRange   = regexp.MustCompile(`\[[^\[\]]*\]`)
	promVar     = regexp.MustCompile(`\$\{?\w+\}?`)
	promToken   = regexp.MustCompile(`[A-Za-z_:][A-Za-z0-9_:]*|\d+(?:\.\d+)?(?:[eE][-+]?\d+)?[a-z]*|\(|\)|,|[^\sA-Za-z0-9_:(),]+`)
	promIdent   = regexp.MustCompile(`^[A-Za-z_:][A-Za-z0-9_:]*$`)
	labelValues = regexp.MustCompile(`^label_values\(\s*([A-Za-z_:][A-Za-z0-9_:]*)\s*(\{[^}]*\})?\s*,\s*[A-Za-z_]\w*\s*\)$`)
)

// metricRefs lists the metric names a PromQL expression reads, each with the
// functions around it. It is a small scanner, not a full parser: enough to
// tell metric names from functions, keywords and label names.
func metricRefs(expr string) ([]metricRef, error) {
	s := promString.ReplaceAllString(expr, `""`)
	s = promBraces.ReplaceAllString(s, "")
	s = promRange.ReplaceAllString(s, "")
	s = promVar.ReplaceAllString(s, "")
	if strings.ContainsAny(s, "{}[]") {
		return nil, fmt.Errorf("unbalanced braces or brackets in %q", expr)
	}
	toks := promToken.FindAllString(s, -1)
	var refs []metricRef
	var stack []string // "" for a plain parenthesis
	pending := ""
	for i := 0; i < len(toks); i++ {
		tok := toks[i]
		next := ""
		if i+1 < len(toks) {
			next = toks[i+1]
		}
		switch {
		case tok == "(":
			stack = append(stack, pending)
			pending = ""
		case tok == ")":
			if len(stack) == 0 {
				return nil, fmt.Errorf("unbalanced parentheses in %q", expr)
			}
			stack = stack[:len(stack)-1]
		case !promIdent.MatchString(tok):
			// number, duration, operator, comma
		case promKeywords[strings.ToLower(tok)]:
			// by (...), on (...) etc. take a list of label names: skip it.
			if next == "(" && tok != "and" && tok != "or" && tok != "unless" {
				depth := 0
				for i++; i < len(toks); i++ {
					if toks[i] == "(" {
						depth++
					} else if toks[i] == ")" {
						depth--
						if depth == 0 {
							break
						}
					}
				}
			}
		case promFuncs[tok]:
			if next != "(" && next != "by" && next != "without" {
				return nil, fmt.Errorf("%s without arguments in %q", tok, expr)
			}
			pending = tok
		case next == "(":
			return nil, fmt.Errorf("unknown function %s in %q", tok, expr)
		default:
			var funcs []string
			for _, f := range stack {
				if f != "" {
					funcs = append(funcs, f)
				}
			}
			refs = append(refs, metricRef{name: tok, funcs: funcs})
		}
	}
	if len(stack) != 0 {
		return nil, fmt.Errorf("unbalanced parentheses in %q", expr)
	}
	return refs, nil
}

// checkExpr returns what is wrong with one dashboard query: unknown metrics,
// counters read without rate/increase, histograms without quantiles, gauges
// fed to rate.
func checkExpr(expr string) []error {
	var errs []error
	refs, err := metricRefs(expr)
	if err != nil {
		return []error{err}
	}
	if len(refs) == 0 {
		return []error{fmt.Errorf("%q reads no metric", expr)}
	}
	for _, r := range refs {
		name, typ, series := r.name, metricType(-1), ""
		if t, ok := knownMetrics[name]; ok {
			typ = t
		} else {
			for _, suffix := range []string{"_bucket", "_sum", "_count"} {
				base := strings.TrimSuffix(name, suffix)
				if t, ok := knownMetrics[base]; ok && base != name && (t == histogram || (t == summary && suffix != "_bucket")) {
					typ, series = t, suffix
				}
			}
		}
		if typ < 0 {
			errs = append(errs, fmt.Errorf("%q: unknown metric %s", expr, name))
			continue
		}
		inner := ""
		if len(r.funcs) > 0 {
			inner = r.funcs[len(r.funcs)-1]
		}
		rated := inner == "rate" || inner == "irate" || inner == "increase"
		switch {
		case typ == histogram && series == "":
			errs = append(errs, fmt.Errorf("%q: histogram %s read without _bucket/_sum/_count", expr, name))
		case typ == counter || series != "":
			if !rated {
				errs = append(errs, fmt.Errorf("%q: counter %s must be read through rate(), irate() or increase()", expr, name))
			}
			if series == "_bucket" && !slices.Contains(r.funcs, "histogram_quantile") {
				errs = append(errs, fmt.Errorf("%q: %s outside histogram_quantile()", expr, name))
			}
		case rated:
			errs = append(errs, fmt.Errorf("%q: %s is a gauge; rate() of a gauge is meaningless", expr, name))
		}
	}
	return errs
}

type dashboard struct {
	UID           string  `json:"uid"`
	Title         string  `json:"title"`
	SchemaVersion int     `json:"schemaVersion"`
	Panels        []panel `json:"panels"`
	Templating    struct {
		List []struct {
			Name       string          `json:"name"`
			Type       string          `json:"type"`
			Query      json.RawMessage `json:"query"`
			Datasource json.RawMessage `json:"datasource"`
		} `json:"list"`
	} `json:"templating"`
}

type panel struct {
	ID         int                      `json:"id"`
	Type       string                   `json:"type"`
	Title      string                   `json:"title"`
	Datasource json.RawMessage          `json:"datasource"`
	GridPos    struct{ H, W, X, Y int } `json:"gridPos"`
	Targets    []struct {
		Expr  string `json:"expr"`
		RefID string `json:"refId"`
	} `json:"targets"`
	Panels []panel `json:"panels"` // collapsed rows
}

func TestDashboard(t *testing.T) {
	data, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	if !json.Valid(data) {
		t.Fatalf("%s is not valid JSON", dashboardFile)
	}
	var d dashboard
	if err := json.Unmarshal(data, &d); err != nil {
		t.Fatal(err)
	}
	if d.UID == "" || d.Title == "" || d.SchemaVersion < 36 {
		t.Errorf("uid, title and schemaVersion >= 36 are required (got %q, %q, %d)", d.UID, d.Title, d.SchemaVersion)
	}

	vars := map[string]bool{}
	for _, v := range d.Templating.List {
		vars[v.Name] = true
		if v.Type != "query" {
			continue
		}
		var q struct {
			Query string `json:"query"`
		}
		if err := json.Unmarshal(v.Query, &q); err != nil {
			t.Errorf("variable %s: %v", v.Name, err)
			continue
		}
		m := labelValues.FindStringSubmatch(q.Query)
		if m == nil {
			t.Errorf("variable %s: query %q is not label_values(metric, label)", v.Name, q.Query)
		} else if _, ok := knownMetrics[m[1]]; !ok {
			t.Errorf("variable %s: unknown metric %s", v.Name, m[1])
		}
	}
	if !vars["datasource"] {
		t.Error("no datasource variable: the dashboard would be tied to one Prometheus")
	}

	used := map[string]bool{}
	ids := map[int]bool{}
	var walk func(ps []panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			if ids[p.ID] {
				t.Errorf("panel id %d used twice", p.ID)
			}
			ids[p.ID] = true
			if p.GridPos.W <= 0 || p.GridPos.H <= 0 || p.GridPos.X < 0 || p.GridPos.X+p.GridPos.W > 24 {
				t.Errorf("panel %q: gridPos %+v outside the 24-column grid", p.Title, p.GridPos)
			}
			if p.Type == "row" {
				walk(p.Panels)
				continue
			}
			if p.Title == "" {
				t.Errorf("panel %d has no title", p.ID)
			}
			if !strings.Contains(string(p.Datasource), "${datasource}") {
				t.Errorf("panel %q: datasource must be ${datasource}", p.Title)
			}
			if len(p.Targets) == 0 {
				t.Errorf("panel %q has no query", p.Title)
			}
			refIDs := map[string]bool{}
			for _, tg := range p.Targets {
				if tg.RefID == "" || refIDs[tg.RefID] {
					t.Errorf("panel %q: missing or repeated refId %q", p.Title, tg.RefID)
				}
				refIDs[tg.RefID] = true
				for _, err := range checkExpr(tg.Expr) {
					t.Errorf("panel %q: %v", p.Title, err)
				}
				refs, _ := metricRefs(tg.Expr)
				for _, r := range refs {
					for _, suffix := range []string{"_bucket", "_sum", "_count"} {
						if _, ok := knownMetrics[strings.TrimSuffix(r.name, suffix)]; ok {
							used[strings.TrimSuffix(r.name, suffix)] = true
						}
					}
					used[r.name] = true
				}
			}
		}
	}
	walk(d.Panels)

	// Every kreabus metric has a panel, and the runtime panels exist.
	for name := range knownMetrics {
		if strings.HasPrefix(name, "kreabus_") && !used[name] {
			t.Errorf("metric %s has no panel", name)
		}
	}
	for _, name := range []string{"process_resident_memory_bytes", "process_cpu_seconds_total"} {
		if !used[name] {
			t.Errorf("no %s panel (memory / CPU)", name)
		}
	}
}

// TestCheckExprCatchesMistakes: the query checker must reject what it is
// there to reject.
func TestCheckExprCatchesMistakes(t *testing.T) {
	good := []string{
		`sum by (outcome) (rate(kreabus_bridge_webhooks_total{namespace=~"$namespace", code=~"5.."}[$__rate_interval]))`,
		`histogram_quantile(0.99, sum by (le) (rate(kreabus_bridge_publish_duration_seconds_bucket[5m])))`,
		`sum(rate(kreabus_bridge_webhooks_total{code=~"5.."}[5m])) / sum(rate(kreabus_bridge_webhooks_total[5m]))`,
		`max by (pod) (kreabus_submitter_paused)`,
		`sum by (pod) (process_resident_memory_bytes and on (namespace, pod) kreabus_nats_connected)`,
		`sum(rate(kreabus_submitter_api_duration_seconds_sum[5m])) / sum(rate(kreabus_submitter_api_duration_seconds_count[5m]))`,
		`max(go_gc_duration_seconds{quantile="1"})`,
	}
	for _, e := range good {
		if errs := checkExpr(e); len(errs) > 0 {
			t.Errorf("rejected a good query: %v", errs)
		}
	}
	bad := []struct{ expr, want string }{
		{`rate(kreabus_bridge_webhook_total[5m])`, "unknown metric kreabus_bridge_webhook_total"},
		{`sum(rate(kreabus_bridge_webhooks_total{code="500"}[5m])) / sum(rate(http_requests_total[5m]))`, "unknown metric http_requests_total"},
		{`sum(kreabus_bridge_webhooks_total)`, "must be read through rate()"},
		{`kreabus_bridge_publish_duration_seconds`, "read without _bucket"},
		{`sum by (le) (rate(kreabus_bridge_publish_duration_seconds_bucket[5m]))`, "outside histogram_quantile()"},
		{`rate(kreabus_nats_connected[5m])`, "is a gauge"},
		{`rat(kreabus_bridge_webhooks_total[5m])`, "unknown function rat"},
		{`sum(rate(kreabus_bridge_webhooks_total[5m])`, "unbalanced"},
		{`vector(1)`, "reads no metric"},
	}
	for _, tc := range bad {
		errs := checkExpr(tc.expr)
		found := false
		for _, err := range errs {
			found = found || strings.Contains(err.Error(), tc.want)
		}
		if !found {
			t.Errorf("%s: got %v, want an error containing %q", tc.expr, errs, tc.want)
		}
	}
}

// TestDashboardMetricsExist: every kreabus metric the dashboard reads is
// exported by the code (its name appears as a string literal in a non-test
// Go file of the module), so a renamed metric cannot leave a panel empty.
func TestDashboardMetricsExist(t *testing.T) {
	literal := regexp.MustCompile(`"(kreabus_[a-z0-9_]+)"`)
	exported := map[string]bool{}
	files := 0
	for _, dir := range []string{"../cmd", "../internal", "../pkg"} {
		err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				if os.IsNotExist(err) {
					return fs.SkipDir
				}
				return err
			}
			if d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
				return nil
			}
			data, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			files++
			for _, m := range literal.FindAllSubmatch(data, -1) {
				exported[string(m[1])] = true
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if len(exported) == 0 {
		t.Skipf("no kreabus_* metric literal in %d Go files: nothing to compare with", files)
	}
	for name := range knownMetrics {
		if strings.HasPrefix(name, "kreabus_") && !exported[name] {
			t.Errorf("the dashboard reads %s, but no program exports it", name)
		}
	}
}
