package krea

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/kreabus/kreabus/internal/clip"
)

// Client calls the Krea API. It is safe for concurrent use.
//
// No call is retried by the client: Krea has no idempotency key, so sending
// a submission twice may create and bill two jobs. Whether that risk is worth
// taking is the caller's decision; the typed errors (see ErrRetryable) and
// NetworkError.RequestSent give it what it needs to decide.
type Client struct {
	token     string
	base      string // scheme://host[/prefix], no trailing slash
	hc        *http.Client
	timeout   time.Duration
	userAgent string
}

// defaultHTTPClient does not follow redirects: a redirected POST turns into
// a GET, and Krea does not redirect API calls anyway. A 3xx is reported as
// an *APIError.
// Its transport keeps DefaultMaxIdleConns connections to the API open:
// http.DefaultTransport keeps 2, which turns every call beyond the second
// concurrent one into a new TLS handshake.
var defaultHTTPClient = &http.Client{
	Transport:     defaultTransport(),
	CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
}

// DefaultMaxIdleConns is how many idle connections the default client keeps
// to the API.
const DefaultMaxIdleConns = 64

func defaultTransport() *http.Transport {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConns = DefaultMaxIdleConns
	t.MaxIdleConnsPerHost = DefaultMaxIdleConns
	return t
}

// NewClient returns a client that authenticates with token (a Krea API key,
// sent as "Authorization: Bearer <token>").
func NewClient(token string, opts ...Option) (*Client, error) {
	if token == "" {
		return nil, errors.New("krea: empty API token")
	}
	// A stray newline from a secret file would otherwise surface as an
	// obscure transport error on the first call. The token itself is never
	// put into an error message.
	if strings.ContainsFunc(token, func(r rune) bool { return r <= ' ' || r == 0x7f }) {
		return nil, errors.New("krea: API token contains white space or control characters")
	}
	o := clientOptions{timeout: DefaultTimeout, userAgent: "kreabus/" + Version}
	for _, opt := range opts {
		if opt == nil {
			continue
		}
		if err := opt(&o); err != nil {
			return nil, err
		}
	}
	if o.baseURL == nil {
		if err := WithBaseURL(DefaultBaseURL)(&o); err != nil {
			return nil, err
		}
	}
	if o.httpClient == nil {
		o.httpClient = defaultHTTPClient
	}
	return &Client{
		token:     token,
		base:      o.baseURL.String(),
		hc:        o.httpClient,
		timeout:   o.timeout,
		userAgent: o.userAgent,
	}, nil
}

// BaseURL returns the API root the client calls.
func (c *Client) BaseURL() string { return c.base }

// SubmitResult is the API's immediate answer to a submission.
type SubmitResult struct {
	// Job is the decoded answer: job_id, status (usually queued or
	// backlogged), created_at; Job.Raw is the answer body exactly as the
	// API sent it.
	Job Job
	// Deprecation is set when the API flagged the endpoint as deprecated.
	Deprecation *Deprecation
}

// Deprecation carries the headers Krea sets on deprecated endpoints.
type Deprecation struct {
	Deprecation string // the Deprecation header
	Sunset      string // the Sunset header (an HTTP date)
	Link        string // the Link header, usually pointing at migration docs
}

// Submit starts a job: it POSTs input (a JSON object, sent unchanged) to
// path, one ValidPath accepts, such as "/generate/image/bfl/flux-1-dev" or
// "/styles/train". With WithWebhook, Krea POSTs the job to that URL when it
// ends. An option that cannot be used fails the call with an error
// matching ErrInvalidRequest, before anything is sent.
//
// On any error other than a *APIError the API may still have created the
// job (see NetworkError.RequestSent and ErrMalformedResponse). The webhook
// URL never appears in errors: it carries a per-request secret.
func (c *Client) Submit(ctx context.Context, path string, input json.RawMessage, opts ...SubmitOpt) (*SubmitResult, error) {
	if !ValidPath(path) {
		return nil, fmt.Errorf("%w: API path %q is not a generation or training endpoint", ErrInvalidRequest, clip.String(path, 128))
	}
	var o submitOpts
	for _, opt := range opts {
		if opt == nil {
			continue
		}
		if err := opt(&o); err != nil {
			return nil, err
		}
	}
	input = bytes.TrimSpace(input)
	if len(input) == 0 {
		input = json.RawMessage("{}")
	}
	if input[0] != '{' || !json.Valid(input) {
		return nil, fmt.Errorf("%w: input for %s is not a JSON object", ErrInvalidRequest, path)
	}
	hdr := http.Header{}
	if o.webhookURL != "" {
		hdr.Set("X-Webhook-URL", o.webhookURL)
	}
	resp, body, err := c.do(ctx, http.MethodPost, path, nil, input, hdr)
	if err != nil {
		return nil, err
	}
	j, err := ParseJob(body)
	if err != nil {
		return nil, &MalformedResponseError{Method: http.MethodPost, Path: path, StatusCode: resp.StatusCode, Body: body, Err: err}
	}
	res := &SubmitResult{Job: *j}
	if d, s, l := resp.Header.Get("Deprecation"), resp.Header.Get("Sunset"), resp.Header.Get("Link"); d != "" || s != "" {
		res.Deprecation = &Deprecation{Deprecation: d, Sunset: s, Link: l}
	}
	return res, nil
}

