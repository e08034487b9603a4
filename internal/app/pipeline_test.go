package app_test

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/leadstream/leadstream/internal/app/apptest"
	"github.com/leadstream/leadstream/internal/events"
)

const subQuery = `subscription($id: ID, $after: String) { marketoEvents(instanceId: $id, after: $after) {
  id cursor instanceId source eventType objectType occurredAt receivedAt payload } }`

type eventAnswer struct {
	ID         string          `json:"id"`
	Cursor     string          `json:"cursor"`
	InstanceID string          `json:"instanceId"`
	Source     string          `json:"source"`
	EventType  string          `json:"eventType"`
	ObjectType string          `json:"objectType"`
	OccurredAt string          `json:"occurredAt"`
	ReceivedAt string          `json:"receivedAt"`
	Payload    json.RawMessage `json:"payload"`
}

// newInstance creates an instance and returns its id and secret-bearing webhook URL.
// cur is the cursor of the n-th event of an instance.
func cur(n int) string { return events.FormatCursor(int64(n)) }

func newInstance(t *testing.T, g *apptest.Gateway, authz string, cfg map[string]any) (string, string) {
	t.Helper()
	var created struct{ CreateInstance instanceAnswer }
	g.MustDo(t, authz, createMut, map[string]any{"in": map[string]any{
		"connector": map[string]any{"key": "marketo"}, "name": "events", "configuration": cfg}}, &created)
	return created.CreateInstance.ID, created.CreateInstance.WebhookURL
}

func nextEvent(t *testing.T, s *apptest.Sub) eventAnswer {
	t.Helper()
	m := s.Next(t, 10*time.Second)
	if len(m.Errors) > 0 || m.Done {
		t.Fatalf("expected an event, got %s", m.Raw)
	}
	var d struct{ MarketoEvents eventAnswer }
	if err := json.Unmarshal(m.Data, &d); err != nil {
		t.Fatalf("decode %s: %v", m.Raw, err)
	}
	return d.MarketoEvents
}

func eventCount(t *testing.T, g *apptest.Gateway, id string) int {
	t.Helper()
	var out struct {
		Events struct{ Edges []struct{ Cursor string } }
	}
	g.MustDo(t, apptest.AuthA, `query($id: ID!) { events(instanceId: $id, first: 500) { edges { cursor } } }`, map[string]any{"id": id}, &out)
	return len(out.Events.Edges)
}

func TestWebhookReachesEveryTransport(t *testing.T) {
	fm := fakeMarketo(t)
	g := apptest.Start(t, "", nil)
	id, hook := newInstance(t, g, apptest.AuthA, fullConfig(fm))
	var subs []*apptest.Sub
	for _, proto := range []string{"graphql-transport-ws", "graphql-ws", "sse"} {
		subs = append(subs, apptest.Subscribe(t, g.URL, proto, apptest.AuthA, subQuery, map[string]any{"id": id}))
	}
	// An organization-wide subscription sees it too.
	subs = append(subs, apptest.Subscribe(t, g.URL, "graphql-transport-ws", apptest.AuthA, subQuery, nil))
	// Subscribers share renderings only with the same query: this one asks
	// for less and must get exactly that.
	narrow := apptest.Subscribe(t, g.URL, "graphql-transport-ws", apptest.AuthA,
		`subscription($id: ID) { marketoEvents(instanceId: $id) { cursor } }`, map[string]any{"id": id})
	g.WaitSubscriptions(t, len(subs)+1)

	body := []byte(`{"first_name":"Ada","email":"ada@example.com","score":1.50,"tags":["a","b"],"nested":{"x":null}}`)
	status, ack := apptest.Post(t, hook, "application/json", body, nil)
	if status != 202 || ack["id"] == "" || ack["cursor"] != cur(1) {
		t.Fatalf("webhook answered %d %v", status, ack)
	}
	if m := narrow.Next(t, 10*time.Second); string(m.Data) != `{"marketoEvents":{"cursor":"`+cur(1)+`"}}` {
		t.Errorf("narrow subscriber got %s", m.Data)
	}
	for i, s := range subs {
		e := nextEvent(t, s)
		if !bytes.Equal(e.Payload, body) {
			t.Errorf("subscriber %d: payload %s, want %s", i, e.Payload, body)
		}
		if e.ID != ack["id"] || e.Cursor != cur(1) || e.InstanceID != id || e.Source != "WEBHOOK" || e.EventType != "WEBHOOK" || e.ObjectType != "webhook" {
			t.Errorf("subscriber %d: %+v", i, e)
		}
	}
}

