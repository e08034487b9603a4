package connect

import (
	"context"
	"errors"
	"html/template"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/leadstream/leadstream/internal/egress"
	"github.com/leadstream/leadstream/internal/instance"
	"github.com/leadstream/leadstream/internal/marketo"
	"github.com/leadstream/leadstream/internal/secrets"
	"github.com/leadstream/leadstream/internal/store"
)

const csrfCookie = "leadstream_csrf"

// pageData fills the connect page.
type pageData struct {
	RequestID   string
	CSRF        string
	Error       string
	IdentityURL string
	RESTURL     string
	ClientID    string
	AskID       bool
	AskSecret   bool
	Expired     bool
}

var page = template.Must(template.New("connect").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1">
<title>Connect Marketo · Leadstream</title>
<style>
body{font:16px/1.5 system-ui,sans-serif;background:#f4f5f7;color:#1d2330;margin:0}
main{max-width:34rem;margin:3rem auto;background:#fff;padding:2rem;border-radius:8px;box-shadow:0 1px 4px #0002}
h1{font-size:1.4rem;margin-top:0}label{display:block;margin:1rem 0 .25rem;font-weight:600}
input{width:100%;box-sizing:border-box;padding:.5rem;border:1px solid #b8bfcc;border-radius:4px;font:inherit}
small{color:#5b6577}.err{background:#fde8e8;border:1px solid #f5b5b5;padding:.75rem;border-radius:4px}
.row{display:flex;gap:1rem;margin-top:1.5rem}button{padding:.6rem 1.2rem;font:inherit;border-radius:4px;border:1px solid #2b59c3;cursor:pointer}
.primary{background:#2b59c3;color:#fff}.secondary{background:#fff;color:#2b59c3}
</style></head><body><main>
{{if .Expired}}
<h1>This connect link was used or has expired</h1>
<p>Connect links work for 10 minutes, once, and for a few tries of the credentials. Start again from the application that sent you here.</p>
{{else}}
<h1>Connect your Marketo instance</h1>
<p><small>Find these values in Marketo under Admin → Integration → Web Services (REST API) and Admin → LaunchPoint (API user).
Leadstream checks them with Marketo before it goes on.</small></p>
{{if .Error}}<p class="err" role="alert">{{.Error}}</p>{{end}}
<form method="post" action="?request={{.RequestID}}">
<input type="hidden" name="csrf" value="{{.CSRF}}">
<label for="identity">Identity URL</label>
<input id="identity" name="identity_url" type="url" required placeholder="https://123-ABC-456.mktorest.com/identity" value="{{.IdentityURL}}">
<label for="rest">REST API URL</label>
<input id="rest" name="rest_url" type="url" required placeholder="https://123-ABC-456.mktorest.com/rest" value="{{.RESTURL}}">
{{if .AskID}}<label for="cid">Client ID</label>
<input id="cid" name="client_id" required autocomplete="off" value="{{.ClientID}}">{{end}}
{{if .AskSecret}}<label for="csec">Client secret</label>
<input id="csec" name="client_secret" type="password" required autocomplete="off">{{end}}
<div class="row">
<button class="primary" type="submit" name="action" value="connect">Connect</button>
<button class="secondary" type="submit" name="action" value="cancel" formnovalidate>Cancel</button>
</div>
</form>
{{end}}
</main></body></html>`))

// Page serves the hosted connect page at /oauth/marketo/authorize.
//
// Forged posts are refused three ways: a double-submit token (cookie plus
// form field, bound to the request id by a MAC under the server's key), a
// SameSite=Strict cookie that other sites cannot make the browser send, and
// an Origin check when the browser sends one.
func (s *Service) Page() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-store")
		w.Header().Set("X-Frame-Options", "DENY")
		w.Header().Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; form-action 'self' *; frame-ancestors 'none'")
		reqID := r.URL.Query().Get("request")
		req, err := s.store.OAuthRequest(r.Context(), reqID, s.now().UTC())
		if errors.Is(err, store.ErrNotFound) || reqID == "" {
			s.render(w, http.StatusNotFound, pageData{Expired: true})
			return
		}
		if err != nil {
			s.log.Error("connect page: load request", "err", err)
			http.Error(w, "internal error", http.StatusInternalServerError)
			return
		}
		data := s.formData(req)
		switch r.Method {
		case http.MethodGet, http.MethodHead:
			nonce := secrets.Token("", 18)
			http.SetCookie(w, &http.Cookie{Name: csrfCookie, Value: nonce, Path: "/oauth/", HttpOnly: true,
				SameSite: http.SameSiteStrictMode, Secure: strings.HasPrefix(s.publicURL, "https://"), MaxAge: int(RequestTTL / time.Second)})
			data.CSRF = s.box.MAC("connect:" + req.ID + ":" + nonce)
			s.render(w, http.StatusOK, data)
		case http.MethodPost:
			s.post(w, r, req, data)
		default:
			w.Header().Set("Allow", "GET, POST")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		}
	})
}

func (s *Service) formData(req store.OAuthRequest) pageData {
	d := pageData{RequestID: req.ID, AskID: true, AskSecret: true}
	for _, e := range req.Known {
		switch e.Key {
		case instance.KeyAPIKey:
			d.AskID = false
		case instance.KeyAPISecret:
			d.AskSecret = false
		}
	}
	return d
}

func (s *Service) post(w http.ResponseWriter, r *http.Request, req store.OAuthRequest, data pageData) {
	r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
	if err := r.ParseForm(); err != nil {
		http.Error(w, "bad form", http.StatusBadRequest)
		return
	}
	cookie, err := r.Cookie(csrfCookie)
	if err != nil || !secrets.Equal(r.PostFormValue("csrf"), s.box.MAC("connect:"+req.ID+":"+cookie.Value)) || !s.sameOrigin(r) {
		http.Error(w, "forbidden: this form must be sent from the page Leadstream served; reload it and try again", http.StatusForbidden)
		return
	}
	data.CSRF = r.PostFormValue("csrf")
	if r.PostFormValue("action") == "cancel" {
		if !s.use(w, r, req, s.consume(r.Context(), req)) {
			return
		}
		s.redirect(w, r, req, url.Values{"error": {"access_denied"}})
		return
	}
	data.IdentityURL = strings.TrimSpace(r.PostFormValue("identity_url"))
	data.RESTURL = strings.TrimSpace(r.PostFormValue("rest_url"))
	data.ClientID = strings.TrimSpace(r.PostFormValue("client_id"))
	creds := marketo.Credentials{IdentityURL: data.IdentityURL, RESTURL: data.RESTURL, ClientID: data.ClientID, ClientSecret: r.PostFormValue("client_secret")}
	for _, e := range req.Known {
		switch e.Key {
		case instance.KeyAPIKey:
			creds.ClientID = e.Value
		case instance.KeyAPISecret:
			v, err := s.box.Open(e.Value)
			if err != nil {
				s.log.Error("connect page: open sealed secret", "err", err)
				http.Error(w, "internal error", http.StatusInternalServerError)
				return
			}
			creds.ClientSecret = v
		}
	}
	var problems []string
	// Checked before any request: the credentials (perhaps given to
	// oauthUrl by the application, not typed here) only go to Marketo.
	for _, f := range []struct{ name, v string }{{"Identity URL", creds.IdentityURL}, {"REST API URL", creds.RESTURL}} {
		if err := s.urls.CheckMarketoURL(f.v); err != nil {
			problems = append(problems, f.name+" "+err.Error())
		}
	}
	if creds.ClientID == "" || creds.ClientSecret == "" {
		problems = append(problems, "Client ID and client secret are required")
	}
	if len(problems) > 0 {
		data.Error = strings.Join(problems, ". ") + "."
		s.render(w, http.StatusUnprocessableEntity, data)
		return
	}
	if !s.use(w, r, req, s.claimCheck(r.Context(), req)) {
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 20*time.Second)
	defer cancel()
	if err := s.verify(ctx, creds); err != nil {
		data.Error = VerifyMessage(err)
		// The request id is a bearer token for the page: never logged.
		s.log.Info("connect page: credentials not confirmed", "err", err)
		s.render(w, http.StatusUnprocessableEntity, data)
		return
	}
	if !s.use(w, r, req, s.consume(r.Context(), req)) {
		return
	}
	cfg := []store.ConfigEntry{
		{Key: instance.KeyAPIKey, Value: creds.ClientID},
		{Key: instance.KeyAPISecret, Value: s.box.Seal(creds.ClientSecret), Sealed: true},
		{Key: instance.KeyIdentityURL, Value: creds.IdentityURL},
		{Key: instance.KeyRESTURL, Value: creds.RESTURL},
	}
	code, err := s.issueCode(r.Context(), req, cfg)
	if err != nil {
		s.log.Error("connect page: issue code", "err", err)
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	s.redirect(w, r, req, url.Values{"code": {code}})
}

// use answers a claim on the link: true to go on; otherwise the page or an
// error has been written.
func (s *Service) use(w http.ResponseWriter, r *http.Request, req store.OAuthRequest, err error) bool {
	switch {
	case err == nil:
		return true
	case errors.Is(err, errLinkUsed):
		s.render(w, http.StatusGone, pageData{Expired: true})
	default:
		s.log.Error("connect page: claim link", "err", err)
		http.Error(w, "internal error", http.StatusInternalServerError)
	}
	return false
}

// VerifyMessage explains a failed credential check to a person.
func VerifyMessage(err error) string {
	switch {
	case errors.Is(err, marketo.ErrInvalidCredentials):
		return "Marketo refused these credentials. Check the client ID, the client secret and the Identity URL."
	case errors.Is(err, egress.ErrForbiddenHost):
		return "The Identity URL does not name an allowed Marketo host."
	case errors.Is(err, marketo.ErrUnreachable), errors.Is(err, context.DeadlineExceeded):
		return "Marketo could not be reached at the Identity URL (" + egress.Describe(err) + "). Check the URL and try again."
	default:
		return "Marketo did not confirm the credentials (it may be busy). Try again in a moment."
	}
}

func (s *Service) sameOrigin(r *http.Request) bool {
	o := r.Header.Get("Origin")
	if o == "" || o == "null" {
		return o == ""
	}
	pu, err := url.Parse(s.publicURL)
	ou, err2 := url.Parse(o)
	if err != nil || err2 != nil {
		return false
	}
	return strings.EqualFold(pu.Host, ou.Host) || strings.EqualFold(r.Host, ou.Host)
}

// redirect sends the browser back to the application with state and the
// outcome, keeping any query the callback URL already had.
func (s *Service) redirect(w http.ResponseWriter, r *http.Request, req store.OAuthRequest, add url.Values) {
	u, err := url.Parse(req.CallbackURL)
	if err != nil {
		http.Error(w, "bad callback URL", http.StatusBadRequest)
		return
	}
	q := u.Query()
	state := req.State
	if state == "" {
		state = "marketo"
	}
	q.Set("state", state)
	for k, v := range add {
		q[k] = v
	}
	u.RawQuery = q.Encode()
	http.SetCookie(w, &http.Cookie{Name: csrfCookie, Value: "", Path: "/oauth/", MaxAge: -1})
	http.Redirect(w, r, u.String(), http.StatusFound)
}

func (s *Service) render(w http.ResponseWriter, status int, d pageData) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	if err := page.Execute(w, d); err != nil {
		s.log.Error("connect page: render", "err", err)
	}
}
