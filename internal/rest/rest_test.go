package rest_test

import (
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/leadstream/leadstream/internal/app/apptest"
	"github.com/leadstream/leadstream/internal/marketo/marketotest"
)

const (
	clientID     = "client-123"
	clientSecret = "very-secret-marketo-value"
	prefix       = "/elements/api-v2"
)

func fakeMarketo(t *testing.T) *marketotest.Server {
	fm := marketotest.New()
	t.Cleanup(fm.Close)
	fm.AddClient(clientID, clientSecret)
	return fm
}

func fullConfig(fm *marketotest.Server) map[string]any {
	return map[string]any{
		"oauth.api.key": clientID, "oauth.api.secret": clientSecret,
		"marketo.identity.url": fm.IdentityURL(), "marketo.rest.url": fm.RESTURL(),
	}
}

// keys returns an object's keys, sorted.
func keys(t *testing.T, raw []byte) []string {
	t.Helper()
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatalf("not a JSON object: %s", raw)
	}
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

func sorted(s ...string) []string { slices.Sort(s); return s }

type instanceJSON struct {
	ID            string            `json:"id"`
	Name          string            `json:"name"`
	Token         *string           `json:"token"`
	Element       json.RawMessage   `json:"element"`
	Configuration map[string]string `json:"configuration"`
	Tags          []string          `json:"tags"`
	EventsEnabled bool              `json:"eventsEnabled"`
	Valid         bool              `json:"valid"`
	Disabled      bool              `json:"disabled"`
	WebhookURL    string            `json:"webhookUrl"`
}

func decode[T any](t *testing.T, status int, raw []byte, want int) T {
	t.Helper()
	if status != want {
		t.Fatalf("status %d, want %d: %s", status, want, raw)
	}
	var v T
	if err := json.Unmarshal(raw, &v); err != nil {
		t.Fatalf("decode %s: %v", raw, err)
	}
	return v
}

func create(t *testing.T, g *apptest.Gateway, authz, path string, cfg map[string]any) instanceJSON {
	t.Helper()
	st, raw := g.REST(t, authz, "POST", path+"/instances", map[string]any{
		"element": map[string]any{"key": "marketo"}, "configuration": cfg, "name": "x"})
	return decode[instanceJSON](t, st, raw, 200)
}