// GetJob returns the current state of a job; Job.Raw is the answer body
// exactly as the API sent it. An unknown job (or another account's) is an
// *APIError matching ErrNotFound.
func (c *Client) GetJob(ctx context.Context, id string) (*Job, error) {
	p, err := jobPath(id)
	if err != nil {
		return nil, err
	}
	resp, body, err := c.do(ctx, http.MethodGet, p, nil, nil, nil)
	if err != nil {
		return nil, err
	}
	j, err := ParseJob(body)
	if err == nil && j.JobID != id {
		err = fmt.Errorf("answer is for job %q", clip.String(j.JobID, 64))
	}
	if err != nil {
		return nil, &MalformedResponseError{Method: http.MethodGet, Path: p, StatusCode: resp.StatusCode, Body: body, Err: err}
	}
	return j, nil
}

// MaxListLimit is the largest page ListJobs may ask for.
const MaxListLimit = 1000

// ListOptions selects jobs for ListJobs. Zero values leave the API's
// defaults (newest first, 100 per page, all types and statuses).
type ListOptions struct {
	// Cursor is the NextCursor of the previous page (an ISO 8601 time:
	// jobs created before it).
	Cursor string
	// Limit is the page size, 1 to MaxListLimit; 0 means the API default.
	Limit int
	// Types filters by Krea job type (e.g. "flux", "loraTraining").
	Types []string
	// Status filters by status.
	Status Status
}

// ListJobs returns one page of the account's jobs. Follow NextCursor until
// it is empty to walk all of them.
func (c *Client) ListJobs(ctx context.Context, opts ListOptions) (*JobList, error) {
	if opts.Limit < 0 || opts.Limit > MaxListLimit {
		return nil, fmt.Errorf("%w: list limit %d outside 0..%d", ErrInvalidRequest, opts.Limit, MaxListLimit)
	}
	if opts.Status != "" && !opts.Status.Valid() {
		return nil, fmt.Errorf("%w: status filter is not well formed", ErrInvalidRequest)
	}
	q := url.Values{}
	if opts.Cursor != "" {
		q.Set("cursor", opts.Cursor)
	}
	if opts.Limit > 0 {
		q.Set("limit", strconv.Itoa(opts.Limit))
	}
	if len(opts.Types) > 0 {
		q.Set("types", strings.Join(opts.Types, ","))
	}
	if opts.Status != "" {
		q.Set("status", string(opts.Status))
	}
	resp, body, err := c.do(ctx, http.MethodGet, "/jobs", q, nil, nil)
	if err != nil {
		return nil, err
	}
	l, err := parseJobList(body)
	if err != nil {
		return nil, &MalformedResponseError{Method: http.MethodGet, Path: "/jobs", StatusCode: resp.StatusCode, Body: body, Err: err}
	}
	return l, nil
}

// CancelJob cancels a job that has not finished yet (DELETE /jobs/{id}).
// Cancelled jobs are not billed. A job that already finished is left as
// it is: Krea's document lists only 200 and 404 here, so nil does not
// prove the job was cancelled (GetJob tells); should the API refuse with
// a 4xx instead, the error is an *APIError matching ErrInvalidRequest.
func (c *Client) CancelJob(ctx context.Context, id string) error {
	p, err := jobPath(id)
	if err != nil {
		return err
	}
	_, _, err = c.do(ctx, http.MethodDelete, p, nil, nil, nil)
	return err
}

func jobPath(id string) (string, error) {
	if id == "" || id == "." || id == ".." {
		return "", fmt.Errorf("%w: empty or invalid job id", ErrInvalidRequest)
	}
	return "/jobs/" + url.PathEscape(id), nil
}

// do performs one call and returns the answer with its body read (at most
// MaxResponseBytes). Non-2xx answers become *APIError; failures to get an
// answer become *NetworkError, or the caller's context error when it was the
// caller's context that ended the call.
func (c *Client) do(ctx context.Context, method, path string, query url.Values, body []byte, extra http.Header) (*http.Response, []byte, error) {
	parent := ctx
	if c.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.timeout)
		defer cancel()
	}
	target := c.base + path
	if len(query) > 0 {
		target += "?" + query.Encode()
	}
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	var sent atomic.Bool
	trace := &httptrace.ClientTrace{WroteRequest: func(i httptrace.WroteRequestInfo) {
		if i.Err == nil {
			sent.Store(true)
		}
	}}
	req, err := http.NewRequestWithContext(httptrace.WithClientTrace(ctx, trace), method, target, rd)
	if err != nil {
		// Only a malformed base URL or method gets here; both are checked
		// earlier, so this is a programming error, not a network one.
		return nil, nil, fmt.Errorf("krea: %s %s: build request: %w", method, path, err)
	}
	for k, v := range extra {
		req.Header[k] = v
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", c.userAgent)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}

	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, nil, c.transportError(parent, method, path, err, sent.Load())
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, MaxResponseBytes+1))
	if err != nil {
		return nil, nil, c.transportError(parent, method, path, err, true)
	}
	tooBig := len(data) > MaxResponseBytes
	if tooBig {
		data = data[:MaxResponseBytes]
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return nil, nil, newAPIError(method, path, resp.StatusCode, resp.Header, data, c.token, time.Now())
	}
	if tooBig {
		return nil, nil, &MalformedResponseError{Method: method, Path: path, StatusCode: resp.StatusCode, Body: data,
			Err: fmt.Errorf("answer larger than %d bytes", MaxResponseBytes)}
	}
	return resp, data, nil
}

// transportError classifies a failure to get a complete answer.
func (c *Client) transportError(parent context.Context, method, path string, err error, sent bool) error {
	if perr := parent.Err(); perr != nil {
		// The caller gave up: that is the caller's decision, not a
		// retryable fault, so report it as the context error it is.
		return fmt.Errorf("krea: %s %s: %w", method, path, perr)
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		// url.Error repeats the full URL; Method and Path already say
		// which call failed.
		err = ue.Err
	}
	var ne net.Error
	timeout := errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout())
	return &NetworkError{Method: method, Path: path, Timeout: timeout, RequestSent: sent, Err: err}
}
