package marketo_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/leadstream/leadstream/internal/marketo"
	"github.com/leadstream/leadstream/internal/marketo/marketotest"
)

const typesPath = "/rest/v1/activities/types.json"

func newFake(t *testing.T) *marketotest.Server {
	t.Helper()
	s := marketotest.New()
	t.Cleanup(s.Close)
	s.AddClient("id", "secret")
	return s
}

func creds(s *marketotest.Server) marketo.Credentials {
	return marketo.Credentials{ClientID: "id", ClientSecret: "secret", IdentityURL: s.IdentityURL(), RESTURL: s.RESTURL()}
}

// testOptions are fast: millisecond backoff and no rate limits unless a
// test sets them.
func testOptions() marketo.Options {
	return marketo.Options{
		Limits:      marketo.NewLimits(0, 0, 0),
		BackoffBase: time.Millisecond,
		CallTimeout: 5 * time.Second,
	}
}

func newClient(s *marketotest.Server, opts marketo.Options) *marketo.Client {
	return marketo.New(creds(s), marketotest.HTTPClient(), opts)
}

func TestTokenCached(t *testing.T) {
	s := newFake(t)
	c := newClient(s, testOptions())
	for range 5 {
		if _, err := c.ActivityTypes(t.Context()); err != nil {
			t.Fatal(err)
		}
	}
	if st := s.Stats(); st.TokenRequests != 1 || st.RESTCalls != 5 {
		t.Fatalf("token requests %d, REST calls %d; want 1 and 5", st.TokenRequests, st.RESTCalls)
	}

	// Concurrent first calls share one token request.
	c2 := newClient(s, testOptions())
	s.ResetStats()
	var wg sync.WaitGroup
	for range 20 {
		wg.Go(func() {
			if _, err := c2.ActivityTypes(t.Context()); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if st := s.Stats(); st.TokenRequests != 1 || st.RESTCalls != 20 {
		t.Fatalf("concurrent: token requests %d, REST calls %d; want 1 and 20", st.TokenRequests, st.RESTCalls)
	}
}

func TestTokenRefresh(t *testing.T) {
	tests := []struct {
		name       string
		arrange    func(s *marketotest.Server) // after one successful call
		wantErr    error
		wantCode   string // in the error, when wantErr is set
		wantREST   int    // REST calls after the first successful one
		wantTokens int    // token requests in all
		wantResult map[string]int
	}{
		{
			name:       "601 once",
			arrange:    func(s *marketotest.Server) { s.SetFault(marketotest.Fault{Code: "601", Times: 1}) },
			wantREST:   2,
			wantTokens: 2,
			wantResult: map[string]int{"601": 1, "ok": 2},
		},
		{
			name:       "602 once",
			arrange:    func(s *marketotest.Server) { s.SetFault(marketotest.Fault{Code: "602", Times: 1}) },
			wantREST:   2,
			wantTokens: 2,
			wantResult: map[string]int{"602": 1, "ok": 2},
		},
		{
			name:       "601 again after a fresh token",
			arrange:    func(s *marketotest.Server) { s.SetFault(marketotest.Fault{Code: "601", Times: 2}) },
			wantErr:    marketo.ErrTransient,
			wantCode:   "601",
			wantREST:   2,
			wantTokens: 2,
			wantResult: map[string]int{"601": 2, "ok": 1},
		},
		{
			name:       "revoked",
			arrange:    func(s *marketotest.Server) { s.RevokeClient("id") },
			wantErr:    marketo.ErrInvalidCredentials,
			wantREST:   1,
			wantTokens: 2,
			wantResult: map[string]int{"601": 1, "ok": 1},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newFake(t)
			c := newClient(s, testOptions())
			if _, err := c.ActivityTypes(t.Context()); err != nil {
				t.Fatal(err)
			}
			tt.arrange(s)
			_, err := c.ActivityTypes(t.Context())
			checkErr(t, err, tt.wantErr, tt.wantCode)
			st := s.Stats()
			if st.RESTCalls-1 != tt.wantREST || st.TokenRequests != tt.wantTokens {
				t.Fatalf("REST calls %d, token requests %d; want %d and %d", st.RESTCalls-1, st.TokenRequests, tt.wantREST, tt.wantTokens)
			}
			for k, v := range tt.wantResult {
				if st.ByResult[k] != v {
					t.Fatalf("results %v, want %v", st.ByResult, tt.wantResult)
				}
			}
		})
	}
}

func TestTokenExpiresOnServer(t *testing.T) {
	s := newFake(t)
	s.SetTokenTTL(300 * time.Millisecond) // expires_in 0: the client cannot see it coming
	c := newClient(s, testOptions())
	if _, err := c.ActivityTypes(t.Context()); err != nil {
		t.Fatal(err)
	}
	time.Sleep(350 * time.Millisecond)
	if _, err := c.ActivityTypes(t.Context()); err != nil {
		t.Fatal(err)
	}
	st := s.Stats()
	if st.ByResult["602"] != 1 || st.ByResult["ok"] != 2 || st.TokenRequests != 2 {
		t.Fatalf("stats %+v: want one 602, two ok, two token requests", st)
	}
}

func checkErr(t *testing.T, err, want error, wantCode string) {
	t.Helper()
	if want == nil {
		if err != nil {
			t.Fatalf("unexpected error: %v", err)
		}
		return
	}
	if !errors.Is(err, want) {
		t.Fatalf("error = %v, want %v", err, want)
	}
	if wantCode != "" {
		var ae *marketo.APIError
		if !errors.As(err, &ae) || ae.Code != wantCode {
			t.Fatalf("error = %v, want Marketo code %s", err, wantCode)
		}
	}
}

func TestVerifyCredentials(t *testing.T) {
	s := newFake(t)
	closed := closedURL(t)
	serverError := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "down", http.StatusServiceUnavailable)
	}))
	t.Cleanup(serverError.Close)
	notJSON := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		fmt.Fprint(w, "<html>hello</html>")
	}))
	t.Cleanup(notJSON.Close)

	tests := []struct {
		name   string
		modify func(*marketo.Credentials)
		want   error
	}{
		{"good", func(*marketo.Credentials) {}, nil},
		{"good with trailing slashes", func(c *marketo.Credentials) { c.IdentityURL += "/"; c.RESTURL += "/rest/" }, nil},
		{"wrong secret", func(c *marketo.Credentials) { c.ClientSecret = "nope" }, marketo.ErrInvalidCredentials},
		{"unknown client", func(c *marketo.Credentials) { c.ClientID = "nobody" }, marketo.ErrInvalidCredentials},
		{"empty secret", func(c *marketo.Credentials) { c.ClientSecret = "" }, marketo.ErrInvalidCredentials},
		{"not a URL", func(c *marketo.Credentials) { c.IdentityURL = "ftp://example.com/identity" }, marketo.ErrInvalidCredentials},
		{"bad REST URL", func(c *marketo.Credentials) { c.RESTURL = "example.com" }, marketo.ErrInvalidCredentials},
		{"closed port", func(c *marketo.Credentials) { c.IdentityURL = closed + "/identity" }, marketo.ErrUnreachable},
		{"not JSON", func(c *marketo.Credentials) { c.IdentityURL = notJSON.URL + "/identity" }, marketo.ErrUnreachable},
		{"server error", func(c *marketo.Credentials) { c.IdentityURL = serverError.URL + "/identity" }, marketo.ErrTransient},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cr := creds(s)
			tt.modify(&cr)
			err := marketo.VerifyCredentials(t.Context(), cr, marketotest.HTTPClient())
			checkErr(t, err, tt.want, "")
		})
	}
	if n := s.Stats().TokenRequests; n != 4 {
		t.Fatalf("token requests = %d, want 4 (good ×2, wrong secret, unknown client)", n)
	}
}