// The seed's three steps with the seed's JSON, only the host changed, and
// its webhook URL form receiving a Marketo webhook end to end.
func TestSeedSteps(t *testing.T) {
	fm := fakeMarketo(t)
	g := apptest.Start(t, "", nil)

	// Step 1: the OAuth URL.
	q := url.Values{"apiKey": {clientID}, "apiSecret": {clientSecret}, "callbackUrl": {"https://app.example.com/cb"}, "state": {"xyz"}}
	st, raw := g.REST(t, apptest.AuthA, "GET", prefix+"/elements/marketo/oauth/url?"+q.Encode(), nil)
	if got := keys(t, raw); st != 200 || !slices.Equal(got, []string{"element", "oauthUrl"}) {
		t.Fatalf("oauth url %d: %s", st, raw)
	}
	step1 := decode[struct{ Element, OauthURL string }](t, st, raw, 200)
	if step1.Element != "marketo" || !strings.HasPrefix(step1.OauthURL, g.URL+"/oauth/marketo/authorize?request=") || strings.Contains(step1.OauthURL, clientSecret) {
		t.Fatalf("step 1 = %+v", step1)
	}
	// The user connects on the hosted page (apiKey and apiSecret are known already).
	resp := apptest.Authorize(t, step1.OauthURL, url.Values{"action": {"connect"}, "identity_url": {fm.IdentityURL()}, "rest_url": {fm.RESTURL()}})
	loc, _ := url.Parse(resp.Header.Get("Location"))
	if resp.StatusCode != http.StatusFound || loc.Query().Get("state") != "xyz" || loc.Query().Get("code") == "" {
		t.Fatalf("connect page answered %d %s", resp.StatusCode, loc)
	}

	// Step 2: create the instance with the seed's instance JSON.
	st, raw = g.REST(t, apptest.AuthA, "POST", prefix+"/instances", []byte(`{
  "element": {"key": "marketo"},
  "providerData": {"code": "`+loc.Query().Get("code")+`"},
  "configuration": {"event.notification.enabled": true, "event.poller.refresh_interval": 5},
  "tags": ["my_first_tag"],
  "name": "my_first_instance"
}`))
	want := sorted("id", "name", "token", "element", "provisionInteractions", "valid", "disabled", "maxCacheSize",
		"cacheTimeToLive", "cachingEnabled", "defaultTransformation", "configuration", "tags", "eventsEnabled",
		"webhookUrl", "createdAt", "updatedAt")
	if got := keys(t, raw); st != 200 || !slices.Equal(got, want) {
		t.Fatalf("create %d: fields %v, want %v: %s", st, got, want, raw)
	}
	in := decode[instanceJSON](t, st, raw, 200)
	wantEl := sorted("id", "name", "key", "description", "image", "active", "deleted", "typeOauth", "trialAccount", "elementProvisionType")
	if got := keys(t, in.Element); !slices.Equal(got, wantEl) {
		t.Fatalf("element fields %v, want %v", got, wantEl)
	}
	el := decode[struct {
		Key, ElementProvisionType string
		TypeOauth, Active         bool
	}](t, 200, in.Element, 200)
	if el.Key != "marketo" || el.ElementProvisionType != "OAUTH_TEMPLATE" || !el.TypeOauth || !el.Active {
		t.Fatalf("element = %s", in.Element)
	}
	if in.Token == nil || !strings.HasPrefix(*in.Token, "ist_") || !strings.Contains(in.WebhookURL, "?secret=wh_") ||
		in.Name != "my_first_instance" || !slices.Equal(in.Tags, []string{"my_first_tag"}) || !in.Valid || !in.EventsEnabled {
		t.Fatalf("created %+v", in)
	}
	if c := in.Configuration; c["event.notification.enabled"] != "true" || c["event.poller.refresh_interval"] != "5" ||
		c["oauth.api.secret"] != "********" || c["oauth.api.key"] != clientID || c["marketo.rest.url"] != fm.RESTURL() {
		t.Fatalf("configuration = %v", in.Configuration)
	}

	// Step 3: list, newest first; the token and secrets are not shown again.
	for _, p := range []string{prefix, ""} {
		st, raw = g.REST(t, apptest.AuthA, "GET", p+"/instances", nil)
		list := decode[[]instanceJSON](t, st, raw, 200)
		if len(list) != 1 || list[0].ID != in.ID || list[0].Token != nil || strings.Contains(list[0].WebhookURL, "secret") || strings.Contains(string(raw), clientSecret) {
			t.Fatalf("GET %s/instances: %s", p, raw)
		}
	}

	// The seed's webhook URL form: /elements/api-v2/events/marketo/{base64 id}.
	secret := strings.SplitN(in.WebhookURL, "secret=", 2)[1]
	sub := apptest.Subscribe(t, g.URL, "sse", "Element "+*in.Token,
		`subscription { marketoEvents { instanceId source eventType payload } }`, nil)
	g.WaitSubscriptions(t, 1)
	hook := g.URL + prefix + "/events/marketo/" + base64.StdEncoding.EncodeToString([]byte(in.ID))
	st, ack := apptest.Post(t, hook, "application/x-www-form-urlencoded", []byte("email=ada%40example.com&first_name=Ada"), map[string]string{"X-Webhook-Secret": secret})
	if st != 202 || ack["cursor"] == "" {
		t.Fatalf("webhook: %d %v", st, ack)
	}
	m := sub.Next(t, 10*time.Second)
	var ev struct {
		MarketoEvents struct {
			InstanceID, Source, EventType string
			Payload                       map[string]string
		}
	}
	if err := json.Unmarshal(m.Data, &ev); err != nil || ev.MarketoEvents.InstanceID != in.ID || ev.MarketoEvents.Source != "WEBHOOK" ||
		ev.MarketoEvents.Payload["email"] != "ada@example.com" {
		t.Fatalf("event %s", m.Raw)
	}
}

