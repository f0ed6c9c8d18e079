package mirror

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/kreabus/kreabus/pkg/krea"
)

// Fetcher limits.
const (
	// MaxRedirects bounds the redirects one download follows.
	MaxRedirects = 5
	// dialTimeout and tlsTimeout bound connecting; the idle watchdog the
	// wait for the answer and every byte of it.
	dialTimeout = 10 * time.Second
	tlsTimeout  = 10 * time.Second
)

// ErrTooLarge is matched by the error of a result larger than the limit.
var ErrTooLarge = errors.New("result larger than KREABUS_RESULTS_MAX_BYTES")

// ErrStalled is matched by the error of a download that received nothing
// for the idle timeout.
var ErrStalled = errors.New("no data within KREABUS_RESULTS_IDLE_TIMEOUT")

// FetchError is the error of one download attempt.
type FetchError struct {
	URL string // without query: it may carry a signature
	// Status is the HTTP status of a non-2xx answer, 0 otherwise.
	Status int
	// Retryable says another attempt may succeed: a 5xx answer, a
	// network error, a timeout. A 4xx, a refused URL or a result over the
	// size limit is final.
	Retryable bool
	Err       error
}

func (e *FetchError) Error() string {
	if e.Status != 0 {
		return fmt.Sprintf("GET %s: %s", e.URL, http.StatusText(e.Status)+" ("+strconv.Itoa(e.Status)+")")
	}
	return fmt.Sprintf("GET %s: %v", e.URL, e.Err)
}

func (e *FetchError) Unwrap() error { return e.Err }

// FetchConfig configures a Fetcher.
type FetchConfig struct {
	Policy      Policy
	MaxBytes    int64         // largest body
	Timeout     time.Duration // one attempt, start to end
	IdleTimeout time.Duration // longest wait for headers or the next byte
	// RootCAs replaces the system roots (tests).
	RootCAs *x509.CertPool
}

// Fetcher downloads results under the policy, streaming.
type Fetcher struct {
	cfg    FetchConfig
	client *http.Client
	tr     *http.Transport
}

// NewFetcher returns a Fetcher. Proxies from the environment are not
// used: the address checks must see the real destination.
func NewFetcher(cfg FetchConfig) *Fetcher {
	f := &Fetcher{cfg: cfg}
	d := &net.Dialer{
		Timeout: dialTimeout,
		// Control runs on the address about to be connected to, after
		// name resolution: a host name that resolves to a private
		// address (or is rebound to one) is refused here.
		Control: func(network, address string, _ syscall.RawConn) error {
			ap, err := netip.ParseAddrPort(address)
			if err != nil {
				return fmt.Errorf("%w: address %q", ErrRefused, address)
			}
			return f.cfg.Policy.CheckAddr(ap)
		},
	}
	f.tr = &http.Transport{
		Proxy:                  nil,
		DialContext:            d.DialContext,
		TLSClientConfig:        &tls.Config{RootCAs: cfg.RootCAs, MinVersion: tls.VersionTLS12},
		TLSHandshakeTimeout:    tlsTimeout,
		ForceAttemptHTTP2:      true,
		MaxIdleConns:           16,
		MaxIdleConnsPerHost:    4,
		IdleConnTimeout:        90 * time.Second,
		MaxResponseHeaderBytes: 64 << 10,
	}
	f.client = &http.Client{
		Transport: f.tr,
		CheckRedirect: func(req *http.Request, via []*http.Request) error {
			if len(via) > MaxRedirects {
				return fmt.Errorf("%w: more than %d redirects", ErrRefused, MaxRedirects)
			}
			if err := f.cfg.Policy.CheckURL(req.URL); err != nil {
				return fmt.Errorf("redirect to %s: %w", redact(req.URL), err)
			}
			return nil
		},
	}
	return f
}

// Close closes idle connections.
func (f *Fetcher) Close() { f.tr.CloseIdleConnections() }

// Download is an open download: read Body, then Close it.
type Download struct {
	Body        io.ReadCloser // at most MaxBytes; errors are *FetchError
	ContentType string
	// Length is the announced Content-Length, -1 when unknown.
	Length int64
}

