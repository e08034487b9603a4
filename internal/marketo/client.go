// Package marketo is the Marketo REST client of the gateway: it gets and
// caches access tokens, reads Marketo's answer envelope (where errors come
// with HTTP 200), retries what is worth retrying, keeps every Marketo
// subscription under its rate and concurrency limits, and classifies what
// is left into a few sentinel errors.
package marketo

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"

	"github.com/leadstream/leadstream/internal/egress"
)

// Defaults for Options fields left zero.
const (
	DefaultCallTimeout      = 30 * time.Second
	DefaultMaxResponseBytes = 10 << 20
	DefaultMaxRetries       = 4
	DefaultBackoffBase      = time.Second
)

// tokenPath is the identity endpoint below the identity URL; it is also the
// path reported to Options.Observe for token requests.
const tokenPath = "/oauth/token"

// Credentials are what Marketo Admin → Web Services shows for an API user.
type Credentials struct {
	ClientID     string
	ClientSecret string
	// IdentityURL is like https://123-ABC-456.mktorest.com/identity.
	IdentityURL string
	// RESTURL is like https://123-ABC-456.mktorest.com; the /rest suffix
	// Marketo shows may be included.
	RESTURL string
}

// Options tune a Client; the zero value is usable.
type Options struct {
	// Limits is shared by every Client of the process so that all calls to
	// one Marketo subscription share its limits. nil gives this Client
	// limits of its own with the production values.
	Limits *Limits
	// Logger gets retries and back-offs at debug and warn level; nil
	// discards. Tokens and secrets are never logged.
	Logger *slog.Logger
	// CallTimeout bounds each HTTP request, token requests included
	// (default 30 s). Waiting for the limits is not part of it.
	CallTimeout time.Duration
	// MaxResponseBytes bounds the body read from Marketo (default 10 MiB).
	MaxResponseBytes int64
	// MaxRetries is how many times a transient or rate-limited call is
	// retried (default 4; negative means never). The single retry after a
	// fresh token (601/602) is not counted.
	MaxRetries int
	// BackoffBase scales the waits between retries (default 1 s): up to
	// BackoffBase·2^n with full jitter for transient errors, about
	// 20·BackoffBase after a 606.
	BackoffBase time.Duration
	// Observe, when set, is called after every HTTP request with its path
	// ("/rest/v1/activities.json", or "/oauth/token" for token requests)
	// and its result: "ok", the Marketo error code ("606"), "http_5xx",
	// "http_4xx", "http_429", "http_401" (identity), "network", "malformed" or
	// "too_large". Meant for metrics; it must be fast and safe for
	// concurrent use.
	Observe func(path, result string)
}

// Client calls the REST API of one Marketo subscription with one API
// user's credentials. It is safe for concurrent use and holds no
// goroutines, so there is nothing to close.
type Client struct {
	restBase    string // scheme://host[/prefix], without a trailing slash
	configErr   error  // set when the credentials' URLs are unusable or there is no HTTP client
	oauth       clientcredentials.Config
	http        *http.Client
	limiter     *hostLimiter
	log         *slog.Logger
	callTimeout time.Duration
	maxBody     int64
	maxRetries  int
	backoffBase time.Duration
	observe     func(path, result string)

	fetching chan struct{} // holds one value while a token request runs

	mu           sync.Mutex
	token        *oauth2.Token
	tokenFetched time.Time
}

// ErrNoHTTPClient: a Client or VerifyCredentials was given no HTTP client.
// There is no default: every call leaves through the egress client, which
// enforces MARKETO_HOSTS.
var ErrNoHTTPClient = errors.New("marketo: no HTTP client given")

