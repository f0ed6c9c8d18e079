package mirror

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestAddrKind(t *testing.T) {
	for addr, want := range map[string]string{
		"93.184.216.34":          "",
		"2606:4700::6810:84e5":   "",
		"127.0.0.1":              "loopback",
		"127.8.9.10":             "loopback",
		"::1":                    "loopback",
		"::ffff:127.0.0.1":       "loopback",
		"10.1.2.3":               "private",
		"172.16.0.1":             "private",
		"192.168.1.1":            "private",
		"fd00:ec2::254":          "private", // AWS metadata over IPv6
		"169.254.169.254":        "link-local (cloud metadata lives there)",
		"fe80::1":                "link-local (cloud metadata lives there)",
		"100.64.0.1":             "shared",
		"0.0.0.0":                "unspecified",
		"::":                     "unspecified",
		"0.1.2.3":                "reserved",
		"255.255.255.255":        "reserved",
		"224.0.0.1":              "multicast",
		"ff02::1":                "multicast",
		"64:ff9b::7f00:1":        "loopback",                                // NAT64 of 127.0.0.1
		"64:ff9b::5db8:d822":     "",                                        // NAT64 of a public address
		"2002:a9fe:a9fe::1":      "link-local (cloud metadata lives there)", // 6to4 of 169.254.169.254
		"2001:db8::1":            "reserved",
		"198.18.0.1":             "reserved",
		"::ffff:169.254.169.254": "link-local (cloud metadata lives there)",
	} {
		if got := addrKind(netip.MustParseAddr(addr)); got != want {
			t.Errorf("addrKind(%s) = %q, want %q", addr, got, want)
		}
	}
}