// closedURL is the URL of a port nothing listens on.
func closedURL(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return "http://" + addr
}

func TestFaults(t *testing.T) {
	tests := []struct {
		name      string
		faults    []marketotest.Fault
		opts      func(*marketo.Options)
		wantErr   error
		wantCode  string
		wantCalls int
	}{
		{name: "606 survived", faults: []marketotest.Fault{{Code: "606", Times: 2}}, wantCalls: 3},
		{name: "615 survived", faults: []marketotest.Fault{{Code: "615", Times: 2}}, wantCalls: 3},
		{name: "604 survived", faults: []marketotest.Fault{{Code: "604", Times: 2}}, wantCalls: 3},
		{name: "608 survived", faults: []marketotest.Fault{{Code: "608", Times: 1}}, wantCalls: 2},
		{name: "611 survived", faults: []marketotest.Fault{{Code: "611", Times: 1}}, wantCalls: 2},
		{name: "713 survived", faults: []marketotest.Fault{{Code: "713", Times: 1}}, wantCalls: 2},
		{name: "502 survived", faults: []marketotest.Fault{{Code: "502", Times: 1}}, wantCalls: 2},
		{name: "HTTP 503 survived", faults: []marketotest.Fault{{HTTPStatus: 503, Times: 2}}, wantCalls: 3},
		{name: "malformed JSON survived", faults: []marketotest.Fault{{Malformed: true, Times: 1}}, wantCalls: 2},
		{name: "mixed faults survived", faults: []marketotest.Fault{{Code: "606", Times: 1}, {HTTPStatus: 500, Times: 1}, {Malformed: true, Times: 1}, {Code: "604", Times: 1}}, wantCalls: 5},
		{
			name:      "slow answer times out, then recovers",
			faults:    []marketotest.Fault{{Delay: 2 * time.Second, Times: 1}},
			opts:      func(o *marketo.Options) { o.CallTimeout = 100 * time.Millisecond },
			wantCalls: 2,
		},
		{name: "607 quota", faults: []marketotest.Fault{{Code: "607"}}, wantErr: marketo.ErrQuotaExceeded, wantCode: "607", wantCalls: 1},
		{name: "1003 bad request", faults: []marketotest.Fault{{Code: "1003"}}, wantErr: marketo.ErrBadRequest, wantCode: "1003", wantCalls: 1},
		{name: "603 access denied", faults: []marketotest.Fault{{Code: "603"}}, wantErr: marketo.ErrBadRequest, wantCode: "603", wantCalls: 1},
		{name: "HTTP 404", faults: []marketotest.Fault{{HTTPStatus: 404}}, wantErr: marketo.ErrBadRequest, wantCalls: 1},
		{name: "606 persists", faults: []marketotest.Fault{{Code: "606"}}, opts: maxRetries(2), wantErr: marketo.ErrRateLimited, wantCode: "606", wantCalls: 3},
		{name: "615 persists", faults: []marketotest.Fault{{Code: "615"}}, opts: maxRetries(2), wantErr: marketo.ErrRateLimited, wantCode: "615", wantCalls: 3},
		{name: "604 persists", faults: []marketotest.Fault{{Code: "604"}}, opts: maxRetries(2), wantErr: marketo.ErrTransient, wantCode: "604", wantCalls: 3},
		{name: "HTTP 500 persists", faults: []marketotest.Fault{{HTTPStatus: 500}}, wantErr: marketo.ErrTransient, wantCalls: 5},
		{name: "malformed persists", faults: []marketotest.Fault{{Malformed: true}}, opts: maxRetries(2), wantErr: marketo.ErrUnreachable, wantCalls: 3},
		{
			name:      "slow persists",
			faults:    []marketotest.Fault{{Delay: 2 * time.Second}},
			opts:      func(o *marketo.Options) { o.CallTimeout = 50 * time.Millisecond; o.MaxRetries = 1 },
			wantErr:   marketo.ErrUnreachable,
			wantCalls: 2,
		},
		{name: "no retries", faults: []marketotest.Fault{{Code: "604", Times: 1}}, opts: maxRetries(-1), wantErr: marketo.ErrTransient, wantCode: "604", wantCalls: 1},
		{
			name:      "answer too large",
			opts:      func(o *marketo.Options) { o.MaxResponseBytes = 200 },
			wantErr:   marketo.ErrBadRequest,
			wantCalls: 1,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newFake(t)
			for _, f := range tt.faults {
				s.SetFault(f)
			}
			opts := testOptions()
			if tt.opts != nil {
				tt.opts(&opts)
			}
			c := newClient(s, opts)
			types, err := c.ActivityTypes(t.Context())
			checkErr(t, err, tt.wantErr, tt.wantCode)
			if err == nil && len(types) == 0 {
				t.Fatal("no activity types")
			}
			if got := s.Stats().RESTCalls; got != tt.wantCalls {
				t.Fatalf("REST calls = %d, want %d", got, tt.wantCalls)
			}
		})
	}
}

