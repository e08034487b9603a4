package egress_test

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/leadstream/leadstream/internal/egress"
)

func TestPublic(t *testing.T) {
	for addr, want := range map[string]bool{
		"8.8.8.8": true, "2606:4700::1111": true, "93.184.216.34": true,
		"127.0.0.1": false, "127.8.9.10": false, "10.1.2.3": false, "172.16.0.1": false, "172.31.255.255": false,
		"192.168.1.1": false, "169.254.169.254": false, "100.64.0.1": false, "100.127.255.254": false,
		"0.0.0.0": false, "0.1.2.3": false, "224.0.0.1": false, "239.255.255.250": false, "255.255.255.255": false,
		"::": false, "::1": false, "fe80::1": false, "fc00::1": false, "fd12:3456::1": false, "ff02::1": false,
		"::ffff:127.0.0.1": false, "::ffff:10.0.0.1": false, "::ffff:169.254.169.254": false, "::ffff:8.8.8.8": true,
		"64:ff9b::7f00:1": false, "2002:7f00:1::": false, "198.18.0.1": false,
	} {
		if got := egress.Public(netip.MustParseAddr(addr)); got != want {
			t.Errorf("Public(%s) = %v, want %v", addr, got, want)
		}
	}
}

func TestParse(t *testing.T) {
	if _, err := egress.ParseHosts(" *.mktorest.com, 127.0.0.1 ,[::1]"); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{"", ",", "*", "a/b", "user@host"} {
		if _, err := egress.ParseHosts(bad); err == nil {
			t.Errorf("ParseHosts(%q) accepted", bad)
		}
	}
	p, err := egress.ParseAllow("127.0.0.0/8, ::1, 10.0.0.7/8")
	if err != nil || len(p) != 3 || p[2].String() != "10.0.0.0/8" {
		t.Fatalf("ParseAllow = %v, %v", p, err)
	}
	if _, err := egress.ParseAllow("10.0.0.0/33"); err == nil {
		t.Error("ParseAllow accepted /33")
	}
}

func TestCheckURLs(t *testing.T) {
	c := egress.New(egress.Policy{MarketoHosts: []string{"*.mktorest.com", "mk.example.org"}})
	for raw, ok := range map[string]bool{
		"https://123-ABC-456.mktorest.com/identity": true, "https://mk.example.org": true, "https://MK.example.org./rest": true,
		"https://mktorest.com": false, "https://evil.com/?x=.mktorest.com": false, "https://123.mktorest.com.evil.com": false,
		"ftp://a.mktorest.com": false, "https://u:p@a.mktorest.com": false, "/identity": false, "http://127.0.0.1:9090": false,
	} {
		if err := c.CheckMarketoURL(raw); (err == nil) != ok {
			t.Errorf("CheckMarketoURL(%q) = %v, want ok=%v", raw, err, ok)
		}
	}
	for raw, ok := range map[string]bool{
		"https://app.example.com/cb": true, "http://8.8.8.8/x": true,
		"http://127.0.0.1:8080/": false, "http://localhost/": false, "http://[::1]/": false, "http://169.254.169.254/latest": false,
		"http://[::ffff:10.0.0.1]/": false, "gopher://app.example.com": false, "https://u:p@app.example.com": false,
	} {
		if err := c.CheckCallbackURL(raw); (err == nil) != ok {
			t.Errorf("CheckCallbackURL(%q) = %v, want ok=%v", raw, err, ok)
		}
	}
	allowed := egress.New(egress.Policy{Allow: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}})
	if err := allowed.CheckCallbackURL("http://localhost:8080/"); err != nil {
		t.Errorf("EGRESS_ALLOW 127.0.0.0/8 refused localhost: %v", err)
	}
}

// capture counts what reached it.
func capture(t *testing.T, h http.HandlerFunc) (*httptest.Server, *atomic.Int32) {
	var n atomic.Int32
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		if h != nil {
			h(w, r)
		}
	}))
	t.Cleanup(s.Close)
	return s, &n
}

func TestCallbacksRefuseInternalAtConnect(t *testing.T) {
	srv, hits := capture(t, nil)
	c := egress.New(egress.Policy{})
	// By address and by a name that resolves to loopback: both are
	// checked on the address dialled.
	for _, u := range []string{srv.URL, strings.Replace(srv.URL, "127.0.0.1", "localhost", 1)} {
		_, err := c.Callbacks().Get(u)
		if !errors.Is(err, egress.ErrForbiddenAddress) {
			t.Errorf("GET %s: %v, want ErrForbiddenAddress", u, err)
		}
		if got := egress.Describe(err); !strings.HasPrefix(got, "refused") {
			t.Errorf("Describe = %q", got)
		}
	}
	if hits.Load() != 0 {
		t.Fatalf("%d requests reached the loopback server", hits.Load())
	}
	allowed := egress.New(egress.Policy{Allow: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}})
	resp, err := allowed.Callbacks().Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if hits.Load() != 1 {
		t.Fatalf("allowed request did not arrive (%d)", hits.Load())
	}
}

func TestRedirectsNotFollowed(t *testing.T) {
	target, hits := capture(t, nil)
	redir, _ := capture(t, func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, target.URL+"/stolen", http.StatusTemporaryRedirect)
	})
	c := egress.New(egress.Policy{MarketoHosts: []string{"127.0.0.1"}, Allow: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}})
	for name, hc := range map[string]*http.Client{"marketo": c.Marketo(), "callbacks": c.Callbacks()} {
		resp, err := hc.Post(redir.URL, "application/x-www-form-urlencoded", strings.NewReader("client_secret=s3cret"))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusTemporaryRedirect {
			t.Errorf("%s: status %d, want the 307 itself", name, resp.StatusCode)
		}
	}
	if hits.Load() != 0 {
		t.Fatalf("the redirect target got %d requests", hits.Load())
	}
}

func TestMarketoOnlyListedHosts(t *testing.T) {
	srv, hits := capture(t, nil)
	c := egress.New(egress.Policy{MarketoHosts: []string{"*.mktorest.com"}, Allow: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}})
	// EGRESS_ALLOW is for callbacks: it does not open Marketo calls.
	if _, err := c.Marketo().Get(srv.URL); !errors.Is(err, egress.ErrForbiddenHost) {
		t.Fatalf("unlisted host: %v", err)
	}
	if hits.Load() != 0 {
		t.Fatal("an unlisted host was reached")
	}
	listed := egress.New(egress.Policy{MarketoHosts: []string{"127.0.0.1"}})
	resp, err := listed.Marketo().Get(srv.URL)
	if err != nil {
		t.Fatalf("listed loopback host: %v", err)
	}
	resp.Body.Close()
}

func TestDescribe(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	addr := srv.URL
	srv.Close() // nothing listens there now
	c := egress.New(egress.Policy{Allow: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}})
	_, err := c.Callbacks().Get(addr)
	if got := egress.Describe(err); got != "connection refused" {
		t.Errorf("Describe(closed port) = %q (%v)", got, err)
	}
	_, err = c.Callbacks().Get("http://no-such-host.invalid/")
	if got := egress.Describe(err); got != "host name not found" {
		t.Errorf("Describe(unknown host) = %q (%v)", got, err)
	}
	if egress.StatusClass(503) != "HTTP 5xx" {
		t.Error(egress.StatusClass(503))
	}
}