func TestWebhookRequests(t *testing.T) {
	fm := fakeMarketo(t)
	g := apptest.Start(t, "", nil)
	id, hook := newInstance(t, g, apptest.AuthA, fullConfig(fm))
	u, _ := url.Parse(hook)
	secret := u.Query().Get("secret")
	base := g.URL + "/events/marketo/"
	std := base64.StdEncoding.EncodeToString([]byte(id))
	urlsafe := base64.RawURLEncoding.EncodeToString([]byte(id))
	other := base64.RawURLEncoding.EncodeToString([]byte("00000000-0000-0000-0000-000000000000"))
	tests := []struct {
		name, url, ctype string
		body             []byte
		header           map[string]string
		status           int
		payload          string // expected stored payload when accepted
	}{
		{"standard base64 with padding, header secret", base + std, "application/json", []byte(`{"a":1}`), map[string]string{"X-Webhook-Secret": secret}, 202, `{"a":1}`},
		{"url-safe base64, query secret", base + urlsafe + "?secret=" + secret, "application/json", []byte(`{"b":2}`), nil, 202, `{"b":2}`},
		{"form body becomes an object", base + urlsafe + "?secret=" + secret, "application/x-www-form-urlencoded", []byte(`first_name=Ada&email=ada%40example.com`), nil, 202, `{"email":"ada@example.com","first_name":"Ada"}`},
		{"wrong secret", base + urlsafe + "?secret=nope", "application/json", []byte(`{}`), nil, 401, ""},
		{"missing secret", base + urlsafe, "application/json", []byte(`{}`), nil, 401, ""},
		{"unknown instance", base + other + "?secret=" + secret, "application/json", []byte(`{}`), nil, 404, ""},
		{"bad base64", base + "not*base64!?secret=" + secret, "application/json", []byte(`{}`), nil, 400, ""},
		{"bad JSON", base + urlsafe + "?secret=" + secret, "application/json", []byte(`{"first_name":Ada}`), nil, 400, ""},
		{"empty body", base + urlsafe + "?secret=" + secret, "application/json", nil, nil, 400, ""},
		{"oversized body", base + urlsafe + "?secret=" + secret, "application/json", []byte(`{"x":"` + strings.Repeat("a", 1<<20) + `"}`), nil, 413, ""},
	}
	stored := 0
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, ans := apptest.Post(t, tt.url, tt.ctype, tt.body, tt.header)
			if status != tt.status {
				t.Fatalf("status %d %v, want %d", status, ans, tt.status)
			}
			if status != 202 {
				if ans["error"] == "" {
					t.Fatalf("error answer without a message: %v", ans)
				}
			} else {
				stored++
				var out struct {
					Events struct{ Edges []struct{ Node eventAnswer } }
				}
				g.MustDo(t, apptest.AuthA, `query($id: ID!, $a: String) { events(instanceId: $id, after: $a) { edges { node { id cursor payload } } } }`,
					map[string]any{"id": id, "a": cur(stored - 1)}, &out)
				if len(out.Events.Edges) != 1 || string(out.Events.Edges[0].Node.Payload) != tt.payload || out.Events.Edges[0].Node.ID != ans["id"] {
					t.Fatalf("stored %+v, want payload %s", out.Events.Edges, tt.payload)
				}
			}
			if n := eventCount(t, g, id); n != stored {
				t.Fatalf("%d events stored, want %d", n, stored)
			}
		})
	}
}

func TestConcurrentWebhooksGapFreeCursors(t *testing.T) {
	fm := fakeMarketo(t)
	g := apptest.Start(t, "", nil)
	id, hook := newInstance(t, g, apptest.AuthA, fullConfig(fm))
	const n = 200
	var wg sync.WaitGroup
	var mu sync.Mutex
	var cursors []int
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			status, ans := apptest.Post(t, hook, "application/json", []byte(fmt.Sprintf(`{"n":%d}`, i)), nil)
			if status != 202 {
				t.Errorf("status %d", status)
				return
			}
			var c int
			c, _ = strconv.Atoi(ans["cursor"])
			mu.Lock()
			cursors = append(cursors, c)
			mu.Unlock()
		}()
	}
	wg.Wait()
	sort.Ints(cursors)
	for i, c := range cursors {
		if c != i+1 {
			t.Fatalf("cursors are not 1..%d: position %d holds %d", n, i, c)
		}
	}
	var page struct {
		Events struct {
			Edges    []struct{ Cursor string }
			PageInfo struct {
				EndCursor   string
				HasNextPage bool
			}
		}
	}
	g.MustDo(t, apptest.AuthA, `query($id: ID!) { events(instanceId: $id, first: 150) { edges { cursor } pageInfo { endCursor hasNextPage } } }`, map[string]any{"id": id}, &page)
	if len(page.Events.Edges) != 150 || !page.Events.PageInfo.HasNextPage || page.Events.PageInfo.EndCursor != cur(150) {
		t.Fatalf("first page: %d edges, %+v", len(page.Events.Edges), page.Events.PageInfo)
	}
	if eventCount(t, g, id) != n {
		t.Fatalf("stored %d", eventCount(t, g, id))
	}
}

