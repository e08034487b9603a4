package app_test

import (
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/leadstream/leadstream/internal/app/apptest"
	"github.com/leadstream/leadstream/internal/marketo/marketotest"
)

// marker is what hostile upstreams answer; it must never come back.
const marker = "UPSTREAM-MARKER-7f3a"

// captureServer records the requests that reach it and answers with h.
func captureServer(t *testing.T, h http.HandlerFunc) (*httptest.Server, *atomic.Int32) {
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

// With production settings (MARKETO_HOSTS and EGRESS_ALLOW unset) nothing
// reaches a loopback server: Marketo URLs and callback URLs naming it are
// BAD_USER_INPUT before any request, on createInstance, updateInstance and
// the connect page, also with credentials given to oauthUrl.
func TestEgressProductionSettings(t *testing.T) {
	g := apptest.Start(t, "", map[string]string{"MARKETO_HOSTS": "", "EGRESS_ALLOW": ""})
	inner, hits := captureServer(t, nil)
	conf := map[string]any{
		"oauth.api.key": clientID, "oauth.api.secret": clientSecret,
		"marketo.identity.url": inner.URL + "/identity", "marketo.rest.url": inner.URL,
		"event.notification.callback.url": inner.URL + "/cb",
	}
	r := g.Do(t, apptest.AuthA, createMut, map[string]any{"in": map[string]any{"connector": map[string]any{"key": "marketo"}, "name": "x", "configuration": conf}})
	if r.Code() != "BAD_USER_INPUT" {
		t.Fatalf("createInstance: %s", r.Raw)
	}
	for _, key := range []string{"marketo.identity.url", "marketo.rest.url", "event.notification.callback.url"} {
		if !strings.Contains(string(r.Raw), `"key":"`+key+`"`) {
			t.Errorf("%s not named invalid: %s", key, r.Raw)
		}
	}
	for _, cb := range []string{"http://localhost:1/x", "http://169.254.169.254/latest/meta-data", "http://[::1]:80/", "http://10.0.0.1/"} {
		conf := map[string]any{"oauth.api.key": clientID, "oauth.api.secret": clientSecret,
			"marketo.identity.url": "https://1-ABC.mktorest.com/identity", "marketo.rest.url": "https://1-ABC.mktorest.com",
			"event.notification.callback.url": cb}
		r := g.Do(t, apptest.AuthA, createMut, map[string]any{"in": map[string]any{"connector": map[string]any{"key": "marketo"}, "name": "x", "configuration": conf}})
		if r.Code() != "BAD_USER_INPUT" || !strings.Contains(string(r.Raw), "event.notification.callback.url") {
			t.Errorf("callback %s: %s", cb, r.Raw)
		}
	}

	// The connect page with credentials the application gave to oauthUrl:
	// a foreign identity URL never receives them.
	var out struct {
		OauthURL struct{ OauthURL string } `json:"oauthUrl"`
	}
	g.MustDo(t, apptest.AuthA, `mutation($in: OAuthUrlInput!) { oauthUrl(input: $in) { oauthUrl } }`,
		map[string]any{"in": map[string]any{"callbackUrl": "https://app.example.com/cb", "apiKey": clientID, "apiSecret": clientSecret}}, &out)
	jar, _ := cookiejar.New(nil)
	browser := &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := browser.Get(out.OauthURL.OauthURL)
	if err != nil {
		t.Fatal(err)
	}
	html, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	csrf := regexp.MustCompile(`name="csrf" value="([^"]+)"`).FindStringSubmatch(string(html))[1]
	resp, err = browser.PostForm(out.OauthURL.OauthURL, url.Values{"csrf": {csrf}, "action": {"connect"},
		"identity_url": {inner.URL + "/identity"}, "rest_url": {inner.URL}})
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnprocessableEntity || !strings.Contains(string(body), "allowed") {
		t.Fatalf("connect page: %d %s", resp.StatusCode, body)
	}
	if hits.Load() != 0 {
		t.Fatalf("%d requests reached the loopback server", hits.Load())
	}
}

// An identity endpoint that redirects gets no second request: the secret is
// not re-posted to the redirect's target.
func TestEgressNoRedirects(t *testing.T) {
	g := apptest.Start(t, "", nil)
	target, hits := captureServer(t, nil)
	redir, _ := captureServer(t, func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, target.URL+"/steal", http.StatusTemporaryRedirect)
	})
	conf := map[string]any{"oauth.api.key": clientID, "oauth.api.secret": clientSecret,
		"marketo.identity.url": redir.URL + "/identity", "marketo.rest.url": redir.URL}
	r := g.Do(t, apptest.AuthA, createMut, map[string]any{"in": map[string]any{"connector": map[string]any{"key": "marketo"}, "name": "x", "configuration": conf}})
	if r.Code() != "UPSTREAM_ERROR" {
		t.Fatalf("createInstance: %s", r.Raw)
	}
	if hits.Load() != 0 {
		t.Fatalf("the redirect was followed (%d requests)", hits.Load())
	}
}

