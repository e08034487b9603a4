package playground

import (
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
)

// Every route the handler serves carries the page's security headers; the
// page and each asset it names are embedded; other paths are 404.
func TestHandler(t *testing.T) {
	srv := httptest.NewServer(Handler())
	defer srv.Close()
	get := func(path string) (*http.Response, string) {
		t.Helper()
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, string(b)
	}
	resp, page := get("/")
	if resp.StatusCode != 200 || !strings.Contains(page, `id="graphiql"`) {
		t.Fatalf("GET / = %d %q", resp.StatusCode, page)
	}
	assets := regexp.MustCompile(`(?:src|href)="\./(playground/[^"]+)"`).FindAllStringSubmatch(page, -1)
	if len(assets) < 2 {
		t.Fatalf("the page names %d assets: %s", len(assets), page)
	}
	paths := []string{"/"}
	for _, a := range assets {
		paths = append(paths, "/"+a[1])
	}
	for _, p := range paths {
		resp, body := get(p)
		if resp.StatusCode != 200 || body == "" {
			t.Errorf("GET %s = %d (%d bytes)", p, resp.StatusCode, len(body))
		}
		if got := resp.Header.Get("X-Frame-Options"); got != "DENY" {
			t.Errorf("GET %s: X-Frame-Options %q", p, got)
		}
		if got := resp.Header.Get("Content-Security-Policy"); got != Policy {
			t.Errorf("GET %s: Content-Security-Policy %q", p, got)
		}
	}
	for _, p := range []string{"/playground/nope.js", "/index.html.bak", "/other"} {
		if resp, _ := get(p); resp.StatusCode != http.StatusNotFound {
			t.Errorf("GET %s = %d, want 404", p, resp.StatusCode)
		}
	}
	// The policy is strict where it matters: no inline or evaluated
	// script, nothing from another origin, no framing.
	for _, want := range []string{"default-src 'none'", "script-src 'self';", "connect-src 'self';", "frame-ancestors 'none'"} {
		if !strings.Contains(Policy+";", want) {
			t.Errorf("policy lacks %q", want)
		}
	}
	if strings.Contains(Policy, "unsafe-eval") || regexp.MustCompile(`script-src[^;]*unsafe-inline`).MatchString(Policy) {
		t.Errorf("policy allows inline or evaluated script: %s", Policy)
	}
}
