// Package marketotest is a fake Marketo (identity and REST) served over real
// HTTP. Tests use it to exercise the client, poller and gateway end to end
// without a Marketo subscription, and the demo mode uses it as a live source
// of activities. It reproduces the awkward parts of the real API: errors with
// HTTP 200 and success:false, expiring tokens, paging tokens that are always
// returned, and pages that are empty while moreResult is still true.
package marketotest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"time"

	"github.com/leadstream/leadstream/internal/egress"
)

// DefaultTokenTTL is how long an access token lives, as on Marketo.
const DefaultTokenTTL = 3600 * time.Second

// DefaultEmptyPageEvery makes every 3rd activities page empty (with
// moreResult still true) unless changed with SetEmptyPageEvery, so that every
// consumer of the fake meets this Marketo behaviour.
const DefaultEmptyPageEvery = 3

// Server is a fake Marketo subscription. All methods are safe for
// concurrent use.
type Server struct {
	ts *httptest.Server

	mu             sync.Mutex
	clients        map[string]*apiClient // client id -> credentials and current token
	tokens         map[string]issuedToken
	tokenTTL       time.Duration
	acts           []Activity
	nextActivityID int64
	nextLeadID     int64
	emptyPageEvery int
	latency        time.Duration
	faults         []*queuedFault
	hold           chan struct{} // set by HoldTokens: token requests wait until it is closed
	stats          Stats
	requestSeq     uint64
	closed         bool

	stop     chan struct{} // closed by Close: ends generators and pending delays
	closeOne sync.Once
	wg       sync.WaitGroup // generator goroutines
}

type apiClient struct {
	secret string
	token  string // current token, "" when none
}

type issuedToken struct {
	clientID  string
	expiresAt time.Time
}

// HTTPClient is the gateway's outbound Marketo client (internal/egress)
// with loopback listed as a Marketo host, as MARKETO_HOSTS=127.0.0.1 does
// for the app's tests: callers of the fake go through the same address
// policy and no-redirect rule as production, never a default client.
func HTTPClient() *http.Client {
	return egress.New(egress.Policy{MarketoHosts: []string{"127.0.0.1", "localhost"}}).Marketo()
}

// New starts a fake Marketo on a local port. Call Close to stop it.
func New() *Server {
	s := newServer()
	s.ts.Start()
	return s
}

// NewAt starts a fake Marketo listening on addr (for example
// "127.0.0.1:9090"), so people can point a gateway at a known URL.
func NewAt(addr string) (*Server, error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("marketotest: listen on %s: %w", addr, err)
	}
	s := newServer()
	s.ts.Listener.Close()
	s.ts.Listener = l
	s.ts.Start()
	return s, nil
}

func newServer() *Server {
	s := &Server{
		clients:        make(map[string]*apiClient),
		tokens:         make(map[string]issuedToken),
		tokenTTL:       DefaultTokenTTL,
		nextActivityID: 1,
		nextLeadID:     1,
		emptyPageEvery: DefaultEmptyPageEvery,
		stats:          Stats{RESTCallsByPath: map[string]int{}, ByResult: map[string]int{}},
		stop:           make(chan struct{}),
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/identity/oauth/token", s.handleToken)
	mux.HandleFunc("/rest/", s.handleREST)
	s.ts = httptest.NewUnstartedServer(mux)
	return s
}

// Close stops the generators and the HTTP server, waiting for both.
func (s *Server) Close() {
	s.closeOne.Do(func() {
		s.mu.Lock()
		s.closed = true
		s.mu.Unlock()
		close(s.stop)
		s.wg.Wait()
		s.ts.Close()
	})
}

// URL is the base URL of the fake.
func (s *Server) URL() string { return s.ts.URL }

// IdentityURL is what Marketo calls the identity endpoint.
func (s *Server) IdentityURL() string { return s.ts.URL + "/identity" }

// RESTURL is the REST endpoint base; REST paths live under /rest/v1/.
func (s *Server) RESTURL() string { return s.ts.URL }

// AddClient registers valid client credentials (a Marketo API user).
func (s *Server) AddClient(id, secret string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if c, ok := s.clients[id]; ok {
		c.secret = secret
		return
	}
	s.clients[id] = &apiClient{secret: secret}
}

// RevokeClient removes the credentials: the identity endpoint answers 401
// for them afterwards and their tokens are no longer accepted (601).
func (s *Server) RevokeClient(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.clients, id)
	for tok, it := range s.tokens {
		if it.clientID == id {
			delete(s.tokens, tok)
		}
	}
}