func TestInstanceRoutes(t *testing.T) {
	fm := fakeMarketo(t)
	g := apptest.Start(t, "", nil)
	for _, p := range []string{"", prefix} {
		t.Run("prefix "+p, func(t *testing.T) {
			in := create(t, g, apptest.AuthA, p, fullConfig(fm))
			st, raw := g.REST(t, apptest.AuthA, "GET", p+"/instances/"+in.ID, nil)
			if got := decode[instanceJSON](t, st, raw, 200); got.ID != in.ID || got.Token != nil {
				t.Fatalf("get: %s", raw)
			}
			st, raw = g.REST(t, apptest.AuthA, "PATCH", p+"/instances/"+in.ID, map[string]any{
				"name": "renamed", "tags": []string{"a"}, "disabled": true,
				"configuration": map[string]any{"event.notification.enabled": true, "event.poller.refresh_interval": nil}})
			upd := decode[instanceJSON](t, st, raw, 200)
			if upd.Name != "renamed" || !slices.Equal(upd.Tags, []string{"a"}) || !upd.Disabled || !upd.EventsEnabled ||
				upd.Configuration["oauth.api.secret"] != "********" {
				t.Fatalf("patch: %s", raw)
			}
			st, raw = g.REST(t, apptest.AuthA, "POST", p+"/instances/"+in.ID+"/token", nil)
			rot := decode[instanceJSON](t, st, raw, 200)
			if rot.Token == nil || *rot.Token == *in.Token {
				t.Fatalf("rotate: %s", raw)
			}
			if st, raw := g.REST(t, "Element "+*in.Token, "GET", p+"/instances/"+in.ID, nil); st != 401 {
				t.Fatalf("old token after rotation: %d %s", st, raw)
			}
			if st, raw := g.REST(t, "Element "+*rot.Token, "GET", p+"/instances/"+in.ID, nil); st != 200 {
				t.Fatalf("new token: %d %s", st, raw)
			}
			if st, raw := g.REST(t, apptest.AuthA, "DELETE", p+"/instances/"+in.ID, nil); st != 200 || strings.TrimSpace(string(raw)) != "{}" {
				t.Fatalf("delete: %d %s", st, raw)
			}
			if st, raw := g.REST(t, apptest.AuthA, "GET", p+"/instances/"+in.ID, nil); st != 404 || keys(t, raw)[1] != "message" {
				t.Fatalf("after delete: %d %s", st, raw)
			}
			if st, _ := g.REST(t, "Element "+*rot.Token, "GET", p+"/instances/"+in.ID, nil); st != 401 {
				t.Fatalf("token of a deleted instance: %d", st)
			}
		})
	}
}

// Every route, not only REST's, is also served under the seed's prefix.
func TestPrefixServesEveryRoute(t *testing.T) {
	g := apptest.Start(t, "", nil)
	if st, raw := g.REST(t, "", "GET", prefix+"/healthz", nil); st != 200 || !strings.Contains(string(raw), "ok") {
		t.Fatalf("healthz: %d %s", st, raw)
	}
	st, raw := g.REST(t, apptest.AuthA, "POST", prefix+"/graphql", map[string]any{"query": "{ connectors { key } }"})
	if st != 200 || !strings.Contains(string(raw), `"key":"marketo"`) {
		t.Fatalf("graphql: %d %s", st, raw)
	}
	if st, raw := g.REST(t, "", "GET", prefix+"/", nil); st != 200 || !strings.Contains(string(raw), "<") {
		t.Fatalf("GraphiQL: %d %.100s", st, raw)
	}
	if st, raw := g.REST(t, "", "GET", prefix+"/oauth/marketo/authorize?request=unknown", nil); st == 200 || strings.Contains(string(raw), "404 page not found") {
		t.Fatalf("connect page with an unknown request: %d %.200s", st, raw)
	}
	sub := apptest.Subscribe(t, g.URL+prefix, "graphql-transport-ws", apptest.AuthA, `subscription { marketoEvents { id } }`, nil)
	defer sub.Close()
	g.WaitSubscriptions(t, 1)
}

type errorJSON struct {
	Message string
	Code    string
	Missing []string
	Invalid []struct{ Key, Message string }
}

