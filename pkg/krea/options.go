package krea

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// Client defaults.
const (
	// DefaultBaseURL is Krea's production API.
	DefaultBaseURL = "https://api.krea.ai"
	// DefaultTimeout bounds one API call (request and answer body) unless
	// WithTimeout says otherwise. Krea answers a submission right away and
	// does the work later, so anything slower than this is a stuck call.
	DefaultTimeout = 30 * time.Second
	// MaxResponseBytes bounds how much of an answer body is read. Job
	// objects are small; a list of 1000 jobs stays well below this.
	MaxResponseBytes = 4 << 20
)

// Option configures a Client. Options validate their input, so a bad
// configuration fails at NewClient, not on the first call.
type Option func(*clientOptions) error

type clientOptions struct {
	baseURL    *url.URL
	httpClient *http.Client
	timeout    time.Duration
	userAgent  string
}

// WithBaseURL points the client at another API root, such as a kreatest
// simulator or a proxy. It must be an absolute http or https URL without
// query or fragment; a path prefix is kept.
func WithBaseURL(raw string) Option {
	return func(o *clientOptions) error {
		u, err := url.Parse(raw)
		if err != nil {
			return fmt.Errorf("krea: invalid base URL: %w", err)
		}
		if u.Scheme != "http" && u.Scheme != "https" {
			return fmt.Errorf("krea: base URL must be http or https, got scheme %q", u.Scheme)
		}
		if u.Host == "" {
			return errors.New("krea: base URL has no host")
		}
		if u.RawQuery != "" || u.Fragment != "" || u.User != nil {
			// User info would be sent as Basic auth next to our bearer
			// token, and would end up in error messages.
			return errors.New("krea: base URL must not have user info, query or fragment")
		}
		u.Path = strings.TrimRight(u.Path, "/")
		u.RawPath = ""
		o.baseURL = u
		return nil
	}
}

// WithHTTPClient makes the client use hc for every call. The client's own
// per-call timeout still applies on top of hc.Timeout. Note that hc's
// redirect policy is used as is; the default client does not follow
// redirects, because a redirected POST is no longer the request we meant.
func WithHTTPClient(hc *http.Client) Option {
	return func(o *clientOptions) error {
		if hc == nil {
			return errors.New("krea: nil HTTP client")
		}
		o.httpClient = hc
		return nil
	}
}

// WithTimeout sets the per-call timeout (default DefaultTimeout). Zero turns
// it off, leaving only the caller's context to bound a call.
func WithTimeout(d time.Duration) Option {
	return func(o *clientOptions) error {
		if d < 0 {
			return fmt.Errorf("krea: negative timeout %v", d)
		}
		o.timeout = d
		return nil
	}
}

// WithUserAgent appends suffix (e.g. "submitter/1.2") to the User-Agent
// "kreabus/<Version>".
func WithUserAgent(suffix string) Option {
	return func(o *clientOptions) error {
		suffix = strings.TrimSpace(suffix)
		if strings.ContainsFunc(suffix, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
			return errors.New("krea: user agent suffix contains control characters")
		}
		if suffix != "" {
			o.userAgent = "kreabus/" + Version + " " + suffix
		}
		return nil
	}
}

// SubmitOpt configures one Client.Submit call. Options validate their
// input: one given a value it cannot use fails Submit with an error
// matching ErrInvalidRequest, before anything is sent.
type SubmitOpt func(*submitOpts) error

type submitOpts struct {
	webhookURL string
}

// WithWebhook has Krea POST the job to rawURL when it ends (the
// X-Webhook-URL header). rawURL must be an absolute http or https URL. It
// never appears in errors: a webhook URL usually carries a secret (a
// kreabus webhook token, for one).
func WithWebhook(rawURL string) SubmitOpt {
	return func(o *submitOpts) error {
		u, err := url.Parse(rawURL)
		if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" ||
			strings.ContainsFunc(rawURL, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
			return fmt.Errorf("%w: webhook URL is not an absolute http(s) URL", ErrInvalidRequest)
		}
		o.webhookURL = rawURL
		return nil
	}
}
