package app_test

import (
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/leadstream/leadstream/internal/app/apptest"
	"github.com/leadstream/leadstream/internal/marketo/marketotest"
)

const (
	clientID     = "client-123"
	clientSecret = "very-secret-marketo-value"
)

const createMut = `mutation($in: CreateInstanceInput!) { createInstance(input: $in) {
  id name token webhookUrl valid disabled eventsEnabled configuration tags connector { key } } }`

type instanceAnswer struct {
	ID            string            `json:"id"`
	Name          string            `json:"name"`
	Token         *string           `json:"token"`
	WebhookURL    string            `json:"webhookUrl"`
	Valid         bool              `json:"valid"`
	Configuration map[string]string `json:"configuration"`
}

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

// connectFlow drives oauthUrl and the hosted page like a browser and
// returns the redirect the page answered with.
func connectFlow(t *testing.T, g *apptest.Gateway, authz string, fm *marketotest.Server, secret, action string) *url.URL {
	t.Helper()
	var out struct {
		OauthURL struct{ OauthURL string } `json:"oauthUrl"`
	}
	g.MustDo(t, authz, `mutation($in: OAuthUrlInput!) { oauthUrl(input: $in) { connectorKey oauthUrl } }`,
		map[string]any{"in": map[string]any{"callbackUrl": "https://app.example.com/cb?x=1", "state": "st-42"}}, &out)
	page := out.OauthURL.OauthURL
	if !strings.HasPrefix(page, g.URL+"/oauth/marketo/authorize?request=") {
		t.Fatalf("oauthUrl = %q", page)
	}
	jar, _ := cookiejar.New(nil)
	browser := &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := browser.Get(page)
	if err != nil {
		t.Fatal(err)
	}
	html, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(html), "Connect your Marketo instance") {
		t.Fatalf("page %d: %s", resp.StatusCode, html)
	}
	if strings.Contains(string(html), "<script") || strings.Contains(string(html), "https://cdn") {
		t.Fatal("connect page loads scripts or remote assets")
	}
	csrf := regexp.MustCompile(`name="csrf" value="([^"]+)"`).FindStringSubmatch(string(html))
	if csrf == nil {
		t.Fatal("no csrf field")
	}
	form := url.Values{"csrf": {csrf[1]}, "action": {action}, "identity_url": {fm.IdentityURL()},
		"rest_url": {fm.RESTURL()}, "client_id": {clientID}, "client_secret": {secret}}
	resp, err = browser.PostForm(page, form)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusFound {
		if secret == clientSecret {
			t.Fatalf("post answered %d: %s", resp.StatusCode, body)
		}
		if resp.StatusCode != http.StatusUnprocessableEntity || !strings.Contains(string(body), "refused") {
			t.Fatalf("bad credentials: %d %s", resp.StatusCode, body)
		}
		return nil
	}
	loc, err := url.Parse(resp.Header.Get("Location"))
	if err != nil {
		t.Fatal(err)
	}
	return loc
}

func TestConnectFlowToValidInstance(t *testing.T) {
	fm := fakeMarketo(t)
	g := apptest.Start(t, "", nil)

	if connectFlow(t, g, apptest.AuthA, fm, "wrong-secret", "connect") != nil {
		t.Fatal("bad credentials were redirected with a code")
	}
	cancel := connectFlow(t, g, apptest.AuthA, fm, "", "cancel")
	if cancel.Query().Get("error") != "access_denied" || cancel.Query().Get("state") != "st-42" || cancel.Query().Has("code") {
		t.Fatalf("cancel redirect = %s", cancel)
	}
	loc := connectFlow(t, g, apptest.AuthA, fm, clientSecret, "connect")
	q := loc.Query()
	if loc.Host != "app.example.com" || q.Get("state") != "st-42" || q.Get("x") != "1" || q.Get("code") == "" {
		t.Fatalf("redirect = %s", loc)
	}
	var created struct{ CreateInstance instanceAnswer }
	g.MustDo(t, apptest.AuthA, createMut, map[string]any{"in": map[string]any{
		"connector": map[string]any{"key": "marketo"}, "providerData": map[string]any{"code": q.Get("code")},
		"name": "Acme", "configuration": map[string]any{"event.notification.enabled": "false"},
	}}, &created)
	in := created.CreateInstance
	if !in.Valid || in.Token == nil || !strings.Contains(in.WebhookURL, "?secret=wh_") {
		t.Fatalf("created = %+v", in)
	}
	if in.Configuration["oauth.api.secret"] != "********" || in.Configuration["oauth.api.key"] != clientID ||
		in.Configuration["marketo.rest.url"] != fm.RESTURL() {
		t.Fatalf("configuration = %v", in.Configuration)
	}
	// The code is used up.
	r := g.Do(t, apptest.AuthA, createMut, map[string]any{"in": map[string]any{
		"connector": map[string]any{"key": "marketo"}, "providerData": map[string]any{"code": q.Get("code")},
		"name": "Again", "configuration": map[string]any{},
	}})
	if r.Code() != "BAD_USER_INPUT" {
		t.Fatalf("reused code: %s", r.Raw)
	}
	// The token and the webhook secret are shown only once.
	var got struct{ Instance instanceAnswer }
	g.MustDo(t, apptest.AuthA, `query($id: ID!) { instance(id: $id) { id token webhookUrl configuration } }`, map[string]any{"id": in.ID}, &got)
	if got.Instance.Token != nil || strings.Contains(got.Instance.WebhookURL, "secret") {
		t.Fatalf("secret shown again: %+v", got.Instance)
	}
	assertNoSecrets(t, g, []string{clientSecret, *in.Token, strings.SplitN(in.WebhookURL, "secret=", 2)[1]}, string(r.Raw))
}

