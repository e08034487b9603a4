package app_test

import (
	"strings"
	"testing"
	"time"

	"github.com/leadstream/leadstream/internal/app/apptest"
)

// created is an instance with the secrets its creation answer showed once.
type created struct {
	ID, Token, Hook string
}

func createWithToken(t *testing.T, g *apptest.Gateway, authz string, cfg map[string]any) created {
	t.Helper()
	var out struct{ CreateInstance instanceAnswer }
	g.MustDo(t, authz, createMut, map[string]any{"in": map[string]any{
		"connector": map[string]any{"key": "marketo"}, "name": "scoped", "configuration": cfg}}, &out)
	in := out.CreateInstance
	if in.Token == nil || !strings.HasPrefix(*in.Token, "ist_") {
		t.Fatalf("created without a token: %+v", in)
	}
	return created{ID: in.ID, Token: *in.Token, Hook: in.WebhookURL}
}

// An Element token reads its own instance and subscribes to its events,
// and is FORBIDDEN for everything else, over HTTP, websocket and SSE.
func TestElementTokenScope(t *testing.T) {
	fm := fakeMarketo(t)
	g := apptest.Start(t, "", nil)
	authB := g.NewOrg(t, "B")
	a1 := createWithToken(t, g, apptest.AuthA, fullConfig(fm))
	a2 := createWithToken(t, g, apptest.AuthA, fullConfig(fm))
	el := "Element " + a1.Token
	both := apptest.AuthA + ", Element " + a1.Token

	for _, authz := range []string{el, both} {
		var got struct {
			Instance   *struct{ ID, Name string }
			Events     struct{ Edges []struct{ Cursor string } }
			Deliveries []struct{ EventID string }
		}
		g.MustDo(t, authz, `query($id: ID!) { instance(id: $id) { id name } events(instanceId: $id) { edges { cursor } } deliveries(instanceId: $id) { eventId } }`,
			map[string]any{"id": a1.ID}, &got)
		if got.Instance == nil || got.Instance.ID != a1.ID {
			t.Fatalf("%q reading its instance: %+v", authz, got)
		}
		forbidden := []struct{ name, q string }{
			{"another instance", `query($id: ID!) { instance(id: $id) { id } }`},
			{"another's events", `query($id: ID!) { events(instanceId: $id) { edges { cursor } } }`},
			{"another's deliveries", `query($id: ID!) { deliveries(instanceId: $id) { eventId } }`},
			{"instances", `{ instances { id } }`},
			{"connectors", `{ connectors { key } }`},
			{"update", `mutation { updateInstance(id: "ID1", input: {name: "x"}) { id } }`},
			{"delete", `mutation { deleteInstance(id: "ID1") }`},
			{"rotate token", `mutation { rotateInstanceToken(id: "ID1") { token } }`},
			{"rotate webhook secret", `mutation { rotateWebhookSecret(id: "ID1") { webhookUrl } }`},
			{"pollNow", `mutation { pollNow(instanceId: "ID1") }`},
			{"oauthUrl", `mutation { oauthUrl(input: {callbackUrl: "https://app.example.com/cb"}) { oauthUrl } }`},
			{"create", `mutation { createInstance(input: {connector: {key: "marketo"}, name: "x", configuration: {}}) { id } }`},
			{"redeliver", `mutation { redeliver(eventId: "e") { id } }`},
		}
		for _, op := range forbidden {
			r := g.Do(t, authz, strings.ReplaceAll(op.q, "ID1", a1.ID), map[string]any{"id": a2.ID})
			if r.Code() != "FORBIDDEN" {
				t.Errorf("%s with %q: %s", op.name, authz, r.Raw)
			}
		}
	}
	// A token beside another organization's credentials is no credential.
	if r := g.Do(t, authB+", Element "+a1.Token, `query($id: ID!) { instance(id: $id) { id } }`, map[string]any{"id": a1.ID}); r.Status != 401 || r.Code() != "UNAUTHENTICATED" {
		t.Fatalf("token with org B: %d %s", r.Status, r.Raw)
	}

	// Subscriptions: with its id or none (meaning its instance only); another id is FORBIDDEN.
	for _, proto := range []string{"graphql-transport-ws", "graphql-ws", "sse"} {
		t.Run(proto, func(t *testing.T) {
			own := apptest.Subscribe(t, g.URL, proto, el, subQuery, map[string]any{"id": a1.ID})
			wide := apptest.Subscribe(t, g.URL, proto, el, subQuery, nil)
			g.WaitSubscriptions(t, 2)
			other := apptest.Subscribe(t, g.URL, proto, el, subQuery, map[string]any{"id": a2.ID})
			if c := errCode(t, other.Next(t, 5*time.Second)); c != "FORBIDDEN" {
				t.Fatalf("subscribing to another instance: %s", c)
			}
			apptest.Post(t, a2.Hook, "application/json", []byte(`{"for":"a2"}`), nil)
			apptest.Post(t, a1.Hook, "application/json", []byte(`{"for":"a1"}`), nil)
			for _, s := range []*apptest.Sub{own, wide} {
				if e := nextEvent(t, s); e.InstanceID != a1.ID || string(e.Payload) != `{"for":"a1"}` {
					t.Fatalf("first event %+v: another instance's event leaked", e)
				}
			}
			own.Close()
			wide.Close()
			other.Close()
			g.WaitSubscriptions(t, 0)
		})
	}
}