func TestReplayAcrossDisconnect(t *testing.T) {
	fm := fakeMarketo(t)
	g := apptest.Start(t, "", nil)
	id, hook := newInstance(t, g, apptest.AuthA, fullConfig(fm))
	post := func(i int) {
		if st, _ := apptest.Post(t, hook, "application/json", []byte(fmt.Sprintf(`{"n":%d}`, i)), nil); st != 202 {
			t.Fatalf("status %d", st)
		}
	}
	s := apptest.Subscribe(t, g.URL, "graphql-transport-ws", apptest.AuthA, subQuery, map[string]any{"id": id})
	g.WaitSubscriptions(t, 1)
	for i := 1; i <= 3; i++ {
		post(i)
	}
	var last string
	var live []eventAnswer
	for range 3 {
		e := nextEvent(t, s)
		live = append(live, e)
		last = e.Cursor
	}
	s.Close()
	// History says exactly what the live stream said.
	var hist struct {
		Events struct{ Edges []struct{ Node eventAnswer } }
	}
	g.MustDo(t, apptest.AuthA, `query($id: ID!) { events(instanceId: $id, first: 3) { edges { node { id cursor instanceId source eventType objectType occurredAt receivedAt payload } } } }`,
		map[string]any{"id": id}, &hist)
	for i, e := range hist.Events.Edges {
		if l := live[i]; e.Node.ID != l.ID || e.Node.ReceivedAt != l.ReceivedAt || e.Node.OccurredAt != l.OccurredAt || string(e.Node.Payload) != string(l.Payload) {
			t.Fatalf("stored %+v, live %+v", e.Node, l)
		}
	}
	g.WaitSubscriptions(t, 0)
	for i := 4; i <= 6; i++ { // while disconnected
		post(i)
	}
	for _, proto := range []string{"graphql-transport-ws", "sse"} {
		s2 := apptest.Subscribe(t, g.URL, proto, apptest.AuthA, subQuery, map[string]any{"id": id, "after": last})
		for want := 4; want <= 6; want++ {
			if e := nextEvent(t, s2); e.Cursor != cur(want) || string(e.Payload) != fmt.Sprintf(`{"n":%d}`, want) {
				t.Fatalf("%s replay: got %+v, want cursor %d", proto, e, want)
			}
		}
		s2.Close()
	}
	s3 := apptest.Subscribe(t, g.URL, "graphql-ws", apptest.AuthA, subQuery, map[string]any{"id": id, "after": "5"})
	if e := nextEvent(t, s3); e.Cursor != cur(6) {
		t.Fatalf("replay after 5: %+v", e)
	}
	post(7) // live after the replay, no gap, no duplicate
	if e := nextEvent(t, s3); e.Cursor != cur(7) {
		t.Fatalf("live after replay: %+v", e)
	}
}

func errCode(t *testing.T, m apptest.Message) string {
	t.Helper()
	if len(m.Errors) == 0 {
		t.Fatalf("expected an error, got %s", m.Raw)
	}
	var e struct{ Extensions map[string]any }
	_ = json.Unmarshal(m.Errors[0], &e)
	c, _ := e.Extensions["code"].(string)
	return c
}