// SetTokenTTL sets the lifetime of tokens issued from now on.
func (s *Server) SetTokenTTL(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.tokenTTL = d
}

// SetEmptyPageEvery makes every nth activities page empty with moreResult
// true, as Marketo sometimes answers. 0 disables it.
func (s *Server) SetEmptyPageEvery(n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.emptyPageEvery = max(n, 0)
}

// SetLatency delays every REST answer by d, so that calls overlap the way
// they do against a remote Marketo.
func (s *Server) SetLatency(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.latency = d
}

type tokenAnswer struct {
	AccessToken string `json:"access_token"`
	TokenType   string `json:"token_type"`
	ExpiresIn   int    `json:"expires_in"`
	Scope       string `json:"scope"`
}

type identityError struct {
	Error            string `json:"error"`
	ErrorDescription string `json:"error_description"`
}

func (s *Server) handleToken(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	s.stats.TokenRequests++
	s.mu.Unlock()

	if r.Method != http.MethodGet && r.Method != http.MethodPost {
		writeJSON(w, http.StatusMethodNotAllowed, identityError{"method_not_allowed", "use GET or POST"})
		return
	}
	// FormValue reads the query and, for POST, a form body.
	r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
	if err := r.ParseForm(); err != nil {
		writeJSON(w, http.StatusBadRequest, identityError{"invalid_request", "unreadable form"})
		return
	}
	if !s.held(r) {
		return // the client went away, or the fake is closing
	}
	if gt := r.Form.Get("grant_type"); gt != "client_credentials" {
		writeJSON(w, http.StatusBadRequest, identityError{"unsupported_grant_type", fmt.Sprintf("Unsupported grant type: %s", gt)})
		return
	}
	id, secret := r.Form.Get("client_id"), r.Form.Get("client_secret")
	if id == "" || secret == "" {
		writeJSON(w, http.StatusBadRequest, identityError{"invalid_request", "client_id and client_secret are required"})
		return
	}

	s.mu.Lock()
	c, ok := s.clients[id]
	if !ok || c.secret != secret {
		s.mu.Unlock()
		writeJSON(w, http.StatusUnauthorized, identityError{"unauthorized", "Bad client credentials"})
		return
	}
	now := time.Now()
	it, live := s.tokens[c.token]
	if !live || !now.Before(it.expiresAt) {
		delete(s.tokens, c.token)
		c.token = newToken()
		it = issuedToken{clientID: id, expiresAt: now.Add(s.tokenTTL)}
		s.tokens[c.token] = it
	}
	ans := tokenAnswer{
		AccessToken: c.token,
		TokenType:   "bearer",
		ExpiresIn:   max(int((it.expiresAt.Sub(now)-time.Nanosecond)/time.Second), 0), // 3599 when new
		Scope:       "apiuser@leadstream.test",
	}
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, ans)
}

// HoldTokens makes identity (token) requests wait, once the fake has read
// them, until release is called or their client goes away: a Marketo that
// takes exactly as long to answer as a test needs. Stats.TokensHeld counts
// the requests waiting now, Stats.TokensAbandoned those whose client left
// (closed the connection, or gave up) while they waited.
func (s *Server) HoldTokens() (release func()) {
	ch := make(chan struct{})
	s.mu.Lock()
	s.hold = ch
	s.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			s.mu.Lock()
			if s.hold == ch {
				s.hold = nil
			}
			s.mu.Unlock()
			close(ch)
		})
	}
}

// held waits out HoldTokens for one token request whose body was read (so
// net/http notices the client leaving); false when it should not be answered.
func (s *Server) held(r *http.Request) bool {
	s.mu.Lock()
	hold := s.hold
	if hold != nil {
		s.stats.TokensHeld++
	}
	s.mu.Unlock()
	if hold == nil {
		return true
	}
	answer, abandoned := false, false
	select {
	case <-hold:
		answer = true
	case <-r.Context().Done():
		abandoned = true
	case <-s.stop:
	}
	s.mu.Lock()
	s.stats.TokensHeld--
	if abandoned {
		s.stats.TokensAbandoned++
	}
	s.mu.Unlock()
	return answer
}

// newToken makes a token shaped like Marketo's: a UUID and a pod suffix.
func newToken() string { return newUUID() + ":ab" }

func newUUID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}

// envelope is Marketo's REST answer.
type envelope struct {
	RequestID     string     `json:"requestId"`
	Result        any        `json:"result,omitempty"`
	Success       bool       `json:"success"`
	Errors        []apiError `json:"errors,omitempty"`
	Warnings      []string   `json:"warnings,omitempty"`
	NextPageToken string     `json:"nextPageToken,omitempty"`
	MoreResult    *bool      `json:"moreResult,omitempty"`
}