// What an upstream answered never reaches a caller: not in UPSTREAM_ERROR
// messages, not in poller.lastError, not in invalidReason, not in the log.
func TestUpstreamAnswersNeverShown(t *testing.T) {
	g := apptest.Start(t, "", nil)
	for _, status := range []int{500, 401, 404, 200} {
		idp, _ := captureServer(t, func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(status)
			io.WriteString(w, `{"error":"`+marker+`","error_description":"`+marker+`"} `+marker)
		})
		conf := map[string]any{"oauth.api.key": clientID, "oauth.api.secret": clientSecret,
			"marketo.identity.url": idp.URL + "/identity", "marketo.rest.url": idp.URL}
		r := g.Do(t, apptest.AuthA, createMut, map[string]any{"in": map[string]any{"connector": map[string]any{"key": "marketo"}, "name": "x", "configuration": conf}})
		if r.Code() != "UPSTREAM_ERROR" || strings.Contains(string(r.Raw), marker) {
			t.Fatalf("identity answering %d: %s", status, r.Raw)
		}
	}

	fm := marketotest.New()
	t.Cleanup(fm.Close)
	fm.AddClient(clientID, clientSecret)
	conf := fullConfig(fm)
	conf["event.notification.enabled"] = "true"
	conf["event.poller.refresh_interval"] = "100ms"
	var created struct{ CreateInstance instanceAnswer }
	fm.SetFault(marketotest.Fault{HTTPStatus: 500, Body: marker})
	g.MustDo(t, apptest.AuthA, createMut, map[string]any{"in": map[string]any{"connector": map[string]any{"key": "marketo"}, "name": "m", "configuration": conf}}, &created)
	id := created.CreateInstance.ID
	lastError := func(want string) string {
		t.Helper()
		deadline := time.Now().Add(15 * time.Second)
		for {
			r := g.Do(t, apptest.AuthA, `query($id: ID!) { instance(id: $id) { valid invalidReason poller { lastError } } }`, map[string]any{"id": id})
			if strings.Contains(string(r.Raw), marker) {
				t.Fatalf("the upstream's answer came back: %s", r.Raw)
			}
			if strings.Contains(string(r.Raw), want) {
				return string(r.Raw)
			}
			if time.Now().After(deadline) {
				t.Fatalf("never saw %q: %s", want, r.Raw)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	lastError("HTTP 5xx")
	fm.ClearFaults()
	fm.SetFault(marketotest.Fault{Code: "1003", Body: marker})
	lastError("Marketo error 1003 (invalid data)")
	fm.ClearFaults()
	fm.RevokeClient(clientID)
	lastError(`"valid":false`)
	if strings.Contains(g.Logs.String(), marker) {
		t.Fatal("the upstream's answer is in the log")
	}
}