func TestSubscriptionAuthAndTenancy(t *testing.T) {
	fm := fakeMarketo(t)
	g := apptest.Start(t, "", nil)
	authB := g.NewOrg(t, "B")
	id, hook := newInstance(t, g, apptest.AuthA, fullConfig(fm))

	for _, authz := range []string{"", "User x, Organization y"} {
		_, err := apptest.TrySubscribe(g.URL, "graphql-transport-ws", authz, subQuery, nil)
		if err == nil || !strings.Contains(err.Error(), "4401") {
			t.Fatalf("auth %q: %v, want close 4401", authz, err)
		}
	}
	if _, err := apptest.TrySubscribe(g.URL, "sse", "", subQuery, nil); err == nil || !strings.Contains(err.Error(), "401") {
		t.Fatalf("sse without auth: %v", err)
	}
	// B asking for A's instance is told it does not exist.
	sb := apptest.Subscribe(t, g.URL, "graphql-transport-ws", authB, subQuery, map[string]any{"id": id})
	if c := errCode(t, sb.Next(t, 5*time.Second)); c != "NOT_FOUND" {
		t.Fatalf("foreign instance: %s", c)
	}
	// B's organization-wide stream never carries A's events.
	wideB := apptest.Subscribe(t, g.URL, "graphql-transport-ws", authB, subQuery, nil)
	wideA := apptest.Subscribe(t, g.URL, "graphql-transport-ws", apptest.AuthA, subQuery, nil)
	g.WaitSubscriptions(t, 2)
	apptest.Post(t, hook, "application/json", []byte(`{"secret":"of A"}`), nil)
	if e := nextEvent(t, wideA); e.InstanceID != id {
		t.Fatalf("A's wide stream: %+v", e)
	}
	_, idB := newInstance(t, g, authB, fullConfig(fm))
	apptest.Post(t, idB, "application/json", []byte(`{"for":"B"}`), nil)
	if e := nextEvent(t, wideB); string(e.Payload) != `{"for":"B"}` {
		t.Fatalf("B's first event is %s: A's event leaked", e.Payload)
	}
}

func TestInstanceChangesTakeEffectAtOnce(t *testing.T) {
	fm := fakeMarketo(t)
	g := apptest.Start(t, "", nil)
	id, hook := newInstance(t, g, apptest.AuthA, fullConfig(fm))

	// A rotated secret refuses the old one at once.
	var rot struct{ RotateWebhookSecret instanceAnswer }
	g.MustDo(t, apptest.AuthA, `mutation($id: ID!) { rotateWebhookSecret(id: $id) { webhookUrl } }`, map[string]any{"id": id}, &rot)
	if st, _ := apptest.Post(t, hook, "application/json", []byte(`{}`), nil); st != 401 {
		t.Fatalf("old secret: %d", st)
	}
	hook = rot.RotateWebhookSecret.WebhookURL
	if st, _ := apptest.Post(t, hook, "application/json", []byte(`{}`), nil); st != 202 {
		t.Fatalf("new secret: %d", st)
	}

	// Disabling ends subscriptions with a reason and refuses webhooks.
	s := apptest.Subscribe(t, g.URL, "graphql-transport-ws", apptest.AuthA, subQuery, map[string]any{"id": id})
	g.WaitSubscriptions(t, 1)
	g.MustDo(t, apptest.AuthA, `mutation($id: ID!) { updateInstance(id: $id, input: {disabled: true}) { id } }`, map[string]any{"id": id}, nil)
	m := s.Next(t, 5*time.Second)
	if c := errCode(t, m); c != "SUBSCRIPTION_ENDED" || !strings.Contains(string(m.Raw), "disabled") {
		t.Fatalf("after disable: %s", m.Raw)
	}
	if st, _ := apptest.Post(t, hook, "application/json", []byte(`{}`), nil); st != 409 {
		t.Fatalf("disabled instance took a webhook: %d", st)
	}
	g.MustDo(t, apptest.AuthA, `mutation($id: ID!) { updateInstance(id: $id, input: {disabled: false}) { id } }`, map[string]any{"id": id}, nil)
	if st, _ := apptest.Post(t, hook, "application/json", []byte(`{}`), nil); st != 202 {
		t.Fatalf("re-enabled instance refused a webhook: %d", st)
	}

	// Deleting ends subscriptions and the receiver forgets the instance.
	s2 := apptest.Subscribe(t, g.URL, "sse", apptest.AuthA, subQuery, map[string]any{"id": id})
	g.WaitSubscriptions(t, 1)
	g.MustDo(t, apptest.AuthA, `mutation($id: ID!) { deleteInstance(id: $id) }`, map[string]any{"id": id}, nil)
	m = s2.Next(t, 5*time.Second)
	if c := errCode(t, m); c != "SUBSCRIPTION_ENDED" || !strings.Contains(string(m.Raw), "deleted") {
		t.Fatalf("after delete: %s", m.Raw)
	}
	if st, _ := apptest.Post(t, hook, "application/json", []byte(`{}`), nil); st != 404 {
		t.Fatalf("deleted instance: %d", st)
	}
}

