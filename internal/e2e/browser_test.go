package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/leadstream/leadstream/internal/app/apptest"
	"github.com/leadstream/leadstream/internal/marketo/marketotest"
)

// shotDir keeps the browser tests' screenshots (gitignored): the live
// event in GraphiQL always, and each failing page.
const shotDir = "screenshots"

const browserDeadline = 90 * time.Second

// requireBrowser fails (never skips) when Chromium or playwright-core is
// missing, saying how to install them.
func requireBrowser(t *testing.T) {
	t.Helper()
	requireClients(t)
	chromium := os.Getenv("CHROMIUM")
	if chromium == "" {
		chromium = "/usr/bin/chromium"
	}
	if _, err := os.Stat(chromium); err != nil {
		t.Fatalf("Chromium is missing (%v): the browser tests need Debian's chromium package; run `make browser-deps` (apt-get install chromium)", err)
	}
	if _, err := os.Stat(filepath.Join(clientsDir, "node_modules", "playwright-core", "package.json")); err != nil {
		t.Fatal("playwright-core is not installed in internal/e2e/clients/node_modules: run `make clients`")
	}
}

func startBrowser(t *testing.T, script string, args ...string) *nodeProc {
	t.Helper()
	abs, err := filepath.Abs(shotDir)
	if err != nil {
		t.Fatal(err)
	}
	p := startNodeFor(t, browserDeadline, script, append(args, abs)...)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("screenshots of failing pages, if any, are in %s", abs)
		}
	})
	return p
}

// GraphiQL on a running gateway, in a real browser: nothing fails before
// credentials are given, Docs and autocomplete load once they are, a
// query runs and a subscription shows a webhook posted meanwhile.
func TestBrowserGraphiQL(t *testing.T) {
	t.Parallel()
	requireBrowser(t)
	g, in := startWithInstance(t)
	// Short and without hyphens: the result pane wraps long lines at them.
	marker := fmt.Sprintf("mark%d", time.Now().UnixNano()%1e9)
	p := startBrowser(t, "graphiql.mjs", g.URL, apptest.AuthA, in.ID, marker)

	if l := p.next(t, browserDeadline, "SUBSCRIBED"); l != "SUBSCRIBED" {
		t.Fatalf("got %q, want SUBSCRIBED", l)
	}
	waitSubscribed(t, g, 1)
	status, body := apptest.Post(t, in.WebhookURL, "application/json", []byte(`{"marker":"`+marker+`"}`), nil)
	if status != http.StatusAccepted {
		t.Fatalf("webhook: %d %v", status, body)
	}
	if l := p.next(t, 30*time.Second, "EVENT"); l != "EVENT" {
		t.Fatalf("got %q, want EVENT", l)
	}
	l := p.next(t, 10*time.Second, "SHOT")
	var shot string
	if !strings.HasPrefix(l, "SHOT ") || json.Unmarshal([]byte(l[5:]), &shot) != nil {
		t.Fatalf("got %q, want SHOT <path>", l)
	}
	if code := p.wait(t); code != 0 {
		t.Fatalf("graphiql.mjs exited %d; stderr:\n%s", code, p.stderr.String())
	}
	if fi, err := os.Stat(shot); err != nil || fi.Size() == 0 {
		t.Fatalf("no screenshot at %s: %v", shot, err)
	}
	t.Logf("GraphiQL showing the live event: %s", shot)
}

// The hosted connect page in a real browser: a wrong secret is refused on
// the page, the right one redirects to the application with a code that
// createInstance redeems.
func TestBrowserConnectPage(t *testing.T) {
	t.Parallel()
	requireBrowser(t)
	fm := marketotest.New()
	t.Cleanup(fm.Close)
	fm.AddClient(marketoID, marketoKey)
	g := apptest.Start(t, "", nil)
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		fmt.Fprint(w, "<!doctype html><title>app</title><h1>Connected</h1>")
	}))
	t.Cleanup(app.Close)
	callback := app.URL + "/marketo/callback"

	var out struct{ OauthURL struct{ OauthURL string } }
	g.MustDo(t, apptest.AuthA, `mutation($cb: String!) { oauthUrl(input: {connectorKey: "marketo", callbackUrl: $cb, state: "xyz"}) { oauthUrl } }`,
		map[string]any{"cb": callback}, &out)
	link := out.OauthURL.OauthURL
	if !strings.HasPrefix(link, g.URL+"/oauth/marketo/authorize?request=") {
		t.Fatalf("oauthUrl answered %q", link)
	}

	p := startBrowser(t, "connect-page.mjs", link, fm.IdentityURL(), fm.RESTURL(), marketoID, marketoKey, callback)
	l := p.next(t, browserDeadline, "REDIRECT")
	var landed string
	if !strings.HasPrefix(l, "REDIRECT ") || json.Unmarshal([]byte(l[9:]), &landed) != nil {
		t.Fatalf("got %q, want REDIRECT <url>", l)
	}
	if code := p.wait(t); code != 0 {
		t.Fatalf("connect-page.mjs exited %d; stderr:\n%s", code, p.stderr.String())
	}
	u, err := url.Parse(landed)
	if err != nil {
		t.Fatal(err)
	}
	q := u.Query()
	if u.Path != "/marketo/callback" || q.Get("state") != "xyz" || q.Get("code") == "" {
		t.Fatalf("redirected to %s, want the callback with state=xyz and a code", landed)
	}
	var created struct{ CreateInstance struct{ ID string } }
	g.MustDo(t, apptest.AuthA, `mutation($in: CreateInstanceInput!) { createInstance(input: $in) { id } }`,
		map[string]any{"in": map[string]any{
			"connector": map[string]any{"key": "marketo"}, "name": "from the connect page",
			"providerData": map[string]any{"code": q.Get("code")}, "configuration": map[string]any{},
		}}, &created)
	if created.CreateInstance.ID == "" {
		t.Fatal("createInstance with the page's code made no instance")
	}
}