func TestErrors(t *testing.T) {
	fm := fakeMarketo(t)
	g := apptest.Start(t, "", nil)
	bad := fullConfig(fm)
	bad["oauth.api.secret"] = "nope"
	tests := []struct {
		name    string
		authz   string
		method  string
		path    string
		body    any
		status  int
		msg     string
		missing []string
		invalid []string
	}{
		{name: "no credentials", method: "GET", path: "/instances", status: 401, msg: "credentials"},
		{name: "wrong credentials", authz: "User x, Organization y", method: "GET", path: "/instances", status: 401, msg: "credentials"},
		{name: "every missing key", method: "POST", path: "/instances",
			body:   map[string]any{"element": map[string]any{"key": "marketo"}, "name": "x", "configuration": map[string]any{}},
			status: 400, missing: []string{"marketo.identity.url", "marketo.rest.url", "oauth.api.key", "oauth.api.secret"}},
		{name: "malformed keys", method: "POST", path: "/instances",
			body: map[string]any{"element": map[string]any{"key": "marketo"}, "name": "x", "configuration": map[string]any{
				"oauth.api.key": "k", "oauth.api.secret": "s", "marketo.identity.url": "nope", "marketo.rest.url": fm.RESTURL(),
				"event.notification.enabled": "yes", "event.poller.refresh_interval": true}},
			status: 400, invalid: []string{"event.notification.enabled", "event.poller.refresh_interval", "marketo.identity.url"}},
		{name: "unknown fields, all named", method: "POST", path: "/instances",
			body:   []byte(`{"element": {"key": "marketo", "id": 14}, "nmae": "x", "configuration": {}, "extra": true}`),
			status: 400, msg: "element.id, extra, nmae", invalid: []string{"element.id", "extra", "nmae"}},
		{name: "unknown patch field", method: "PATCH", path: "/instances/x", body: map[string]any{"enabled": true},
			status: 400, msg: "enabled", invalid: []string{"enabled"}},
		{name: "wrong type", method: "POST", path: "/instances", body: []byte(`{"element": {"key": "marketo"}, "name": 5}`),
			status: 400, msg: "name must be a string", invalid: []string{"name"}},
		{name: "not JSON", method: "POST", path: "/instances", body: []byte(`{"element":`), status: 400, msg: "not valid JSON"},
		{name: "not an object", method: "POST", path: "/instances", body: []byte(`[1]`), status: 400, msg: "JSON object"},
		{name: "body over 1 MiB", method: "POST", path: "/instances",
			body: []byte(`{"name": "` + strings.Repeat("x", 1<<20) + `"}`), status: 400, msg: "1 MiB"},
		{name: "no element", method: "POST", path: "/instances", body: map[string]any{"name": "x", "configuration": fullConfig(fm)},
			status: 400, msg: "element.key", invalid: []string{"element.key"}},
		{name: "unknown element", method: "POST", path: "/instances",
			body: map[string]any{"element": map[string]any{"key": "dropbox"}, "name": "x", "configuration": fullConfig(fm)}, status: 400, msg: "dropbox"},
		{name: "Marketo refuses", method: "POST", path: "/instances",
			body: map[string]any{"element": map[string]any{"key": "marketo"}, "name": "x", "configuration": bad}, status: 502, msg: "refused"},
		{name: "bad callback URL", method: "GET", path: "/elements/marketo/oauth/url?callbackUrl=nope", status: 400, invalid: []string{"callbackUrl"}},
		{name: "unknown element's URL", method: "GET", path: "/elements/dropbox/oauth/url?callbackUrl=https://a.example.com/", status: 400, msg: "dropbox"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			authz := tt.authz
			if authz == "" && tt.status != 401 {
				authz = apptest.AuthA
			}
			st, raw := g.REST(t, authz, tt.method, prefix+tt.path, tt.body)
			e := decode[errorJSON](t, st, raw, tt.status)
			if e.Message == "" || !strings.Contains(e.Message, tt.msg) || strings.Contains(e.Message, "json:") || strings.Contains(e.Message, "rest:") {
				t.Fatalf("message %q, want one saying %q", e.Message, tt.msg)
			}
			slices.Sort(e.Missing)
			var inv []string
			for _, i := range e.Invalid {
				inv = append(inv, i.Key)
			}
			if !slices.Equal(e.Missing, tt.missing) || !slices.Equal(inv, tt.invalid) {
				t.Fatalf("missing %v invalid %v, want %v %v: %s", e.Missing, inv, tt.missing, tt.invalid, raw)
			}
		})
	}
	// Nothing was stored by any failure, and no secret reached an answer or the log.
	st, raw := g.REST(t, apptest.AuthA, "GET", "/instances", nil)
	if list := decode[[]instanceJSON](t, st, raw, 200); len(list) != 0 {
		t.Fatalf("failures stored %d instances", len(list))
	}
	if strings.Contains(g.Logs.String(), clientSecret) {
		t.Fatal("a Marketo secret is in the log")
	}
}