// Open starts downloading rawURL. The returned body ends the download when
// the attempt's timeout passes or nothing arrives for the idle timeout.
func (f *Fetcher) Open(ctx context.Context, rawURL string) (*Download, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, &FetchError{URL: "(unparsable URL)", Err: fmt.Errorf("%w: %v", ErrRefused, err)}
	}
	shown := redact(u)
	if err := f.cfg.Policy.CheckURL(u); err != nil {
		return nil, &FetchError{URL: shown, Err: err}
	}
	// The attempt's bound is a timer of its own, not a context deadline: a
	// handler's context is a lease whose deadline moves with every
	// extension, and a deadline past the parent's is never armed.
	ctx, cancel := context.WithCancel(ctx)
	w := newWatchdog(f.cfg.IdleTimeout, f.cfg.Timeout, cancel)
	fail := func(err error) (*Download, error) {
		w.stop()
		cancel()
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return fail(&FetchError{URL: shown, Err: err})
	}
	req.Header.Set("User-Agent", "kreabus-mirror/"+krea.Version)
	req.Header.Set("Accept", "*/*")
	resp, err := f.client.Do(req)
	if err != nil {
		return fail(f.classify(shown, err, w))
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 || resp.StatusCode == http.StatusPartialContent {
		_ = resp.Body.Close()
		return fail(&FetchError{URL: shown, Status: resp.StatusCode, Retryable: resp.StatusCode >= 500,
			Err: fmt.Errorf("HTTP %d", resp.StatusCode)})
	}
	if resp.ContentLength > f.cfg.MaxBytes {
		_ = resp.Body.Close()
		return fail(&FetchError{URL: shown, Err: fmt.Errorf("%w: Content-Length %d > %d", ErrTooLarge, resp.ContentLength, f.cfg.MaxBytes)})
	}
	w.kick()
	return &Download{
		Body:        &body{f: f, url: shown, rc: resp.Body, left: f.cfg.MaxBytes, w: w, cancel: cancel},
		ContentType: contentType(resp.Header.Get("Content-Type")),
		Length:      resp.ContentLength,
	}, nil
}

// classify turns a transport error into a FetchError.
func (f *Fetcher) classify(shown string, err error, w *watchdog) *FetchError {
	switch {
	case errors.Is(err, ErrRefused):
		return &FetchError{URL: shown, Err: err}
	case w.fired():
		return &FetchError{URL: shown, Retryable: true, Err: ErrStalled}
	case w.expired():
		return &FetchError{URL: shown, Retryable: true, Err: fmt.Errorf("KREABUS_RESULTS_TIMEOUT (%v) passed", f.cfg.Timeout)}
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err // its text repeats the full URL
	}
	return &FetchError{URL: shown, Retryable: true, Err: err}
}

// contentType keeps a well-formed media type, else the generic one.
func contentType(v string) string {
	mt, params, err := mime.ParseMediaType(v)
	if err != nil || v == "" {
		return "application/octet-stream"
	}
	return mime.FormatMediaType(mt, params)
}

// redact drops what may be secret in a URL (query, fragment, user) before
// it is logged or reported.
func redact(u *url.URL) string {
	c := *u
	c.User, c.RawQuery, c.Fragment, c.RawFragment = nil, "", "", ""
	return c.String()
}

// body is a download's body: bounded, watched, its errors FetchErrors.
type body struct {
	f      *Fetcher
	url    string
	rc     io.ReadCloser
	left   int64
	w      *watchdog
	cancel context.CancelFunc
}

func (b *body) Read(p []byte) (int, error) {
	if b.left < 0 {
		return 0, &FetchError{URL: b.url, Err: fmt.Errorf("%w (%d bytes)", ErrTooLarge, b.f.cfg.MaxBytes)}
	}
	// Read one byte past the limit to tell "exactly the limit" from "more".
	if int64(len(p)) > b.left+1 {
		p = p[:b.left+1]
	}
	n, err := b.rc.Read(p)
	if n > 0 {
		b.w.kick()
	}
	b.left -= int64(n)
	if b.left < 0 {
		return 0, &FetchError{URL: b.url, Err: fmt.Errorf("%w (%d bytes)", ErrTooLarge, b.f.cfg.MaxBytes)}
	}
	if err != nil && err != io.EOF {
		return n, b.f.classify(b.url, err, b.w)
	}
	return n, err
}

func (b *body) Close() error {
	b.w.stop()
	b.cancel()
	return b.rc.Close()
}

// watchdog cancels a download that makes no progress for d.
type watchdog struct {
	d      time.Duration
	t      *time.Timer
	total  *time.Timer // KREABUS_RESULTS_TIMEOUT
	mu     sync.Mutex
	didIt  bool
	cancel context.CancelFunc
	end    time.Time // when the attempt's KREABUS_RESULTS_TIMEOUT passes
}

func newWatchdog(d, total time.Duration, cancel context.CancelFunc) *watchdog {
	w := &watchdog{d: d, cancel: cancel, end: time.Now().Add(total)}
	w.t = time.AfterFunc(d, func() {
		w.mu.Lock()
		w.didIt = true
		w.mu.Unlock()
		cancel()
	})
	w.total = time.AfterFunc(total, cancel)
	return w
}

func (w *watchdog) kick()         { w.t.Reset(w.d) }
func (w *watchdog) expired() bool { return !time.Now().Before(w.end) }
func (w *watchdog) stop()         { w.t.Stop(); w.total.Stop() }
func (w *watchdog) fired() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.didIt
}
