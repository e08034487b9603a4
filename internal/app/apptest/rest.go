package apptest

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"regexp"
	"testing"
)

// REST sends a request to path with an Authorization value ("" sends
// none) and a body (nil, []byte as is, or a value sent as JSON), and
// returns the status and the raw answer.
func (g *Gateway) REST(t testing.TB, authz, method, path string, body any) (int, []byte) {
	t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case []byte:
		rd = bytes.NewReader(b)
	default:
		raw, err := json.Marshal(b)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(raw)
	}
	req, err := http.NewRequest(method, g.URL+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if authz != "" {
		req.Header.Set("Authorization", authz)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, raw
}

// Authorize drives the hosted connect page at page like a browser: it
// loads the form and submits fields (plus its CSRF token), and returns
// the answer without following a redirect.
func Authorize(t testing.TB, page string, fields url.Values) *http.Response {
	t.Helper()
	jar, _ := cookiejar.New(nil)
	browser := &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := browser.Get(page)
	if err != nil {
		t.Fatal(err)
	}
	html, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	csrf := regexp.MustCompile(`name="csrf" value="([^"]+)"`).FindSubmatch(html)
	if resp.StatusCode != http.StatusOK || csrf == nil {
		t.Fatalf("connect page %d: %s", resp.StatusCode, html)
	}
	form := url.Values{"csrf": {string(csrf[1])}}
	for k, v := range fields {
		form[k] = v
	}
	resp, err = browser.PostForm(page, form)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp
}
