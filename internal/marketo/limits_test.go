package marketo_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/leadstream/leadstream/internal/marketo"
	"github.com/leadstream/leadstream/internal/marketo/marketotest"
)

// TestLimitsSharedByClients hammers one fake subscription with 20 clients
// (20 API users) sharing one Limits: the fake must never see more than
// maxCalls calls start in any window, nor more than maxConcurrent at once.
// The fake counts a call when it arrives, as Marketo does, however late
// that is after the client started it: the limiter must hold under load.
func TestLimitsSharedByClients(t *testing.T) {
	const (
		clients       = 20
		callsEach     = 7
		maxCalls      = 50
		window        = time.Second
		maxConcurrent = 5
	)
	s := marketotest.New()
	t.Cleanup(s.Close)
	s.SetLatency(10 * time.Millisecond)
	limits := marketo.NewLimits(maxCalls, window, maxConcurrent)

	cs := make([]*marketo.Client, clients)
	for i := range cs {
		id, secret := fmt.Sprintf("client-%d", i), fmt.Sprintf("secret-%d", i)
		s.AddClient(id, secret)
		cs[i] = marketo.New(
			marketo.Credentials{ClientID: id, ClientSecret: secret, IdentityURL: s.IdentityURL(), RESTURL: s.RESTURL()},
			marketotest.HTTPClient(), marketo.Options{Limits: limits, BackoffBase: time.Millisecond},
		)
	}

	began := time.Now()
	var wg sync.WaitGroup
	for _, c := range cs {
		wg.Go(func() {
			for range callsEach {
				if _, err := c.ActivityTypes(t.Context()); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(began)

	st := s.Stats()
	if st.RESTCalls != clients*callsEach || st.ByResult["ok"] != clients*callsEach {
		t.Fatalf("REST calls %d (%v), want %d all ok", st.RESTCalls, st.ByResult, clients*callsEach)
	}
	if st.TokenRequests != clients {
		t.Fatalf("token requests = %d, want %d", st.TokenRequests, clients)
	}
	inWindow := st.MaxInWindow(window)
	t.Logf("%d calls in %v; most in a %v window %d, most in flight %d", st.RESTCalls, elapsed.Round(time.Millisecond), window, inWindow, st.MaxInFlight)
	if inWindow > maxCalls {
		t.Errorf("%d calls in one %v window, limit %d", inWindow, window, maxCalls)
	}
	if st.MaxInFlight > maxConcurrent {
		t.Errorf("%d calls in flight, limit %d", st.MaxInFlight, maxConcurrent)
	}
	// The limits were actually reached, so the test proves something.
	if inWindow < maxCalls*8/10 || st.MaxInFlight < maxConcurrent-1 {
		t.Errorf("load too light: %d in a window, %d in flight", inWindow, st.MaxInFlight)
	}
	if minimum := 2 * window; elapsed < minimum {
		t.Errorf("%d calls took %v, the window limit allows no less than %v", st.RESTCalls, elapsed, minimum)
	}
}

// TestLimitsHoldWhenCallsArriveLate: the first calls reach Marketo late
// (a proxy holds them), the next ones at once. Marketo's window counts
// arrivals, so a call's slot is only free a window after its answer.
func TestLimitsHoldWhenCallsArriveLate(t *testing.T) {
	const (
		maxCalls = 10
		window   = 500 * time.Millisecond
		late     = 300 * time.Millisecond
	)
	s := newFake(t)
	target, _ := url.Parse(s.RESTURL())
	proxy := httputil.NewSingleHostReverseProxy(target)
	var seen atomic.Int64
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if seen.Add(1) <= maxCalls {
			time.Sleep(late) // the network holding a request, not a wait for a condition
		}
		proxy.ServeHTTP(w, r)
	}))
	t.Cleanup(slow.Close)
	cr := creds(s)
	cr.RESTURL = slow.URL
	c := marketo.New(cr, marketotest.HTTPClient(), marketo.Options{Limits: marketo.NewLimits(maxCalls, window, 0), BackoffBase: time.Millisecond})
	if _, err := c.ActivityTypes(t.Context()); err != nil { // the token, outside the count
		t.Fatal(err)
	}
	s.ResetStats()
	seen.Store(0)
	var wg sync.WaitGroup
	for range 2*maxCalls - 1 {
		wg.Go(func() {
			if _, err := c.ActivityTypes(t.Context()); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if got := s.Stats().MaxInWindow(window); got > maxCalls {
		t.Fatalf("Marketo saw %d calls in one %v window, limit %d", got, window, maxCalls)
	}
}

func TestLimitsPerHost(t *testing.T) {
	a, b := marketotest.New(), marketotest.New()
	t.Cleanup(a.Close)
	t.Cleanup(b.Close)
	a.AddClient("id", "secret")
	b.AddClient("id", "secret")
	a.AddClient("other", "secret")

	tests := []struct {
		name      string
		server    *marketotest.Server
		clientID  string
		restURL   func(string) string
		wantBlock bool
	}{
		{"same host, other API user", a, "other", func(u string) string { return u }, true},
		{"same host, other spelling", a, "id", func(u string) string { return "HTTP://" + u[len("http://"):] + "/rest/" }, true},
		{"other host", b, "id", func(u string) string { return u }, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			limits := marketo.NewLimits(1, time.Minute, 1)
			first := marketo.New(creds(a), marketotest.HTTPClient(), marketo.Options{Limits: limits})
			if _, err := first.ActivityTypes(t.Context()); err != nil {
				t.Fatal(err)
			}
			cr := creds(tt.server)
			cr.ClientID = tt.clientID
			cr.RESTURL = tt.restURL(tt.server.RESTURL())
			second := marketo.New(cr, marketotest.HTTPClient(), marketo.Options{Limits: limits})
			ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
			defer cancel()
			_, err := second.ActivityTypes(ctx)
			if blocked := errors.Is(err, context.DeadlineExceeded); blocked != tt.wantBlock {
				t.Fatalf("error = %v, want blocked %v", err, tt.wantBlock)
			}
			if !tt.wantBlock && err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestRateLimitPausesSubscription: after a 606 every client of that
// subscription waits, not only the one that got it.
func TestRateLimitPausesSubscription(t *testing.T) {
	s := newFake(t)
	s.AddClient("other", "secret")
	s.SetFault(marketotest.Fault{Code: "606", Times: 1})
	limits := marketo.NewLimits(0, 0, 0)
	const base = 10 * time.Millisecond // pause about 20 × base
	first := marketo.New(creds(s), marketotest.HTTPClient(), marketo.Options{Limits: limits, BackoffBase: base, MaxRetries: -1})
	if _, err := first.ActivityTypes(t.Context()); !errors.Is(err, marketo.ErrRateLimited) {
		t.Fatalf("error = %v, want ErrRateLimited", err)
	}
	hit := time.Now()
	cr := creds(s)
	cr.ClientID = "other"
	if _, err := marketo.New(cr, marketotest.HTTPClient(), marketo.Options{Limits: limits, BackoffBase: base}).ActivityTypes(t.Context()); err != nil {
		t.Fatal(err)
	}
	if waited := time.Since(hit); waited < 15*base {
		t.Fatalf("other client waited %v after a 606, want about %v", waited, 20*base)
	}
}