// rotateInstanceToken issues a new token and the old one stops at once:
// for requests, and for subscriptions opened with it. Deleting the
// instance ends its token too.
func TestElementTokenRotationAndDelete(t *testing.T) {
	fm := fakeMarketo(t)
	g := apptest.Start(t, "", nil)
	a1 := createWithToken(t, g, apptest.AuthA, fullConfig(fm))
	read := `query($id: ID!) { instance(id: $id) { id token } }`
	g.MustDo(t, "Element "+a1.Token, read, map[string]any{"id": a1.ID}, nil) // remembered by the authenticator

	oldWS := apptest.Subscribe(t, g.URL, "graphql-transport-ws", "Element "+a1.Token, subQuery, nil)
	oldSSE := apptest.Subscribe(t, g.URL, "sse", "Element "+a1.Token, subQuery, map[string]any{"id": a1.ID})
	user := apptest.Subscribe(t, g.URL, "graphql-transport-ws", apptest.AuthA, subQuery, map[string]any{"id": a1.ID})
	g.WaitSubscriptions(t, 3)

	var rot struct {
		RotateInstanceToken struct {
			ID    string
			Token *string
		}
	}
	g.MustDo(t, apptest.AuthA, `mutation($id: ID!) { rotateInstanceToken(id: $id) { id token } }`, map[string]any{"id": a1.ID}, &rot)
	if rot.RotateInstanceToken.Token == nil || *rot.RotateInstanceToken.Token == a1.Token {
		t.Fatalf("rotation answered %+v", rot)
	}
	newToken := *rot.RotateInstanceToken.Token
	if r := g.Do(t, "Element "+a1.Token, read, map[string]any{"id": a1.ID}); r.Status != 401 || r.Code() != "UNAUTHENTICATED" {
		t.Fatalf("old token after rotation: %d %s", r.Status, r.Raw)
	}
	if _, err := apptest.TrySubscribe(g.URL, "graphql-transport-ws", "Element "+a1.Token, subQuery, nil); err == nil || !strings.Contains(err.Error(), "4401") {
		t.Fatalf("websocket with the old token: %v", err)
	}
	for _, s := range []*apptest.Sub{oldWS, oldSSE} {
		m := s.Next(t, 5*time.Second)
		if c := errCode(t, m); c != "SUBSCRIPTION_ENDED" || !strings.Contains(string(m.Raw), "replaced") {
			t.Fatalf("subscription with the old token: %s", m.Raw)
		}
	}
	var got struct{ Instance struct{ Token *string } }
	g.MustDo(t, "Element "+newToken, read, map[string]any{"id": a1.ID}, &got)
	if got.Instance.Token != nil {
		t.Fatal("the token is shown again after rotation")
	}
	// The organization's own subscription goes on.
	apptest.Post(t, a1.Hook, "application/json", []byte(`{"after":"rotation"}`), nil)
	if e := nextEvent(t, user); e.InstanceID != a1.ID {
		t.Fatalf("user subscription after rotation: %+v", e)
	}

	g.MustDo(t, apptest.AuthA, `mutation($id: ID!) { deleteInstance(id: $id) }`, map[string]any{"id": a1.ID}, nil)
	if r := g.Do(t, "Element "+newToken, read, map[string]any{"id": a1.ID}); r.Status != 401 {
		t.Fatalf("token of a deleted instance: %d %s", r.Status, r.Raw)
	}
	assertNoSecrets(t, g, []string{a1.Token, newToken})
}