func maxRetries(n int) func(*marketo.Options) {
	return func(o *marketo.Options) { o.MaxRetries = n }
}

func TestQuotaResetsAtChicagoMidnight(t *testing.T) {
	s := newFake(t)
	s.SetFault(marketotest.Fault{Code: "607"})
	c := newClient(s, testOptions())
	before := time.Now()
	_, err := c.ActivityTypes(t.Context())
	var qe *marketo.QuotaError
	if !errors.As(err, &qe) || !errors.Is(err, marketo.ErrQuotaExceeded) {
		t.Fatalf("error = %v, want a *QuotaError", err)
	}
	chicago, lerr := time.LoadLocation("America/Chicago")
	if lerr != nil {
		t.Fatal(lerr)
	}
	reset := qe.ResetAt.In(chicago)
	if !reset.After(before) || reset.Sub(before) > 25*time.Hour {
		t.Fatalf("ResetAt %v is not within a day after %v", reset, before)
	}
	if reset.Hour() != 0 || reset.Minute() != 0 || reset.Second() != 0 || reset.Nanosecond() != 0 {
		t.Fatalf("ResetAt %v is not midnight in Chicago", reset)
	}
	if y, m, d := before.In(chicago).AddDate(0, 0, 1).Date(); reset.Year() != y || reset.Month() != m || reset.Day() != d {
		t.Fatalf("ResetAt %v is not the next Chicago day after %v", reset, before.In(chicago))
	}
}