func TestPolicy(t *testing.T) {
	hosts, err := ParseHostList(" gen.krea.ai, *.cdn.example.com ,,127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	strict := Policy{Hosts: hosts}
	local := Policy{Hosts: hosts, AllowPrivate: true}
	for raw, want := range map[string]string{
		"https://gen.krea.ai/images/x.png":       "",
		"https://GEN.krea.ai./images/x.png":      "",
		"https://a.b.cdn.example.com/x":          "",
		"https://cdn.example.com/x":              `host "cdn.example.com" is not in`,
		"https://gen.krea.ai.evil.com/x":         `host "gen.krea.ai.evil.com" is not in`,
		"http://gen.krea.ai/x":                   `scheme "http" (https only)`,
		"ftp://gen.krea.ai/x":                    `scheme "ftp"`,
		"https://user:pw@gen.krea.ai/x":          "user information",
		"https:///x":                             "without host",
		"https://127.0.0.1:8443/x":               "",
		"https://[::1]/x":                        `host "::1" is not in`,
		"https://169.254.169.254/latest/meta-da": `host "169.254.169.254" is not in`,
	} {
		u, err := url.Parse(raw)
		if err != nil {
			t.Fatal(err)
		}
		err = strict.CheckURL(u)
		if (want == "") != (err == nil) || (err != nil && (!strings.Contains(err.Error(), want) || !errors.Is(err, ErrRefused))) {
			t.Errorf("CheckURL(%s) = %v, want %q", raw, err, want)
		}
	}
	if err := local.CheckURL(&url.URL{Scheme: "http", Host: "127.0.0.1:80"}); err != nil {
		t.Errorf("AllowPrivate refuses http: %v", err)
	}
	for addr, wantLocal := range map[string]bool{"127.0.0.1:80": true, "10.0.0.1:443": true, "169.254.169.254:80": false, "[fe80::1]:80": false, "0.0.0.0:80": false} {
		ap := netip.MustParseAddrPort(addr)
		if err := strict.CheckAddr(ap); !errors.Is(err, ErrRefused) {
			t.Errorf("strict CheckAddr(%s) = %v", addr, err)
		}
		if err := local.CheckAddr(ap); (err == nil) != wantLocal {
			t.Errorf("AllowPrivate CheckAddr(%s) = %v", addr, err)
		}
	}
	for _, bad := range []string{"https://gen.krea.ai", "gen.krea.ai:443", "*.", "a..b", "*gen.krea.ai", "-x.com", "gen.krea.ai/x", "a_b.com"} {
		if _, err := ParseHostList("ok.com," + bad); err == nil || !strings.Contains(err.Error(), bad) {
			t.Errorf("ParseHostList(%q) = %v", bad, err)
		}
	}
}

// testFetcher is a Fetcher that trusts the TLS test servers and treats
// exactly the given addresses as public: the strict policy otherwise.
func testFetcher(t *testing.T, public []string, srvs ...*httptest.Server) *Fetcher {
	hosts, _ := ParseHostList("127.0.0.1")
	pol := Policy{Hosts: hosts, allowAddr: func(ap netip.AddrPort) bool {
		for _, p := range public {
			if ap.String() == p {
				return true
			}
		}
		return false
	}}
	cfg := FetchConfig{Policy: pol, MaxBytes: 1 << 20, Timeout: 5 * time.Second, IdleTimeout: time.Second}
	if len(srvs) > 0 {
		cfg.RootCAs = srvs[0].Client().Transport.(*http.Transport).TLSClientConfig.RootCAs
	}
	f := NewFetcher(cfg)
	t.Cleanup(f.Close)
	return f
}

// TestRedirectToLoopbackRefused: an allowed https server redirects to
// 127.0.0.1 (another port; host 127.0.0.1 on the allow-list, so only the
// address check stands in the way) and to the metadata address: neither
// is connected to.
func TestRedirectToLoopbackRefused(t *testing.T) {
	var inner atomic.Int32
	target := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		inner.Add(1)
		_, _ = w.Write([]byte("secret"))
	}))
	defer target.Close()
	front := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/loopback":
			http.Redirect(w, r, target.URL+"/x", http.StatusFound)
		case "/metadata":
			http.Redirect(w, r, "https://169.254.169.254/latest/meta-data/", http.StatusFound)
		case "/http":
			http.Redirect(w, r, "http://127.0.0.1/x", http.StatusFound)
		case "/loop":
			http.Redirect(w, r, "/loop", http.StatusFound)
		default:
			_, _ = w.Write([]byte("ok"))
		}
	}))
	defer front.Close()
	frontAddr := strings.TrimPrefix(front.URL, "https://")
	f := testFetcher(t, []string{frontAddr}, front)

	// The front server itself is fine.
	d, err := f.Open(context.Background(), front.URL+"/file")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(d.Body)
	d.Body.Close()
	if string(b) != "ok" {
		t.Fatalf("read %q", b)
	}
	for path, want := range map[string]string{
		"/loopback": "address 127.0.0.1 is loopback",
		"/metadata": `host "169.254.169.254" is not in`,
		"/http":     `scheme "http" (https only)`,
		"/loop":     "more than 5 redirects",
	} {
		_, err := f.Open(context.Background(), front.URL+path)
		var fe *FetchError
		if !errors.As(err, &fe) || fe.Retryable || !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want a final refusal with %q", path, err, want)
		}
	}
	// And straight to it, without a redirect.
	if _, err := f.Open(context.Background(), target.URL+"/x"); !errors.Is(err, ErrRefused) {
		t.Errorf("direct: %v", err)
	}
	if n := inner.Load(); n != 0 {
		t.Errorf("the loopback target got %d requests", n)
	}
}