func TestCreateInstanceValidation(t *testing.T) {
	fm := fakeMarketo(t)
	g := apptest.Start(t, "", nil)
	tests := []struct {
		name        string
		cfg         map[string]any
		code        string
		wantMissing []string
		wantInvalid []string
	}{
		{name: "every missing key at once", cfg: map[string]any{},
			code: "BAD_USER_INPUT", wantMissing: []string{"oauth.api.key", "oauth.api.secret", "marketo.identity.url", "marketo.rest.url"}},
		{name: "malformed keys", cfg: map[string]any{
			"oauth.api.key": "k", "oauth.api.secret": "s", "marketo.identity.url": "not-a-url", "marketo.rest.url": "/rest",
			"event.poller.refresh_interval": "often", "event.poller.activityTypeIds": "1,2,3,4,5,6,7,8,9,10,11",
		}, code: "BAD_USER_INPUT", wantInvalid: []string{"event.poller.activityTypeIds", "event.poller.refresh_interval", "marketo.identity.url", "marketo.rest.url"}},
		{name: "missing and malformed together", cfg: map[string]any{"marketo.rest.url": "ftp://x", "oauth.api.key": "k"},
			code: "BAD_USER_INPUT", wantMissing: []string{"oauth.api.secret", "marketo.identity.url"}, wantInvalid: []string{"marketo.rest.url"}},
		{name: "bad credentials", cfg: func() map[string]any { c := fullConfig(fm); c["oauth.api.secret"] = "nope"; return c }(), code: "UPSTREAM_ERROR"},
		{name: "unreachable marketo", cfg: func() map[string]any {
			c := fullConfig(fm)
			c["marketo.identity.url"] = "http://127.0.0.1:1/identity"
			return c
		}(), code: "UPSTREAM_ERROR"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := g.Do(t, apptest.AuthA, createMut, map[string]any{"in": map[string]any{
				"connector": map[string]any{"key": "marketo"}, "name": "x", "configuration": tt.cfg}})
			if r.Code() != tt.code {
				t.Fatalf("code = %q: %s", r.Code(), r.Raw)
			}
			ext := r.Errors[0].Extensions
			var missing, invalid []string
			if m, ok := ext["missing"].([]any); ok {
				for _, k := range m {
					missing = append(missing, k.(string))
				}
			}
			if m, ok := ext["invalid"].([]any); ok {
				for _, k := range m {
					invalid = append(invalid, k.(map[string]any)["key"].(string))
				}
			}
			slices.Sort(missing)
			want := slices.Clone(tt.wantMissing)
			slices.Sort(want)
			if !slices.Equal(missing, want) || !slices.Equal(invalid, tt.wantInvalid) {
				t.Fatalf("missing=%v invalid=%v, want %v %v", missing, invalid, want, tt.wantInvalid)
			}
		})
	}
	// Nothing was stored by any of the failures.
	var list struct{ Instances []instanceAnswer }
	g.MustDo(t, apptest.AuthA, `{ instances { id } }`, nil, &list)
	if len(list.Instances) != 0 {
		t.Fatalf("failed creates stored %d instances", len(list.Instances))
	}
}