// New makes a Client whose requests go through httpClient (the egress
// Marketo client). It does no I/O; unusable URLs in creds surface as
// ErrInvalidCredentials from every call, a nil httpClient as ErrNoHTTPClient.
func New(creds Credentials, httpClient *http.Client, opts Options) *Client {
	c := &Client{
		http:        httpClient,
		log:         opts.Logger,
		callTimeout: opts.CallTimeout,
		maxBody:     opts.MaxResponseBytes,
		maxRetries:  opts.MaxRetries,
		backoffBase: opts.BackoffBase,
		observe:     opts.Observe,
		fetching:    make(chan struct{}, 1),
	}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	if c.callTimeout <= 0 {
		c.callTimeout = DefaultCallTimeout
	}
	if c.maxBody <= 0 {
		c.maxBody = DefaultMaxResponseBytes
	}
	switch {
	case c.maxRetries == 0:
		c.maxRetries = DefaultMaxRetries
	case c.maxRetries < 0:
		c.maxRetries = 0
	}
	if c.backoffBase <= 0 {
		c.backoffBase = DefaultBackoffBase
	}
	if c.observe == nil {
		c.observe = func(string, string) {}
	}
	limits := opts.Limits
	if limits == nil {
		limits = NewLimits(DefaultMaxCalls, DefaultWindow, DefaultMaxConcurrent)
	}

	oauth, err := tokenConfig(creds)
	if err != nil {
		c.configErr = err
	}
	if httpClient == nil {
		c.configErr = ErrNoHTTPClient
	}
	c.oauth = oauth
	rest, err := parseRESTURL(creds.RESTURL)
	if err != nil && c.configErr == nil {
		c.configErr = err
	}
	key := ""
	if rest != nil {
		c.restBase = rest.String()
		key = hostKey(rest)
	}
	c.limiter = limits.forHost(key)
	return c
}

// VerifyCredentials asks for one token, to tell the user at once whether
// the credentials work. It returns nil, ErrInvalidCredentials (refused, or
// unusable URLs), ErrUnreachable or ErrTransient, or ErrNoHTTPClient for a
// nil httpClient (there is no default: the egress client enforces
// MARKETO_HOSTS); without a deadline in ctx it gives up after
// DefaultCallTimeout. RESTURL is checked for form only, and only when set.
func VerifyCredentials(ctx context.Context, creds Credentials, httpClient *http.Client) error {
	cfg, err := tokenConfig(creds)
	if err != nil {
		return err
	}
	if creds.RESTURL != "" {
		if _, err := parseRESTURL(creds.RESTURL); err != nil {
			return err
		}
	}
	if httpClient == nil {
		return ErrNoHTTPClient
	}
	tctx := context.WithValue(ctx, oauth2.HTTPClient, httpClient)
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		tctx, cancel = context.WithTimeout(tctx, DefaultCallTimeout)
		defer cancel()
	}
	if _, err := cfg.Token(tctx); err != nil {
		if ctxErr := ctx.Err(); ctxErr != nil {
			return fmt.Errorf("marketo: verify credentials: %w", ctxErr)
		}
		f := classifyTokenError(err)
		return fmt.Errorf("%w: verify credentials: %w", f.sentinel(), f.err)
	}
	return nil
}

func tokenConfig(creds Credentials) (clientcredentials.Config, error) {
	u, err := parseBaseURL(creds.IdentityURL)
	if err != nil {
		return clientcredentials.Config{}, fmt.Errorf("%w: identity URL: %w", ErrInvalidCredentials, err)
	}
	if creds.ClientID == "" || creds.ClientSecret == "" {
		return clientcredentials.Config{}, fmt.Errorf("%w: client id and secret are required", ErrInvalidCredentials)
	}
	return clientcredentials.Config{
		ClientID:     creds.ClientID,
		ClientSecret: creds.ClientSecret,
		TokenURL:     u.String() + tokenPath,
		// Marketo takes client_id and client_secret as parameters, not
		// HTTP Basic auth; sending them in the POST body keeps the secret
		// out of URLs and therefore out of logs and error messages.
		AuthStyle: oauth2.AuthStyleInParams,
	}, nil
}

func parseRESTURL(raw string) (*url.URL, error) {
	u, err := parseBaseURL(raw)
	if err != nil {
		return nil, fmt.Errorf("%w: REST URL: %w", ErrInvalidCredentials, err)
	}
	u.Path = strings.TrimSuffix(u.Path, "/rest")
	return u, nil
}

// parseBaseURL accepts an absolute http(s) URL without query or fragment
// and drops a trailing slash.
func parseBaseURL(raw string) (*url.URL, error) {
	u, err := url.Parse(strings.TrimSpace(raw))
	if err != nil {
		return nil, err
	}
	if u.Scheme != "https" && u.Scheme != "http" || u.Host == "" {
		return nil, fmt.Errorf("%q is not an absolute http(s) URL", raw)
	}
	if u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return nil, fmt.Errorf("%q has a query, fragment or user info", raw)
	}
	u.Path = strings.TrimRight(u.Path, "/")
	u.RawPath = ""
	return u, nil
}

