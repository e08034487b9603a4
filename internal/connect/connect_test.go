package connect

import (
	"bytes"
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/leadstream/leadstream/internal/connector"
	"github.com/leadstream/leadstream/internal/egress"
	"github.com/leadstream/leadstream/internal/marketo"
	"github.com/leadstream/leadstream/internal/secrets"
	"github.com/leadstream/leadstream/internal/store"
	"github.com/leadstream/leadstream/internal/store/storetest"
)

// testHosts stands in for MARKETO_HOSTS.
var testHosts = egress.New(egress.Policy{MarketoHosts: []string{"m.example.com"}})

// Codes expire, belong to one organization, and are used once.
func TestCodeExpiryOwnershipAndSingleUse(t *testing.T) {
	st := storetest.New(t)
	box, _ := secrets.NewBox(bytes.Repeat([]byte{7}, 32))
	ok := func(context.Context, marketo.Credentials) error { return nil }
	s := New(st, box, connector.Default(), "http://gw", ok, testHosts, 100, slog.New(slog.DiscardHandler))
	now := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	s.now = func() time.Time { return now }
	ctx := context.Background()
	req := store.OAuthRequest{ID: "r1", OrgID: "orgA", ConnectorKey: "marketo"}
	issue := func() string {
		code, err := s.issueCode(ctx, req, []store.ConfigEntry{{Key: "oauth.api.key", Value: "k"}})
		if err != nil {
			t.Fatal(err)
		}
		return code
	}
	tests := []struct {
		name    string
		org     string
		advance time.Duration
		redeem  int // redemptions before the checked one
		wantErr bool
	}{
		{name: "fresh", org: "orgA"},
		{name: "another organization", org: "orgB", wantErr: true},
		{name: "just before expiry", org: "orgA", advance: CodeTTL - time.Second},
		{name: "expired", org: "orgA", advance: CodeTTL + time.Second, wantErr: true},
		{name: "used", org: "orgA", redeem: 1, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			now = time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
			code := issue()
			for range tt.redeem {
				if err := s.Redeem(ctx, code); err != nil {
					t.Fatal(err)
				}
			}
			now = now.Add(tt.advance)
			_, err := s.Code(ctx, tt.org, code)
			if err == nil && tt.redeem > 0 {
				err = s.Redeem(ctx, code)
			}
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tt.wantErr)
			}
			if tt.wantErr && err != ErrBadCode {
				t.Fatalf("err = %v, want ErrBadCode", err)
			}
		})
	}
	// Expired codes and requests are cleaned up.
	now = time.Date(2026, 11, 26, 13, 0, 0, 0, time.UTC)
	if err := st.DeleteExpiredOAuth(ctx, now); err != nil {
		t.Fatal(err)
	}
	if _, err := st.OAuthCode(ctx, "orgA", secrets.Hash("x"), time.Time{}); err != store.ErrNotFound {
		t.Fatalf("after clean-up: %v", err)
	}
}

func TestCreateURLValidates(t *testing.T) {
	st := storetest.New(t)
	box, _ := secrets.NewBox(bytes.Repeat([]byte{7}, 32))
	s := New(st, box, connector.Default(), "https://gw.example.com", nil, testHosts, 100, slog.New(slog.DiscardHandler))
	ctx := context.Background()
	for _, tt := range []struct {
		key, cb string
		ok      bool
	}{
		{"marketo", "https://app.example.com/cb", true},
		{"salesforce", "https://app.example.com/cb", false},
		{"marketo", "/relative", false},
		{"marketo", "javascript:alert(1)", false},
	} {
		u, err := s.CreateURL(ctx, "orgA", URLRequest{ConnectorKey: tt.key, CallbackURL: tt.cb, APISecret: "s3cr3t"})
		if (err == nil) != tt.ok {
			t.Fatalf("%s %s: %v", tt.key, tt.cb, err)
		}
		if tt.ok && (!bytes.HasPrefix([]byte(u), []byte("https://gw.example.com/oauth/marketo/authorize?request=")) || bytes.Contains([]byte(u), []byte("s3cr3t"))) {
			t.Fatalf("url %q", u)
		}
	}
}