func TestOneCodeManyConcurrentCreates(t *testing.T) {
	fm := fakeMarketo(t)
	g := apptest.Start(t, "", nil)
	loc := connectFlow(t, g, apptest.AuthA, fm, clientSecret, "connect")
	code := loc.Query().Get("code")
	var wg sync.WaitGroup
	var mu sync.Mutex
	codes := map[string]int{}
	for range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := g.Do(t, apptest.AuthA, createMut, map[string]any{"in": map[string]any{
				"connector": map[string]any{"key": "marketo"}, "providerData": map[string]any{"code": code},
				"name": "race", "configuration": map[string]any{}}})
			mu.Lock()
			codes[r.Code()]++
			mu.Unlock()
		}()
	}
	wg.Wait()
	if codes[""] != 1 || codes["BAD_USER_INPUT"] != 49 {
		t.Fatalf("outcomes = %v, want 1 success and 49 BAD_USER_INPUT", codes)
	}
	var list struct{ Instances []instanceAnswer }
	g.MustDo(t, apptest.AuthA, `{ instances { id } }`, nil, &list)
	if len(list.Instances) != 1 {
		t.Fatalf("%d instances, want 1", len(list.Instances))
	}
}

func TestTenancyAndAuth(t *testing.T) {
	fm := fakeMarketo(t)
	g := apptest.Start(t, "", nil)
	authB := g.NewOrg(t, "B")
	var created struct{ CreateInstance instanceAnswer }
	g.MustDo(t, apptest.AuthA, createMut, map[string]any{"in": map[string]any{
		"connector": map[string]any{"key": "marketo"}, "name": "A's", "configuration": fullConfig(fm)}}, &created)
	id := created.CreateInstance.ID

	for _, authz := range []string{"", "User nobody, Organization nothing", "Bearer xyz"} {
		r := g.Do(t, authz, `{ connectors { key } }`, nil)
		if r.Status != 401 || r.Code() != "UNAUTHENTICATED" {
			t.Fatalf("auth %q: %d %s", authz, r.Status, r.Raw)
		}
	}
	var conns struct {
		Connectors []struct {
			Key, Name, ProvisionType string
			TypeOauth                bool
		}
	}
	g.MustDo(t, authB, `{ connectors { key name typeOauth provisionType } }`, nil, &conns)
	if len(conns.Connectors) != 1 || conns.Connectors[0].Key != "marketo" || conns.Connectors[0].Name != "Marketo" ||
		!conns.Connectors[0].TypeOauth || conns.Connectors[0].ProvisionType != "OAUTH_TEMPLATE" {
		t.Fatalf("connectors = %+v", conns)
	}
	missing := "00000000-0000-0000-0000-000000000000"
	ops := []struct{ name, q string }{
		{"delete", `mutation($id: ID!) { deleteInstance(id: $id) }`},
		{"update", `mutation($id: ID!) { updateInstance(id: $id, input: {name: "mine"}) { id } }`},
		{"rotate", `mutation($id: ID!) { rotateWebhookSecret(id: $id) { id } }`},
		{"events", `query($id: ID!) { events(instanceId: $id) { edges { cursor } } }`},
		{"deliveries", `query($id: ID!) { deliveries(instanceId: $id) { eventId } }`},
		{"pollNow", `mutation($id: ID!) { pollNow(instanceId: $id) }`},
	}
	for _, op := range ops {
		foreign := g.Do(t, authB, op.q, map[string]any{"id": id})
		absent := g.Do(t, authB, op.q, map[string]any{"id": missing})
		if foreign.Code() != "NOT_FOUND" || absent.Code() != "NOT_FOUND" || foreign.Errors[0].Message != absent.Errors[0].Message {
			t.Fatalf("%s: foreign %s / missing %s", op.name, foreign.Raw, absent.Raw)
		}
	}
	var one struct{ Instance *instanceAnswer }
	g.MustDo(t, authB, `query($id: ID!) { instance(id: $id) { id } }`, map[string]any{"id": id}, &one)
	var list struct{ Instances []instanceAnswer }
	g.MustDo(t, authB, `{ instances { id } }`, nil, &list)
	if one.Instance != nil || len(list.Instances) != 0 {
		t.Fatalf("org B sees A's instance: %+v %+v", one, list)
	}
	// Still there for A, unchanged.
	g.MustDo(t, apptest.AuthA, `query($id: ID!) { instance(id: $id) { id name } }`, map[string]any{"id": id}, &one)
	if one.Instance == nil || one.Instance.Name != "A's" {
		t.Fatalf("A's instance = %+v", one.Instance)
	}
}