// kind is how a failed request is handled.
type kind int

const (
	kindToken        kind = iota + 1 // 601/602: fresh token, retry once
	kindTransient                    // retry with backoff; ErrTransient
	kindNetwork                      // retry with backoff; ErrUnreachable
	kindRateLimit                    // 606: pause the host, retry; ErrRateLimited
	kindConcurrency                  // 615: back off, retry; ErrRateLimited
	kindQuota                        // 607: give up; ErrQuotaExceeded
	kindBadRequest                   // give up; ErrBadRequest
	kindInvalidCreds                 // give up; ErrInvalidCredentials
)

// failure is one failed request.
type failure struct {
	kind   kind
	result string // for Options.Observe
	err    error  // what went wrong: an *APIError or the cause
	token  string // the token sent, for kindToken
}

func (f *failure) sentinel() error {
	switch f.kind {
	case kindNetwork:
		return ErrUnreachable
	case kindRateLimit, kindConcurrency:
		return ErrRateLimited
	case kindQuota:
		return ErrQuotaExceeded
	case kindBadRequest:
		return ErrBadRequest
	case kindInvalidCreds:
		return ErrInvalidCredentials
	default: // kindTransient, and kindToken when a fresh token did not help
		return ErrTransient
	}
}

// classifyTokenError sorts out a failed token request. What the identity
// endpoint answered (oauth2 quotes its body) stays out of the error text.
func classifyTokenError(err error) *failure {
	var re *oauth2.RetrieveError
	if errors.As(err, &re) && re.Response != nil {
		sc := re.Response.StatusCode
		answered := describe(err, "the identity endpoint answered %s", egress.StatusClass(sc))
		switch {
		case sc == http.StatusBadRequest || sc == http.StatusUnauthorized || sc == http.StatusForbidden:
			return &failure{kind: kindInvalidCreds, result: fmt.Sprintf("http_%d", sc), err: describe(err, "the identity endpoint refused the credentials (%s)", egress.StatusClass(sc))}
		case sc >= 500 || sc == http.StatusTooManyRequests:
			return &failure{kind: kindTransient, result: "http_5xx", err: answered}
		case sc >= 300 && sc < 400:
			return &failure{kind: kindNetwork, result: "http_3xx", err: describe(err, "the identity endpoint answered with a redirect, which is not followed")}
		default: // not Marketo's identity endpoint, e.g. 404
			return &failure{kind: kindNetwork, result: "http_4xx", err: answered}
		}
	}
	if isNetwork(err) {
		return &failure{kind: kindNetwork, result: "network", err: describe(err, "identity endpoint: %s", egress.Describe(err))}
	}
	// An answer that is not a token.
	return &failure{kind: kindNetwork, result: "malformed", err: describe(err, "the identity endpoint's answer is not a token")}
}

// isNetwork tells a failed exchange from an answer that could not be read.
func isNetwork(err error) bool {
	var ue *url.Error
	var ne net.Error
	return errors.As(err, &ue) || errors.As(err, &ne) || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled)
}

// get calls a REST path and returns Marketo's successful answer, retrying
// as the failure calls for.
func (c *Client) get(ctx context.Context, path string, q url.Values) (*envelope, error) {
	if c.configErr != nil {
		return nil, c.configErr
	}
	refreshed := false
	retries := 0
	for attempt := 1; ; attempt++ {
		env, f := c.attempt(ctx, path, q)
		if f == nil {
			return env, nil
		}
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("marketo: GET %s: %w", path, err)
		}
		var wait time.Duration
		retry := false
		switch f.kind {
		case kindToken:
			if !refreshed {
				refreshed = true
				c.dropToken(f.token)
				c.log.Debug("marketo: token refused, getting a new one", "path", path, "code", f.result)
				continue
			}
		case kindTransient, kindNetwork:
			wait, retry = c.jitter(retries), true
		case kindRateLimit:
			// Marketo counts calls per subscription: every client of the
			// host stops, not only this one.
			pause := 20*c.backoffBase + rand.N(c.backoffBase)
			c.limiter.pause(pause)
			retry = true
			if retries < c.maxRetries {
				c.log.Warn("marketo: rate limit reached, pausing the subscription", "path", path, "pause", pause)
			}
		case kindConcurrency:
			wait, retry = c.backoffBase+c.jitter(retries), true
		}
		if !retry || retries >= c.maxRetries {
			return nil, c.finalError(path, f, attempt)
		}
		retries++
		c.log.Debug("marketo: retrying", "path", path, "result", f.result, "retry", retries, "wait", wait)
		if err := sleep(ctx, wait); err != nil {
			return nil, fmt.Errorf("marketo: GET %s: %w", path, err)
		}
	}
}