// A subscriber that stops reading is ended with an error naming the last
// cursor it received; resuming from it loses nothing, and the publisher and
// the other subscribers never wait for it.
func TestSlowSubscriberResumes(t *testing.T) {
	fm := fakeMarketo(t)
	g := apptest.Start(t, "", map[string]string{"SUBSCRIPTION_BUFFER": "8"})
	id, hook := newInstance(t, g, apptest.AuthA, fullConfig(fm))
	slow := apptest.Subscribe(t, g.URL, "graphql-transport-ws", apptest.AuthA, subQuery, map[string]any{"id": id})
	fast := apptest.Subscribe(t, g.URL, "graphql-transport-ws", apptest.AuthA, subQuery, map[string]any{"id": id})
	g.WaitSubscriptions(t, 2)
	slow.Pause()
	// Post until the gateway has ended the stuck subscription: the socket's
	// buffers fill first, then the subscription's eight slots. Each batch
	// waits until the fast subscriber has it, so the fast one never has
	// more than two batches (eight events) queued however slow the machine
	// is: it keeps up by construction, not by being quick.
	big := strings.Repeat("x", 64<<10)
	const batch = 4
	n := 0
	for ; n < 600 && !g.HasSubscriptions(t, 1); n += batch {
		var wg sync.WaitGroup
		for i := n + 1; i <= n+batch; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if st, _ := apptest.Post(t, hook, "application/json", []byte(fmt.Sprintf(`{"n":%d,"pad":"%s"}`, i, big)), nil); st != 202 {
					t.Errorf("status %d", st)
				}
			}()
		}
		wg.Wait()
		// The fast subscriber gets every event, in order. Once it has an
		// event, the broker has offered it to the slow one too.
		for i := n + 1; i <= n+batch; i++ {
			if e := nextEvent(t, fast); e.Cursor != cur(i) {
				t.Fatalf("fast subscriber: cursor %s, want %d", e.Cursor, i)
			}
		}
	}
	if !g.HasSubscriptions(t, 1) {
		t.Fatalf("after %d events the stuck subscriber is still live", n)
	}
	t.Logf("the stuck subscriber was ended after %d events", n)
	slow.Resume()
	var last string
	var ended apptest.Message
	for {
		m := slow.Next(t, 10*time.Second)
		if len(m.Errors) > 0 || m.Done {
			ended = m
			break
		}
		var d struct{ MarketoEvents eventAnswer }
		_ = json.Unmarshal(m.Data, &d)
		last = d.MarketoEvents.Cursor
	}
	var e struct{ Extensions map[string]any }
	if len(ended.Errors) == 0 {
		t.Fatalf("slow subscriber was not ended with an error: %s", ended.Raw)
	}
	_ = json.Unmarshal(ended.Errors[0], &e)
	if e.Extensions["code"] != "SLOW_SUBSCRIBER" || e.Extensions["lastCursor"] != last || last == "" {
		t.Fatalf("ended with %s after cursor %q", ended.Raw, last)
	}
	resumed := apptest.Subscribe(t, g.URL, "graphql-transport-ws", apptest.AuthA, subQuery, map[string]any{"id": id, "after": last})
	var lastN int
	lastN, _ = strconv.Atoi(last)
	for want := lastN + 1; want <= n; want++ {
		if got := nextEvent(t, resumed); got.Cursor != cur(want) {
			t.Fatalf("resumed: cursor %s, want %d", got.Cursor, want)
		}
	}
}

// The Authorization header on the websocket upgrade works like the one in
// connection_init.
func TestWebsocketUpgradeHeaderAuth(t *testing.T) {
	g := apptest.Start(t, "", nil)
	for _, tt := range []struct {
		authz string
		want  string
	}{
		{apptest.AuthA, "connection_ack"},
		{"User x, Organization y", "close 4401"},
	} {
		d := websocket.Dialer{Subprotocols: []string{"graphql-transport-ws"}}
		conn, _, err := d.Dial(strings.Replace(g.URL, "http", "ws", 1)+"/graphql", http.Header{"Authorization": {tt.authz}})
		if err != nil {
			t.Fatal(err)
		}
		if err := conn.WriteJSON(map[string]any{"type": "connection_init"}); err != nil {
			t.Fatal(err)
		}
		got := ""
		for got == "" {
			var m struct{ Type string }
			conn.SetReadDeadline(time.Now().Add(5 * time.Second))
			if err := conn.ReadJSON(&m); err != nil {
				var ce *websocket.CloseError
				if errors.As(err, &ce) {
					got = fmt.Sprint("close ", ce.Code)
				} else {
					t.Fatal(err)
				}
			} else if m.Type != "connection_error" {
				got = m.Type
			}
		}
		conn.Close()
		if got != tt.want {
			t.Fatalf("auth %q: %s, want %s", tt.authz, got, tt.want)
		}
	}
}