func TestRestartKeepsInstanceAndCredentials(t *testing.T) {
	fm := fakeMarketo(t)
	dir := t.TempDir()
	g := apptest.Start(t, dir, nil)
	var created struct{ CreateInstance instanceAnswer }
	g.MustDo(t, apptest.AuthA, createMut, map[string]any{"in": map[string]any{
		"connector": map[string]any{"key": "marketo"}, "name": "durable", "configuration": fullConfig(fm)}}, &created)
	g.Stop()

	g2 := apptest.Start(t, dir, nil)
	var got struct{ Instance *instanceAnswer }
	g2.MustDo(t, apptest.AuthA, `query($id: ID!) { instance(id: $id) { id name valid } }`, map[string]any{"id": created.CreateInstance.ID}, &got)
	if got.Instance == nil || got.Instance.Name != "durable" || !got.Instance.Valid {
		t.Fatalf("after restart: %+v", got.Instance)
	}
	// Changing a credential key makes the gateway verify the merged
	// credentials, which needs the stored secret decrypted.
	var upd struct{ UpdateInstance instanceAnswer }
	g2.MustDo(t, apptest.AuthA, `mutation($id: ID!, $c: JSON) { updateInstance(id: $id, input: {configuration: $c}) { id valid configuration } }`,
		map[string]any{"id": created.CreateInstance.ID, "c": map[string]any{"marketo.rest.url": fm.RESTURL() + "/rest"}}, &upd)
	if !upd.UpdateInstance.Valid || upd.UpdateInstance.Configuration["marketo.rest.url"] != fm.RESTURL()+"/rest" {
		t.Fatalf("update after restart: %+v", upd.UpdateInstance)
	}
	if fm.Stats().TokenRequests < 2 {
		t.Fatalf("credentials were not verified after restart (%d token requests)", fm.Stats().TokenRequests)
	}
}

// assertNoSecrets checks the gateway's logs and an answer for secrets.
func assertNoSecrets(t *testing.T, g *apptest.Gateway, secrets []string, answers ...string) {
	t.Helper()
	logs := g.Logs.String()
	for _, s := range secrets {
		if s == "" {
			t.Fatal("empty secret")
		}
		if strings.Contains(logs, s) {
			t.Errorf("a secret appears in the logs: %.6s…", s)
		}
		for _, a := range answers {
			if strings.Contains(a, s) {
				t.Errorf("a secret appears in an answer: %.6s…", s)
			}
		}
	}
}

// Keys that mean a boolean or a number take JSON ones; they are stored and
// shown as strings.
func TestConfigurationBooleansAndNumbers(t *testing.T) {
	fm := fakeMarketo(t)
	g := apptest.Start(t, "", nil)
	cfg := fullConfig(fm)
	cfg["event.notification.enabled"] = true
	cfg["event.poller.refresh_interval"] = 5
	var out struct {
		CreateInstance struct {
			ID            string
			EventsEnabled bool
			Configuration map[string]string
		}
	}
	g.MustDo(t, apptest.AuthA, createMut, map[string]any{"in": map[string]any{
		"connector": map[string]any{"key": "marketo"}, "name": "typed", "configuration": cfg}}, &out)
	c := out.CreateInstance
	if !c.EventsEnabled || c.Configuration["event.notification.enabled"] != "true" || c.Configuration["event.poller.refresh_interval"] != "5" {
		t.Fatalf("created %+v", c)
	}
	var upd struct {
		UpdateInstance struct {
			EventsEnabled bool
			Configuration map[string]string
		}
	}
	g.MustDo(t, apptest.AuthA, `mutation($id: ID!, $c: JSON) { updateInstance(id: $id, input: {configuration: $c}) { eventsEnabled configuration } }`,
		map[string]any{"id": c.ID, "c": map[string]any{"event.notification.enabled": false, "event.poller.activityTypeIds": []int{12, 13}}}, &upd)
	if upd.UpdateInstance.EventsEnabled || upd.UpdateInstance.Configuration["event.notification.enabled"] != "false" ||
		upd.UpdateInstance.Configuration["event.poller.activityTypeIds"] != "12,13" {
		t.Fatalf("updated %+v", upd.UpdateInstance)
	}
	r := g.Do(t, apptest.AuthA, `mutation($id: ID!, $c: JSON) { updateInstance(id: $id, input: {configuration: $c}) { id } }`,
		map[string]any{"id": c.ID, "c": map[string]any{"event.notification.enabled": 1, "oauth.api.key": true}})
	if r.Code() != "BAD_USER_INPUT" || !strings.Contains(string(r.Raw), "oauth.api.key") || !strings.Contains(string(r.Raw), "event.notification.enabled") {
		t.Fatalf("a number for a boolean: %s", r.Raw)
	}
}