func TestSuccessFalseWithHTTP200(t *testing.T) {
	// Answers as Marketo sends them; the client must read the envelope.
	tests := []struct {
		name string
		body string
		want error
		code string
	}{
		{"string code", `{"requestId":"1","success":false,"errors":[{"code":"1003","message":"Invalid"}]}`, marketo.ErrBadRequest, "1003"},
		{"numeric code", `{"requestId":"1","success":false,"errors":[{"code":1003,"message":"Invalid"}]}`, marketo.ErrBadRequest, "1003"},
		{"no success field", `{"requestId":"1","result":[]}`, marketo.ErrUnreachable, ""},
		{"success false without errors", `{"requestId":"1","success":false}`, marketo.ErrTransient, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fake := newFake(t) // identity only
			rest := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "application/json")
				fmt.Fprint(w, tt.body)
			}))
			t.Cleanup(rest.Close)
			cr := creds(fake)
			cr.RESTURL = rest.URL
			opts := testOptions()
			opts.MaxRetries = 1
			_, err := marketo.New(cr, marketotest.HTTPClient(), opts).ActivityTypes(t.Context())
			checkErr(t, err, tt.want, tt.code)
		})
	}
}

func TestObserve(t *testing.T) {
	s := newFake(t)
	s.SetFault(marketotest.Fault{Code: "606", Times: 1})
	s.SetFault(marketotest.Fault{HTTPStatus: 502, Times: 1})
	s.SetFault(marketotest.Fault{Code: "602", Times: 1})
	var mu sync.Mutex
	var got []string
	opts := testOptions()
	opts.Observe = func(path, result string) {
		mu.Lock()
		defer mu.Unlock()
		got = append(got, path+" "+result)
	}
	if _, err := newClient(s, opts).ActivityTypes(t.Context()); err != nil {
		t.Fatal(err)
	}
	want := []string{
		"/oauth/token ok",
		typesPath + " 606",
		typesPath + " http_5xx",
		typesPath + " 602",
		"/oauth/token ok",
		typesPath + " ok",
	}
	mu.Lock()
	defer mu.Unlock()
	if !slices.Equal(got, want) {
		t.Fatalf("observed %q, want %q", got, want)
	}
}

func TestContextEndsRetries(t *testing.T) {
	s := newFake(t)
	s.SetFault(marketotest.Fault{Code: "604"})
	opts := testOptions()
	opts.BackoffBase = 10 * time.Second
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	began := time.Now()
	_, err := newClient(s, opts).ActivityTypes(ctx)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("error = %v, want deadline exceeded", err)
	}
	if time.Since(began) > 2*time.Second {
		t.Fatal("backoff ignored the context")
	}
}

func TestInvalidURLsFailWithoutCalls(t *testing.T) {
	s := newFake(t)
	cr := creds(s)
	cr.RESTURL = "::not a url"
	_, err := marketo.New(cr, marketotest.HTTPClient(), testOptions()).ActivityTypes(t.Context())
	checkErr(t, err, marketo.ErrInvalidCredentials, "")
	if st := s.Stats(); st.RESTCalls != 0 || st.TokenRequests != 0 {
		t.Fatalf("stats = %+v, want no calls", st)
	}
}

// TestNoHTTPClient: without the egress client nothing is sent, and there
// is no default client to fall back on.
func TestNoHTTPClient(t *testing.T) {
	s := newFake(t)
	if _, err := marketo.New(creds(s), nil, testOptions()).ActivityTypes(t.Context()); !errors.Is(err, marketo.ErrNoHTTPClient) {
		t.Fatalf("client without HTTP client: %v, want ErrNoHTTPClient", err)
	}
	if err := marketo.VerifyCredentials(t.Context(), creds(s), nil); !errors.Is(err, marketo.ErrNoHTTPClient) {
		t.Fatalf("VerifyCredentials without HTTP client: %v, want ErrNoHTTPClient", err)
	}
	if st := s.Stats(); st.RESTCalls != 0 || st.TokenRequests != 0 {
		t.Fatalf("stats = %+v, want no calls", st)
	}
}
