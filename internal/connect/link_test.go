package connect

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/leadstream/leadstream/internal/apperr"
	"github.com/leadstream/leadstream/internal/connector"
	"github.com/leadstream/leadstream/internal/marketo"
	"github.com/leadstream/leadstream/internal/secrets"
	"github.com/leadstream/leadstream/internal/store/storetest"
)

// pageClient holds one browser's cookie and form token for a link.
type pageClient struct {
	t       *testing.T
	h       http.Handler
	pageURL string
	cookie  *http.Cookie
	token   string
}

func openPage(t *testing.T, s *Service, pageURL string) *pageClient {
	t.Helper()
	get := httptest.NewRecorder()
	s.Page().ServeHTTP(get, httptest.NewRequest(http.MethodGet, pageURL, nil))
	m := regexp.MustCompile(`name="csrf" value="([^"]+)"`).FindStringSubmatch(get.Body.String())
	if m == nil {
		t.Fatalf("no form on the page: %d %s", get.Code, get.Body)
	}
	return &pageClient{t: t, h: s.Page(), pageURL: pageURL, cookie: get.Result().Cookies()[0], token: m[1]}
}

func (p *pageClient) post(action, identityURL string) *httptest.ResponseRecorder {
	form := url.Values{"csrf": {p.token}, "action": {action}, "identity_url": {identityURL},
		"rest_url": {"https://m.example.com"}, "client_id": {"id"}, "client_secret": {"secret"}}
	r := httptest.NewRequest(http.MethodPost, p.pageURL, strings.NewReader(form.Encode()))
	r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	r.AddCookie(p.cookie)
	w := httptest.NewRecorder()
	p.h.ServeHTTP(w, r)
	return w
}

const usedPage = "was used or has expired"

func newLinkService(t *testing.T, verify Verifier, maxPending int) *Service {
	box, _ := secrets.NewBox(bytes.Repeat([]byte{7}, 32))
	return New(storetest.New(t), box, connector.Default(), "http://gw.example.com", verify, testHosts, maxPending, slog.New(slog.DiscardHandler))
}

// A link issues one code; after that (and after a cancel) it shows the
// "used or expired" page, also to concurrent posts.
func TestLinkIssuesOneCode(t *testing.T) {
	var verified atomic.Int32
	s := newLinkService(t, func(context.Context, marketo.Credentials) error { verified.Add(1); return nil }, 100)
	ctx := context.Background()
	for _, first := range []string{"connect", "cancel"} {
		t.Run(first, func(t *testing.T) {
			pageURL, err := s.CreateURL(ctx, "orgA", URLRequest{ConnectorKey: "marketo", CallbackURL: "https://app.example.com/cb"})
			if err != nil {
				t.Fatal(err)
			}
			p := openPage(t, s, pageURL)
			if w := p.post(first, "https://m.example.com/identity"); w.Code != http.StatusFound {
				t.Fatalf("first %s: %d %s", first, w.Code, w.Body)
			}
			w := p.post("connect", "https://m.example.com/identity")
			if w.Code < 400 || !strings.Contains(w.Body.String(), usedPage) {
				t.Fatalf("second use: %d %s", w.Code, w.Body)
			}
			get := httptest.NewRecorder()
			s.Page().ServeHTTP(get, httptest.NewRequest(http.MethodGet, pageURL, nil))
			if !strings.Contains(get.Body.String(), usedPage) {
				t.Fatalf("reopened link: %d %s", get.Code, get.Body)
			}
		})
	}
	pageURL, _ := s.CreateURL(ctx, "orgA", URLRequest{ConnectorKey: "marketo", CallbackURL: "https://app.example.com/cb"})
	p := openPage(t, s, pageURL)
	var codes atomic.Int32
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if w := p.post("connect", "https://m.example.com/identity"); w.Code == http.StatusFound {
				codes.Add(1)
			}
		}()
	}
	wg.Wait()
	if codes.Load() != 1 {
		t.Fatalf("%d concurrent posts got a code, want 1", codes.Load())
	}
}

// A link allows MaxChecks credential checks; the next post makes no request.
func TestLinkCheckLimit(t *testing.T) {
	var verified atomic.Int32
	s := newLinkService(t, func(context.Context, marketo.Credentials) error {
		verified.Add(1)
		return marketo.ErrInvalidCredentials
	}, 100)
	pageURL, err := s.CreateURL(context.Background(), "orgA", URLRequest{ConnectorKey: "marketo", CallbackURL: "https://app.example.com/cb"})
	if err != nil {
		t.Fatal(err)
	}
	p := openPage(t, s, pageURL)
	for i := 1; i <= MaxChecks; i++ {
		if w := p.post("connect", "https://m.example.com/identity"); w.Code != http.StatusUnprocessableEntity {
			t.Fatalf("check %d: %d", i, w.Code)
		}
	}
	w := p.post("connect", "https://m.example.com/identity")
	if w.Code != http.StatusGone || !strings.Contains(w.Body.String(), usedPage) {
		t.Fatalf("check %d: %d %s", MaxChecks+1, w.Code, w.Body)
	}
	if verified.Load() != MaxChecks {
		t.Fatalf("%d credential checks made, want %d", verified.Load(), MaxChecks)
	}
}

// Credentials given to oauthUrl go only to an allowed Marketo host: an
// identity URL elsewhere is refused before any request.
func TestLinkCredentialsOnlyToMarketoHosts(t *testing.T) {
	var verified atomic.Int32
	s := newLinkService(t, func(context.Context, marketo.Credentials) error { verified.Add(1); return nil }, 100)
	pageURL, err := s.CreateURL(context.Background(), "orgA", URLRequest{ConnectorKey: "marketo", CallbackURL: "https://app.example.com/cb",
		APIKey: "given-id", APISecret: "given-secret"})
	if err != nil {
		t.Fatal(err)
	}
	p := openPage(t, s, pageURL)
	for _, u := range []string{"https://attacker.example.net/identity", "http://127.0.0.1:9/identity", "https://m.example.com.attacker.net/identity"} {
		w := p.post("connect", u)
		if w.Code != http.StatusUnprocessableEntity || !strings.Contains(w.Body.String(), "allowed") {
			t.Fatalf("%s: %d %s", u, w.Code, w.Body)
		}
	}
	if verified.Load() != 0 {
		t.Fatalf("%d credential checks made for foreign hosts", verified.Load())
	}
}

// An organization holds a bounded number of pending links.
func TestPendingLinksBounded(t *testing.T) {
	s := newLinkService(t, nil, 3)
	ctx := context.Background()
	for i := range 4 {
		_, err := s.CreateURL(ctx, "orgA", URLRequest{ConnectorKey: "marketo", CallbackURL: "https://app.example.com/cb"})
		if i < 3 && err != nil {
			t.Fatal(err)
		}
		if i == 3 {
			var ae *apperr.Error
			if !errors.As(err, &ae) || ae.Code != apperr.LimitExceeded || !strings.Contains(ae.Message, "CONNECT_LINKS_PER_ORGANIZATION") {
				t.Fatalf("fourth link: %v", err)
			}
		}
	}
	if _, err := s.CreateURL(ctx, "orgB", URLRequest{ConnectorKey: "marketo", CallbackURL: "https://app.example.com/cb"}); err != nil {
		t.Fatalf("another organization is limited too: %v", err)
	}
}