// Another organization's id answers exactly like a missing one, on every
// route, with and without the prefix.
func TestTenancy(t *testing.T) {
	fm := fakeMarketo(t)
	g := apptest.Start(t, "", nil)
	authB := g.NewOrg(t, "B")
	in := create(t, g, apptest.AuthA, "", fullConfig(fm))
	routes := []struct {
		method, path string
		body         any
	}{
		{"GET", "/instances/ID", nil},
		{"PATCH", "/instances/ID", map[string]any{"name": "mine"}},
		{"DELETE", "/instances/ID", nil},
		{"POST", "/instances/ID/token", nil},
	}
	for _, p := range []string{"", prefix} {
		for _, r := range routes {
			stF, rawF := g.REST(t, authB, r.method, p+strings.Replace(r.path, "ID", in.ID, 1), r.body)
			stM, rawM := g.REST(t, authB, r.method, p+strings.Replace(r.path, "ID", "00000000-0000-0000-0000-000000000000", 1), r.body)
			if stF != 404 || stM != 404 || string(rawF) != string(rawM) {
				t.Fatalf("%s %s%s: foreign %d %s / missing %d %s", r.method, p, r.path, stF, rawF, stM, rawM)
			}
		}
		st, raw := g.REST(t, authB, "GET", p+"/instances", nil)
		if list := decode[[]instanceJSON](t, st, raw, 200); len(list) != 0 {
			t.Fatalf("B lists A's instances: %s", raw)
		}
	}
	st, raw := g.REST(t, apptest.AuthA, "GET", "/instances/"+in.ID, nil)
	if got := decode[instanceJSON](t, st, raw, 200); got.Name != "x" {
		t.Fatalf("A's instance changed: %s", raw)
	}
}

// An Element token reads its own instance over REST; everything else is 403.
func TestElementToken(t *testing.T) {
	fm := fakeMarketo(t)
	g := apptest.Start(t, "", nil)
	a1 := create(t, g, apptest.AuthA, "", fullConfig(fm))
	a2 := create(t, g, apptest.AuthA, "", fullConfig(fm))
	for _, authz := range []string{"Element " + *a1.Token, apptest.AuthA + ", Element " + *a1.Token} {
		st, raw := g.REST(t, authz, "GET", prefix+"/instances/"+a1.ID, nil)
		if got := decode[instanceJSON](t, st, raw, 200); got.ID != a1.ID {
			t.Fatalf("reading its instance: %s", raw)
		}
		forbidden := []struct {
			method, path string
			body         any
		}{
			{"GET", "/instances/" + a2.ID, nil},
			{"GET", "/instances", nil},
			{"POST", "/instances", map[string]any{"element": map[string]any{"key": "marketo"}, "name": "x", "configuration": fullConfig(fm)}},
			{"PATCH", "/instances/" + a1.ID, map[string]any{"name": "x"}},
			{"DELETE", "/instances/" + a1.ID, nil},
			{"POST", "/instances/" + a1.ID + "/token", nil},
			{"GET", "/elements/marketo/oauth/url?callbackUrl=https://a.example.com/", nil},
		}
		for _, f := range forbidden {
			st, raw := g.REST(t, authz, f.method, prefix+f.path, f.body)
			if e := decode[errorJSON](t, st, raw, 403); e.Code != "FORBIDDEN" || e.Message == "" {
				t.Fatalf("%s %s: %s", f.method, f.path, raw)
			}
		}
	}
	// Still there, unchanged.
	st, raw := g.REST(t, apptest.AuthA, "GET", "/instances", nil)
	if list := decode[[]instanceJSON](t, st, raw, 200); len(list) != 2 {
		t.Fatalf("instances after forbidden calls: %s", raw)
	}
}