func (c *Client) finalError(path string, f *failure, attempts int) error {
	if f.kind == kindQuota {
		qe := &QuotaError{ResetAt: quotaResetAfter(time.Now())}
		errors.As(f.err, &qe.Err)
		return qe
	}
	if attempts > 1 {
		return fmt.Errorf("%w: GET %s (%d attempts): %w", f.sentinel(), path, attempts, f.err)
	}
	return fmt.Errorf("%w: GET %s: %w", f.sentinel(), path, f.err)
}

// jitter is exponential backoff with full jitter: a random wait up to
// BackoffBase·2^retries.
func (c *Client) jitter(retries int) time.Duration {
	ceiling := c.backoffBase << min(retries, 16)
	if ceiling <= 0 {
		return 0
	}
	return rand.N(ceiling)
}

func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// attempt makes one REST request: token, limits, HTTP, envelope.
func (c *Client) attempt(ctx context.Context, path string, q url.Values) (*envelope, *failure) {
	token, f := c.accessToken(ctx)
	if f != nil {
		return nil, f
	}
	release, err := c.limiter.acquire(ctx)
	if err != nil {
		return nil, &failure{kind: kindNetwork, result: "canceled", err: err}
	}
	defer release()

	cctx, cancel := context.WithTimeout(ctx, c.callTimeout)
	defer cancel()
	target := c.restBase + path
	if len(q) > 0 {
		target += "?" + q.Encode()
	}
	req, err := http.NewRequestWithContext(cctx, http.MethodGet, target, nil)
	if err != nil {
		return nil, c.failed(path, &failure{kind: kindBadRequest, result: "bad_request", err: err})
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Accept", "application/json")
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, c.failed(path, &failure{kind: kindNetwork, result: "network", err: describe(err, "REST API: %s", egress.Describe(err))})
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, c.maxBody+1))
	resp.Body.Close()
	if err != nil {
		return nil, c.failed(path, &failure{kind: kindNetwork, result: "network", err: describe(err, "REST API: reading the answer: %s", egress.Describe(err))})
	}
	if int64(len(body)) > c.maxBody {
		return nil, c.failed(path, &failure{kind: kindBadRequest, result: "too_large", err: fmt.Errorf("answer larger than %d bytes", c.maxBody)})
	}
	// Only the status code is kept: the reason phrase and the body are
	// the upstream's words.
	switch sc := resp.StatusCode; {
	case sc >= 500:
		return nil, c.failed(path, &failure{kind: kindTransient, result: "http_5xx", err: fmt.Errorf("REST API answered %s", egress.StatusClass(sc))})
	case sc == http.StatusTooManyRequests:
		return nil, c.failed(path, &failure{kind: kindRateLimit, result: "http_429", err: errors.New("REST API answered HTTP 429 (too many requests)")})
	case sc >= 300 && sc < 400:
		return nil, c.failed(path, &failure{kind: kindBadRequest, result: "http_3xx", err: errors.New("REST API answered with a redirect, which is not followed")})
	case sc < 200 || sc > 299:
		return nil, c.failed(path, &failure{kind: kindBadRequest, result: "http_4xx", err: fmt.Errorf("REST API answered %s", egress.StatusClass(sc))})
	}
	var env envelope
	if err := json.Unmarshal(body, &env); err != nil {
		return nil, c.failed(path, &failure{kind: kindNetwork, result: "malformed", err: errors.New("REST API answer is not JSON")})
	}
	if env.Success == nil {
		return nil, c.failed(path, &failure{kind: kindNetwork, result: "malformed", err: errors.New("answer has no success field")})
	}
	if !*env.Success {
		f := classifyAPIErrors(env.Errors)
		f.token = token
		return nil, c.failed(path, f)
	}
	if len(env.Warnings) > 0 {
		w, _ := json.Marshal(env.Warnings) // re-encoding valid JSON cannot fail
		if len(w) > 200 {
			w = append(w[:200:200], "…"...)
		}
		c.log.Debug("marketo: warnings (excerpt)", "path", path, "warnings", strings.ToValidUTF8(string(w), ""))
	}
	c.observe(path, "ok")
	return &env, nil
}