// A post the page did not serve is refused: no token, a token without its
// cookie, another request's token, or another site's Origin.
func TestPageRefusesForgedPosts(t *testing.T) {
	st := storetest.New(t)
	box, _ := secrets.NewBox(bytes.Repeat([]byte{7}, 32))
	verified := 0
	verify := func(context.Context, marketo.Credentials) error { verified++; return nil }
	s := New(st, box, connector.Default(), "http://gw.example.com", verify, testHosts, 100, slog.New(slog.DiscardHandler))
	ctx := context.Background()
	pageURL, err := s.CreateURL(ctx, "orgA", URLRequest{ConnectorKey: "marketo", CallbackURL: "https://app.example.com/cb"})
	if err != nil {
		t.Fatal(err)
	}
	h := s.Page()
	get := httptest.NewRecorder()
	h.ServeHTTP(get, httptest.NewRequest(http.MethodGet, pageURL, nil))
	cookie := get.Result().Cookies()[0]
	token := regexp.MustCompile(`name="csrf" value="([^"]+)"`).FindStringSubmatch(get.Body.String())[1]
	form := func(tok string) url.Values {
		return url.Values{"csrf": {tok}, "action": {"connect"}, "identity_url": {"https://m.example.com/identity"},
			"rest_url": {"https://m.example.com"}, "client_id": {"id"}, "client_secret": {"secret"}}
	}
	tests := []struct {
		name   string
		token  string
		cookie bool
		origin string
		want   int
	}{
		{"no token", "", true, "", http.StatusForbidden},
		{"token without cookie", token, false, "", http.StatusForbidden},
		{"forged token", box.MAC("connect:other:" + cookie.Value), true, "", http.StatusForbidden},
		{"other site", token, true, "https://evil.example.net", http.StatusForbidden},
		{"the page's own post", token, true, "http://gw.example.com", http.StatusFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := httptest.NewRequest(http.MethodPost, pageURL, strings.NewReader(form(tt.token).Encode()))
			r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			if tt.cookie {
				r.AddCookie(cookie)
			}
			if tt.origin != "" {
				r.Header.Set("Origin", tt.origin)
			}
			w := httptest.NewRecorder()
			h.ServeHTTP(w, r)
			if w.Code != tt.want {
				t.Fatalf("status %d, want %d: %s", w.Code, tt.want, w.Body)
			}
		})
	}
	if verified != 1 {
		t.Fatalf("credentials checked %d times, want only for the genuine post", verified)
	}
}

// Credentials given to oauthUrl are not asked again: the page asks only for
// the URLs and checks the given key and secret.
func TestPageUsesCredentialsFromOAuthURL(t *testing.T) {
	st := storetest.New(t)
	box, _ := secrets.NewBox(bytes.Repeat([]byte{7}, 32))
	var checked marketo.Credentials
	verify := func(_ context.Context, c marketo.Credentials) error { checked = c; return nil }
	s := New(st, box, connector.Default(), "http://gw.example.com", verify, testHosts, 100, slog.New(slog.DiscardHandler))
	ctx := context.Background()
	pageURL, err := s.CreateURL(ctx, "orgA", URLRequest{ConnectorKey: "marketo", CallbackURL: "https://app.example.com/cb",
		APIKey: "given-id", APISecret: "given-secret"})
	if err != nil {
		t.Fatal(err)
	}
	h := s.Page()
	get := httptest.NewRecorder()
	h.ServeHTTP(get, httptest.NewRequest(http.MethodGet, pageURL, nil))
	if body := get.Body.String(); strings.Contains(body, `name="client_id"`) || strings.Contains(body, `name="client_secret"`) || strings.Contains(body, "given-secret") {
		t.Fatal("the page asks for, or shows, credentials it was given")
	}
	token := regexp.MustCompile(`name="csrf" value="([^"]+)"`).FindStringSubmatch(get.Body.String())[1]
	form := url.Values{"csrf": {token}, "action": {"connect"}, "identity_url": {"https://m.example.com/identity"}, "rest_url": {"https://m.example.com"}}
	r := httptest.NewRequest(http.MethodPost, pageURL, strings.NewReader(form.Encode()))
	r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	r.AddCookie(get.Result().Cookies()[0])
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	if w.Code != http.StatusFound {
		t.Fatalf("status %d: %s", w.Code, w.Body)
	}
	if checked.ClientID != "given-id" || checked.ClientSecret != "given-secret" || checked.IdentityURL != "https://m.example.com/identity" {
		t.Fatalf("checked %+v", checked)
	}
	loc, _ := url.Parse(w.Header().Get("Location"))
	c, err := s.Code(ctx, "orgA", loc.Query().Get("code"))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range c.Config {
		if e.Key == "oauth.api.secret" && (!e.Sealed || e.Value == "given-secret") {
			t.Fatal("the code stores the secret in clear")
		}
	}
}