type apiError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// codeMessages are the messages Marketo sends with its error codes.
var codeMessages = map[string]string{
	"502":  "Bad gateway",
	"601":  "Access token invalid",
	"602":  "Access token expired",
	"603":  "Access denied",
	"604":  "Request timed out",
	"606":  "Max rate limit '100' exceeded with in '20' secs",
	"607":  "Daily quota reached",
	"608":  "API Temporarily Unavailable",
	"611":  "System error",
	"615":  "Concurrent access limit reached",
	"713":  "Transient Error",
	"1003": "Invalid request",
}

func codeMessage(code string) string {
	if m, ok := codeMessages[code]; ok {
		return m
	}
	return "Error " + code
}

func (s *Server) handleREST(w http.ResponseWriter, r *http.Request) {
	path := r.URL.Path
	s.mu.Lock()
	start := time.Now()
	s.stats.RESTCalls++
	s.stats.RESTCallsByPath[path]++
	s.stats.starts = append(s.stats.starts, start)
	s.stats.InFlight++
	s.stats.MaxInFlight = max(s.stats.MaxInFlight, s.stats.InFlight)
	s.requestSeq++
	reqID := fmt.Sprintf("%x#%x", start.UnixNano()&0xffffff, s.requestSeq)
	fault, hasFault := s.takeFault(path)
	latency := s.latency
	s.mu.Unlock()

	result := "ok"
	defer func() {
		s.mu.Lock()
		s.stats.InFlight--
		s.stats.ByResult[result]++
		s.mu.Unlock()
	}()

	if !s.sleep(r.Context(), latency) {
		result = "canceled"
		return
	}
	if hasFault {
		if !s.sleep(r.Context(), fault.Delay) {
			result = "canceled"
			return
		}
		switch {
		case fault.HTTPStatus != 0:
			result = fmt.Sprintf("http_%d", fault.HTTPStatus)
			w.Header().Set("Content-Type", "text/html")
			w.WriteHeader(fault.HTTPStatus)
			if fault.Body != "" {
				fmt.Fprint(w, fault.Body)
				return
			}
			fmt.Fprintf(w, "<html><body><h1>%d %s</h1></body></html>\n", fault.HTTPStatus, http.StatusText(fault.HTTPStatus))
			return
		case fault.Malformed:
			result = "malformed"
			w.Header().Set("Content-Type", "application/json")
			fmt.Fprintf(w, `{"requestId":%q,"success":true,"result":[{"id":1,"marke`, reqID)
			return
		case fault.Code != "":
			result = fault.Code
			msg := codeMessage(fault.Code)
			if fault.Body != "" {
				msg = fault.Body
			}
			writeJSON(w, http.StatusOK, envelope{RequestID: reqID, Errors: []apiError{{fault.Code, msg}}})
			return
		}
	}

	if code := s.checkAuth(r, start); code != "" {
		result = code
		writeJSON(w, http.StatusOK, envelope{RequestID: reqID, Errors: []apiError{{code, codeMessage(code)}}})
		return
	}
	if r.Method != http.MethodGet {
		result = "http_405"
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}

	var env envelope
	switch path {
	case "/rest/v1/activities/pagingtoken.json":
		env = s.pagingToken(r)
	case "/rest/v1/activities.json":
		env = s.activities(r)
	case "/rest/v1/activities/types.json":
		env = envelope{Success: true, Result: activityTypes}
	default:
		result = "http_404"
		http.NotFound(w, r)
		return
	}
	env.RequestID = reqID
	if !env.Success && len(env.Errors) > 0 {
		result = env.Errors[0].Code
	}
	writeJSON(w, http.StatusOK, env)
}

// checkAuth answers "" for a live bearer token, else the Marketo code.
func (s *Server) checkAuth(r *http.Request, now time.Time) string {
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || tok == "" {
		return "601"
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	it, ok := s.tokens[tok]
	if !ok {
		return "601"
	}
	if !now.Before(it.expiresAt) {
		return "602"
	}
	return ""
}

// sleep waits d, or less when the request or the server ends; it reports
// whether the full time passed.
func (s *Server) sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return true
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	case <-s.stop:
		return false
	}
}

func badRequest(msg string) envelope {
	return envelope{Errors: []apiError{{"1003", msg}}}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json;charset=UTF-8")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v) // the client going away is not our problem
}