func (c *Client) failed(path string, f *failure) *failure {
	c.observe(path, f.result)
	return f
}

// classifyAPIErrors sorts out an answer with success:false by its first error.
func classifyAPIErrors(errs []apiErrorJSON) *failure {
	if len(errs) == 0 {
		return &failure{kind: kindTransient, result: "unknown", err: errors.New("success is false but no error given")}
	}
	ae := &APIError{Code: string(errs[0].Code), Message: errs[0].Message}
	f := &failure{result: ae.Code, err: ae}
	switch ae.Code {
	case "601", "602":
		f.kind = kindToken
	case "604", "608", "611", "713", "502":
		f.kind = kindTransient
	case "606":
		f.kind = kindRateLimit
	case "615":
		f.kind = kindConcurrency
	case "607":
		f.kind = kindQuota
	default:
		f.kind = kindBadRequest
	}
	return f
}

// accessToken returns a cached token or gets one. Concurrent callers wait
// for a single token request instead of each making one.
func (c *Client) accessToken(ctx context.Context) (string, *failure) {
	if tok := c.cachedToken(); tok != "" {
		return tok, nil
	}
	select {
	case c.fetching <- struct{}{}:
	case <-ctx.Done():
		return "", &failure{kind: kindNetwork, result: "canceled", err: ctx.Err()}
	}
	defer func() { <-c.fetching }()
	if tok := c.cachedToken(); tok != "" {
		return tok, nil
	}
	tctx, cancel := context.WithTimeout(context.WithValue(ctx, oauth2.HTTPClient, c.http), c.callTimeout)
	defer cancel()
	fetched := time.Now()
	tok, err := c.oauth.Token(tctx)
	if err != nil {
		return "", c.failed(tokenPath, classifyTokenError(err))
	}
	c.observe(tokenPath, "ok")
	c.mu.Lock()
	c.token, c.tokenFetched = tok, fetched
	c.mu.Unlock()
	return tok.AccessToken, nil
}

// cachedToken is the cached token while it has some life left, else "".
func (c *Client) cachedToken() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.token == nil {
		return ""
	}
	if !c.token.Expiry.IsZero() {
		// Renew a little early so a token does not expire on the way.
		margin := min(30*time.Second, c.token.Expiry.Sub(c.tokenFetched)/10)
		if !time.Now().Before(c.token.Expiry.Add(-margin)) {
			return ""
		}
	}
	return c.token.AccessToken
}

// dropToken forgets the cached token if it is still the one Marketo refused.
func (c *Client) dropToken(refused string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.token != nil && c.token.AccessToken == refused {
		c.token = nil
	}
}

// envelope is Marketo's REST answer.
type envelope struct {
	RequestID     string            `json:"requestId"`
	Success       *bool             `json:"success"`
	Errors        []apiErrorJSON    `json:"errors"`
	Result        json.RawMessage   `json:"result"`
	NextPageToken string            `json:"nextPageToken"`
	MoreResult    bool              `json:"moreResult"`
	Warnings      []json.RawMessage `json:"warnings"`
}

type apiErrorJSON struct {
	Code    errorCode `json:"code"`
	Message string    `json:"message"`
}

// errorCode reads a Marketo error code, documented as a string, also when
// it comes as a number.
type errorCode string

func (e *errorCode) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err == nil {
		*e = errorCode(s)
		return nil
	}
	var n json.Number
	if err := json.Unmarshal(b, &n); err != nil {
		return fmt.Errorf("error code %s: %w", b, err)
	}
	*e = errorCode(n.String())
	return nil
}