// TestFetchLimits: the size limit with and without Content-Length, and a
// URL with a query keeps it out of errors.
func TestFetchLimits(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := 1 << 20
		if r.URL.Path == "/big" {
			n++
		}
		if r.URL.Query().Has("chunked") {
			for range n / 1000 {
				_, _ = w.Write(make([]byte, 1000))
			}
			_, _ = w.Write(make([]byte, n%1000))
			return
		}
		w.Header().Set("Content-Length", strconv.Itoa(n))
		_, _ = w.Write(make([]byte, n))
	}))
	defer srv.Close()
	f := testFetcher(t, []string{strings.TrimPrefix(srv.URL, "https://")}, srv)
	for _, q := range []string{"?sig=s3cret", "?chunked=1&sig=s3cret"} {
		d, err := f.Open(context.Background(), srv.URL+"/exact"+q)
		if err != nil {
			t.Fatal(err)
		}
		n, err := io.Copy(io.Discard, d.Body)
		d.Body.Close()
		if err != nil || n != 1<<20 {
			t.Errorf("exactly the limit%s: %d, %v", q, n, err)
		}
		d, err = f.Open(context.Background(), srv.URL+"/big"+q)
		if err == nil {
			_, err = io.Copy(io.Discard, d.Body)
			d.Body.Close()
		}
		if !errors.Is(err, ErrTooLarge) || strings.Contains(err.Error(), "s3cret") {
			t.Errorf("over the limit%s: %v", q, err)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	c := Config{Bucket: "bad.name", AllowHosts: "http://x", Attempts: -1, MaxBytes: -5, IdleTimeout: time.Hour}
	c.SetDefaults()
	err := c.Validate()
	for _, want := range []string{"KREABUS_RESULTS_BUCKET", "KREABUS_RESULTS_ALLOW_HOSTS", "KREABUS_RESULTS_ATTEMPTS", "KREABUS_RESULTS_MAX_BYTES", "KREABUS_RESULTS_IDLE_TIMEOUT"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate() = %v, want it to name %s", err, want)
		}
	}
	c = Config{AllowHosts: " , "}
	c.SetDefaults()
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "no host") {
		t.Errorf("empty allow-list: %v", err)
	}
	c = Config{}
	c.SetDefaults()
	if err := c.Validate(); err != nil || !c.policy.Hosts.Allows("gen.krea.ai") || c.policy.AllowPrivate {
		t.Errorf("defaults: %v %+v", err, c.policy)
	}
}

func FuzzParseHostList(f *testing.F) {
	for _, s := range []string{"gen.krea.ai", "*.krea.ai, gen.krea.ai", "127.0.0.1,::1", "", ",,", "*.", "a..b", "x_y.z", "é.com", strings.Repeat("a", 64) + ".com"} {
		f.Add(s, "gen.krea.ai")
	}
	f.Fuzz(func(t *testing.T, list, host string) {
		l, err := ParseHostList(list)
		if err != nil {
			if !l.Empty() {
				t.Fatal("a failed parse allows hosts")
			}
			return
		}
		if l.Allows(host) {
			// Whatever is allowed is a listed name or a subdomain of a
			// listed pattern, compared case-insensitively.
			h := strings.TrimSuffix(strings.ToLower(host), ".")
			ok := false
			for _, e := range strings.Split(strings.ToLower(list), ",") {
				e = strings.TrimSpace(e)
				if e == h || (strings.HasPrefix(e, "*.") && strings.HasSuffix(h, e[1:])) {
					ok = true
				}
			}
			if !ok {
				t.Fatalf("%q allows %q", list, host)
			}
		}
	})
}

// leaseLike is a handler's context as events.ConsumeJobs makes it: a
// deadline that moves with the lease and never ends the context itself.
type leaseLike struct{ context.Context }

func (leaseLike) Deadline() (time.Time, bool) { return time.Now().Add(time.Millisecond), true }

// TestTotalTimeoutUnderLease: a server that trickles bytes faster than the
// idle timeout is cut at KREABUS_RESULTS_TIMEOUT, even under a context
// whose own deadline comes first and never fires.
func TestTotalTimeoutUnderLease(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "1000")
		for range 1000 {
			if _, err := w.Write([]byte("x")); err != nil {
				return
			}
			w.(http.Flusher).Flush()
			select {
			case <-r.Context().Done():
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}))
	defer srv.Close()
	f := testFetcher(t, []string{strings.TrimPrefix(srv.URL, "https://")}, srv)
	f.cfg.Timeout, f.cfg.IdleTimeout = 300*time.Millisecond, 200*time.Millisecond
	start := time.Now()
	d, err := f.Open(leaseLike{context.Background()}, srv.URL+"/slow")
	if err == nil {
		_, err = io.ReadAll(d.Body)
		d.Body.Close()
	}
	var fe *FetchError
	if !errors.As(err, &fe) || !fe.Retryable || !strings.Contains(err.Error(), "KREABUS_RESULTS_TIMEOUT") {
		t.Fatalf("err %v, want the attempt's timeout", err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("cut after %v, want about 300ms", took)
	}
}
