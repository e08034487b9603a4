package subscribe_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/leadstream/leadstream/internal/app/apptest"
	"github.com/leadstream/leadstream/internal/events"
	"github.com/leadstream/leadstream/internal/marketo/marketotest"
	"github.com/leadstream/leadstream/internal/store"
)

// The websocket transport driven frame by frame against the running
// gateway. The real JS clients (graphql-ws, subscriptions-transport-ws)
// are in internal/e2e; the event pipeline (replay, slow subscribers,
// tenancy, instance changes) in internal/app.

const (
	wideSub = `subscription { marketoEvents { cursor payload } }`
	query   = `{ connectors { key } }`
)

// client is one raw websocket.
type client struct {
	t  *testing.T
	ws *websocket.Conn
}

func dial(t *testing.T, g *apptest.Gateway, proto string, header http.Header) *client {
	t.Helper()
	d := websocket.Dialer{Subprotocols: []string{proto}, HandshakeTimeout: 5 * time.Second}
	ws, resp, err := d.Dial(strings.Replace(g.URL, "http", "ws", 1)+"/graphql", header)
	if err != nil {
		t.Fatal(err)
	}
	if got := resp.Header.Get("Sec-Websocket-Protocol"); got != proto {
		t.Fatalf("negotiated %q, want %q", got, proto)
	}
	t.Cleanup(func() { ws.Close() })
	return &client{t: t, ws: ws}
}

func (c *client) send(v any) {
	c.t.Helper()
	var err error
	if s, ok := v.(string); ok {
		err = c.ws.WriteMessage(websocket.TextMessage, []byte(s))
	} else {
		err = c.ws.WriteJSON(v)
	}
	if err != nil {
		c.t.Fatal(err)
	}
}

type frame struct {
	ID      string          `json:"id"`
	Type    string          `json:"type"`
	Payload json.RawMessage `json:"payload"`
}

// next reads one message, or returns the close code (or -1) it ended with.
func (c *client) next(d time.Duration) (frame, int, string) {
	c.t.Helper()
	_ = c.ws.SetReadDeadline(time.Now().Add(d))
	_, b, err := c.ws.ReadMessage()
	if err != nil {
		var ce *websocket.CloseError
		if errors.As(err, &ce) {
			return frame{}, ce.Code, ce.Text
		}
		c.t.Fatalf("read: %v", err)
	}
	var f frame
	if err := json.Unmarshal(b, &f); err != nil {
		c.t.Fatalf("not JSON: %s", b)
	}
	return f, 0, ""
}

// expect reads until a message of type typ, skipping keep-alives.
func (c *client) expect(typ string) frame {
	c.t.Helper()
	for {
		f, code, why := c.next(5 * time.Second)
		if code != 0 {
			c.t.Fatalf("closed %d %q, waiting for %s", code, why, typ)
		}
		if f.Type != typ && (f.Type == "ka" || f.Type == "ping" || f.Type == "pong") {
			continue
		}
		if f.Type != typ {
			c.t.Fatalf("got %s %s, want %s", f.Type, f.Payload, typ)
		}
		return f
	}
}

// closed reads until the socket closes and returns its code and reason.
func (c *client) closed(d time.Duration) (int, string) {
	c.t.Helper()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		f, code, why := c.next(time.Until(deadline))
		if code != 0 {
			return code, why
		}
		c.t.Logf("before the close: %s %s", f.Type, f.Payload)
	}
	c.t.Fatal("not closed")
	return 0, ""
}

func (c *client) init(authz string) {
	c.t.Helper()
	c.send(map[string]any{"type": "connection_init", "payload": map[string]any{"Authorization": authz}})
	c.expect("connection_ack")
}

func subscribeMsg(legacy bool, id, q string, vars map[string]any) map[string]any {
	typ := "subscribe"
	if legacy {
		typ = "start"
	}
	return map[string]any{"id": id, "type": typ, "payload": map[string]any{"query": q, "variables": vars}}
}

func errorCode(t *testing.T, payload json.RawMessage) string {
	t.Helper()
	var errs []struct {
		Message    string
		Extensions map[string]any
	}
	var res struct {
		Errors []struct {
			Message    string
			Extensions map[string]any
		}
	}
	if json.Unmarshal(payload, &errs) != nil {
		if err := json.Unmarshal(payload, &res); err != nil {
			t.Fatalf("payload %s", payload)
		}
		errs = res.Errors
	}
	if len(errs) == 0 {
		t.Fatalf("no error in %s", payload)
	}
	c, _ := errs[0].Extensions["code"].(string)
	return c + ": " + errs[0].Message
}

// TestCloseCodes: every way a connection is closed, for each protocol.
func TestCloseCodes(t *testing.T) {
	g := apptest.Start(t, "", map[string]string{"WEBSOCKET_INIT_TIMEOUT": "300ms"})
	tests := []struct {
		name   string
		proto  string
		steps  func(c *client)
		code   int
		reason string // contained in the reason
		before string // a message type that must come before the close ("" none)
	}{
		{"not JSON", "graphql-transport-ws", func(c *client) { c.send("{nope") }, 4400, "invalid message", ""},
		{"no type", "graphql-transport-ws", func(c *client) { c.send(`{"id":"1"}`) }, 4400, "invalid message", ""},
		{"unknown type", "graphql-transport-ws", func(c *client) { c.send(`{"type":"start","id":"1"}`) }, 4400, "invalid message type", ""},
		{"subscribe without an id", "graphql-transport-ws", func(c *client) {
			c.init(apptest.AuthA)
			c.send(subscribeMsg(false, "", wideSub, nil))
		}, 4400, "id", ""},
		{"connection_init payload not an object", "graphql-transport-ws", func(c *client) {
			c.send(`{"type":"connection_init","payload":"x"}`)
		}, 4400, "not an object", ""},
		{"subscribe payload not an object", "graphql-transport-ws", func(c *client) {
			c.init(apptest.AuthA)
			c.send(`{"id":"1","type":"subscribe","payload":"x"}`)
		}, 4400, "invalid subscribe payload", ""},
		{"legacy message type", "graphql-transport-ws", func(c *client) {
			c.init(apptest.AuthA)
			c.send(subscribeMsg(true, "1", wideSub, nil))
		}, 4400, `invalid message type "start"`, ""},
		{"subscribe before connection_init", "graphql-transport-ws", func(c *client) { c.send(subscribeMsg(false, "1", wideSub, nil)) }, 4401, "Unauthorized", ""},
		{"wrong credentials", "graphql-transport-ws", func(c *client) {
			c.send(map[string]any{"type": "connection_init", "payload": map[string]any{"Authorization": "User x, Organization y"}})
		}, 4401, "Unauthorized", ""},
		{"no credentials", "graphql-transport-ws", func(c *client) { c.send(`{"type":"connection_init"}`) }, 4401, "Unauthorized", ""},
		{"no connection_init in time", "graphql-transport-ws", func(*client) {}, 4408, "initialisation timeout", ""},
		{"second connection_init", "graphql-transport-ws", func(c *client) {
			c.init(apptest.AuthA)
			c.send(map[string]any{"type": "connection_init", "payload": map[string]any{"Authorization": apptest.AuthA}})
		}, 4429, "Too many initialisation requests", ""},
		{"id in use", "graphql-transport-ws", func(c *client) {
			c.init(apptest.AuthA)
			c.send(subscribeMsg(false, "a", wideSub, nil))
			g.WaitSubscriptions(t, 1)
			c.send(subscribeMsg(false, "a", wideSub, nil))
		}, 4409, "Subscriber for a already exists", ""},
		{"legacy: unknown type", "graphql-ws", func(c *client) { c.send(`{"type":"subscribe","id":"1"}`) }, 4400, "invalid message type", "connection_error"},
		{"legacy: not JSON", "graphql-ws", func(c *client) { c.send("{nope") }, 4400, "invalid message", "connection_error"},
		{"legacy: ping is not its message", "graphql-ws", func(c *client) {
			c.init(apptest.AuthA)
			c.send(`{"type":"ping"}`)
		}, 4400, `invalid message type "ping"`, "connection_error"},
		{"legacy: start without an id", "graphql-ws", func(c *client) {
			c.init(apptest.AuthA)
			c.send(subscribeMsg(true, "", wideSub, nil))
		}, 4400, "id", "connection_error"},
		{"legacy: no credentials", "graphql-ws", func(c *client) { c.send(`{"type":"connection_init"}`) }, 4401, "Unauthorized", "connection_error"},
		{"legacy: start before connection_init", "graphql-ws", func(c *client) { c.send(subscribeMsg(true, "1", wideSub, nil)) }, 4401, "Unauthorized", ""},
		{"legacy: wrong credentials", "graphql-ws", func(c *client) {
			c.send(map[string]any{"type": "connection_init", "payload": map[string]any{"Authorization": "User x, Organization y"}})
		}, 4401, "Unauthorized", "connection_error"},
		{"legacy: no connection_init in time", "graphql-ws", func(*client) {}, 4408, "initialisation timeout", ""},
		{"legacy: connection_terminate", "graphql-ws", func(c *client) {
			c.init(apptest.AuthA)
			c.send(`{"type":"connection_terminate"}`)
		}, 1000, "terminated", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := dial(t, g, tt.proto, nil)
			c.t = t
			start := time.Now()
			tt.steps(c)
			if tt.before != "" {
				c.expect(tt.before)
			}
			code, why := c.closed(5 * time.Second)
			if code != tt.code || !strings.Contains(why, tt.reason) {
				t.Fatalf("closed %d %q, want %d with %q", code, why, tt.code, tt.reason)
			}
			if tt.code == 4408 && time.Since(start) < 250*time.Millisecond { // the server counts from the upgrade
				t.Fatalf("init timeout after %v, before the 300ms allowed", time.Since(start))
			}
		})
	}
	g.WaitSubscriptions(t, 0)
}

func TestConnectionCapAndShutdown(t *testing.T) {
	g := apptest.Start(t, "", map[string]string{"WEBSOCKETS_PER_ORGANIZATION": "1"})
	// The organization's cap: one connection (WEBSOCKETS_PER_ORGANIZATION=1);
	// a second is refused with 4429 and LIMIT_EXCEEDED, for both protocols,
	// and a connection closing frees its place.
	first := dial(t, g, "graphql-transport-ws", nil)
	first.init(apptest.AuthA)
	for _, proto := range []string{"graphql-transport-ws", "graphql-ws"} {
		c := dial(t, g, proto, nil)
		c.send(map[string]any{"type": "connection_init", "payload": map[string]any{"Authorization": apptest.AuthA}})
		if proto == "graphql-ws" {
			if f := c.expect("connection_error"); !strings.Contains(string(f.Payload), "LIMIT_EXCEEDED") {
				t.Fatalf("%s: connection_error %s", proto, f.Payload)
			}
		}
		if code, why := c.closed(5 * time.Second); code != 4429 || !strings.Contains(why, "LIMIT_EXCEEDED") || !strings.Contains(why, "WEBSOCKETS_PER_ORGANIZATION") {
			t.Fatalf("%s: second connection closed %d %q, want 4429 LIMIT_EXCEEDED naming the limit", proto, code, why)
		}
	}
	// Another organization is not affected.
	other := dial(t, g, "graphql-transport-ws", nil)
	other.init(g.NewOrg(t, "B"))
	first.ws.Close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		c := dial(t, g, "graphql-transport-ws", nil)
		c.send(map[string]any{"type": "connection_init", "payload": map[string]any{"Authorization": apptest.AuthA}})
		f, code, _ := c.next(5 * time.Second)
		if f.Type == "connection_ack" {
			break
		}
		if code != 4429 || time.Now().After(deadline) {
			t.Fatalf("after the first connection closed: %v %d", f, code)
		}
	}

	// Shutdown closes with 4499, both protocols.
	c := dial(t, g, "graphql-transport-ws", http.Header{"Authorization": {g.NewOrg(t, "C")}})
	c.init("")
	legacy := dial(t, g, "graphql-ws", nil)
	legacy.init(g.NewOrg(t, "D"))
	stopped := make(chan struct{})
	go func() { g.Stop(); close(stopped) }()
	for _, c := range []*client{c, legacy} {
		if code, why := c.closed(10 * time.Second); code != 4499 || !strings.Contains(why, "shutting down") {
			t.Fatalf("at shutdown: closed %d %q, want 4499", code, why)
		}
	}
	<-stopped
}

// TestKeepAlive: pings answered, pings sent from the shared timer, ka for
// the legacy protocol, and a graphql-transport-ws peer that never answers
// is dropped.
func TestKeepAlive(t *testing.T) {
	g := apptest.Start(t, "", map[string]string{"WEBSOCKET_KEEPALIVE": "100ms"})

	c := dial(t, g, "graphql-transport-ws", nil)
	c.send(`{"type":"ping"}`) // allowed before connection_init
	if f, _, _ := c.next(5 * time.Second); f.Type != "pong" {
		t.Fatalf("ping answered with %+v", f)
	}
	c.init(apptest.AuthA)
	c.send(`{"type":"pong"}`) // unsolicited: fine
	pings := 0
	for pings < 5 {
		f, code, why := c.next(5 * time.Second)
		if code != 0 {
			t.Fatalf("closed %d %q while answering pings", code, why)
		}
		if f.Type == "ping" {
			pings++
			c.send(`{"type":"pong"}`)
		}
	}

	c.send(map[string]any{"id": "q", "type": "subscribe", "payload": map[string]any{"query": query}})
	c.expect("next")

	legacy := dial(t, g, "graphql-ws", nil)
	legacy.init(apptest.AuthA)
	for range 3 {
		legacy.expect("ka")
	}
	// The legacy protocol acknowledges a second connection_init (graphql-
	// transport-ws closes with 4429: TestCloseCodes).
	legacy.init(apptest.AuthA)

	// Never answering: closed after eight intervals without a word.
	silent := dial(t, g, "graphql-transport-ws", nil)
	silent.init(apptest.AuthA)
	start := time.Now()
	code, why := silent.closed(5 * time.Second)
	if code != 4499 || !strings.Contains(why, "pings") || time.Since(start) < 700*time.Millisecond {
		t.Fatalf("silent peer closed %d %q after %v", code, why, time.Since(start))
	}
}

// TestOperationsOverTheSocket: queries, mutations, errors, complete and the
// cap on subscriptions per connection, on both protocols.
func TestOperationsOverTheSocket(t *testing.T) {
	fm := marketotest.New()
	t.Cleanup(fm.Close)
	g := apptest.Start(t, "", map[string]string{"SUBSCRIPTIONS_PER_CONNECTION": "2"})
	for _, proto := range []string{"graphql-transport-ws", "graphql-ws"} {
		t.Run(proto, func(t *testing.T) {
			legacy := proto == "graphql-ws"
			next := "next"
			if legacy {
				next = "data"
			}
			c := dial(t, g, proto, nil)
			c.t = t
			c.init(apptest.AuthA)

			c.send(subscribeMsg(legacy, "q", query, nil))
			if f := c.expect(next); f.ID != "q" || !strings.Contains(string(f.Payload), `"key":"marketo"`) {
				t.Fatalf("query answered %s", f.Payload)
			}
			if f := c.expect("complete"); f.ID != "q" {
				t.Fatalf("complete for %q", f.ID)
			}
			c.send(subscribeMsg(legacy, "m", `mutation($in: OAuthUrlInput!) { oauthUrl(input: $in) { oauthUrl } }`,
				map[string]any{"in": map[string]any{"callbackUrl": "https://app.example.com/cb"}}))
			if f := c.expect(next); !strings.Contains(string(f.Payload), "/oauth/marketo/authorize?request=") {
				t.Fatalf("mutation answered %s", f.Payload)
			}
			c.expect("complete")

			// Invalid operations are refused before execution.
			c.send(subscribeMsg(legacy, "bad", `{ nope }`, nil))
			if f := c.expect("error"); f.ID != "bad" || !strings.HasPrefix(errorCode(t, f.Payload), "GRAPHQL_VALIDATION_FAILED") {
				t.Fatalf("invalid query: %s", f.Payload)
			}
			// A stream that cannot start: one result with the error, then complete.
			c.send(subscribeMsg(legacy, "nf", `subscription { marketoEvents(instanceId: "nope") { cursor } }`, nil))
			if f := c.expect(next); !strings.HasPrefix(errorCode(t, f.Payload), "NOT_FOUND") {
				t.Fatalf("unknown instance: %s", f.Payload)
			}
			c.expect("complete")

			// Two subscriptions are allowed here, the third is refused and the
			// connection lives on.
			c.send(subscribeMsg(legacy, "s1", wideSub, nil))
			c.send(subscribeMsg(legacy, "s2", wideSub, nil))
			g.WaitSubscriptions(t, 2)
			c.send(subscribeMsg(legacy, "s3", wideSub, nil))
			f := c.expect("error")
			if code := errorCode(t, f.Payload); f.ID != "s3" || !strings.HasPrefix(code, "LIMIT_EXCEEDED") || !strings.Contains(code, "SUBSCRIPTIONS_PER_CONNECTION") {
				t.Fatalf("third subscription: %s %s", f.ID, f.Payload)
			}
			stop := map[string]any{"id": "s1", "type": "complete"}
			if legacy {
				stop["type"] = "stop"
			}
			c.send(stop)
			g.WaitSubscriptions(t, 1)
			c.send(subscribeMsg(legacy, "s3", wideSub, nil))
			g.WaitSubscriptions(t, 2)
			if legacy {
				// The legacy protocol replaces an operation started again under its id.
				c.send(subscribeMsg(legacy, "s3", wideSub, nil))
				c.send(subscribeMsg(legacy, "q2", query, nil))
				c.expect(next)
				c.expect("complete")
				g.WaitSubscriptions(t, 2)
			}
			c.ws.Close()
			g.WaitSubscriptions(t, 0)
		})
	}
}

// TestOneGoroutinePerIdleConnection: idle subscriptions cost the server
// their connection's reader and nothing else (the gateway runs in this
// process; the raw clients here start no goroutine).
func TestOneGoroutinePerIdleConnection(t *testing.T) {
	g := apptest.Start(t, "", nil)
	warm := dial(t, g, "graphql-transport-ws", nil)
	warm.init(apptest.AuthA)
	warm.send(subscribeMsg(false, "1", wideSub, nil))
	g.WaitSubscriptions(t, 1)
	before := settledGoroutines()
	const n = 50
	for i := range n {
		c := dial(t, g, "graphql-transport-ws", nil)
		c.init(apptest.AuthA)
		c.send(subscribeMsg(false, fmt.Sprint(i), wideSub, nil))
	}
	g.WaitSubscriptions(t, n+1)
	after := settledGoroutines()
	if per := float64(after-before) / n; per > 1.05 {
		t.Fatalf("%d goroutines for %d idle subscriptions (%.2f each), want at most 1 each", after-before, n, per)
	}
}

// TestCaughtUpSubscriptionsCostNoGoroutine: a subscription with after has a
// goroutine while it replays; once caught up it costs its connection's
// reader and nothing else, and takes live events like any other.
func TestCaughtUpSubscriptionsCostNoGoroutine(t *testing.T) {
	fm := marketotest.New()
	t.Cleanup(fm.Close)
	fm.AddClient("cid", "csecret")
	g := apptest.Start(t, "", nil)
	var out struct {
		CreateInstance struct{ ID, WebhookURL string }
	}
	g.MustDo(t, apptest.AuthA, `mutation($in: CreateInstanceInput!) { createInstance(input: $in) { id webhookUrl } }`, map[string]any{"in": map[string]any{
		"connector": map[string]any{"key": "marketo"}, "name": "replay", "configuration": map[string]any{
			"oauth.api.key": "cid", "oauth.api.secret": "csecret",
			"marketo.identity.url": fm.IdentityURL(), "marketo.rest.url": fm.RESTURL(),
		}}}, &out)
	post := func(i int) {
		t.Helper()
		if st, _ := apptest.Post(t, out.CreateInstance.WebhookURL, "application/json", []byte(fmt.Sprintf(`{"n":%d}`, i)), nil); st != 202 {
			t.Fatalf("webhook: status %d", st)
		}
	}
	for i := 1; i <= 3; i++ {
		post(i)
	}
	q := `subscription($after: String) { marketoEvents(after: $after) { cursor } }`
	after := map[string]any{"after": events.FormatCursor(1)}
	replayed := func(c *client, from, to int) {
		t.Helper()
		for want := from; want <= to; want++ {
			f := c.expect("next")
			var p struct {
				Data struct{ MarketoEvents struct{ Cursor string } }
			}
			if err := json.Unmarshal(f.Payload, &p); err != nil || p.Data.MarketoEvents.Cursor != events.FormatCursor(int64(want)) {
				t.Fatalf("got %s, want cursor %d", f.Payload, want)
			}
		}
	}
	warm := dial(t, g, "graphql-transport-ws", nil)
	warm.init(apptest.AuthA)
	warm.send(subscribeMsg(false, "1", q, after))
	replayed(warm, 2, 3)
	g.WaitSubscriptions(t, 1)
	before := settledGoroutines()
	const n = 50
	var clients []*client
	for i := range n {
		c := dial(t, g, "graphql-transport-ws", nil)
		c.init(apptest.AuthA)
		c.send(subscribeMsg(false, fmt.Sprint(i), q, after))
		clients = append(clients, c)
	}
	for _, c := range clients {
		replayed(c, 2, 3)
	}
	g.WaitSubscriptions(t, n+1)
	if got := settledGoroutines(); float64(got-before)/n > 1.05 {
		t.Fatalf("%d goroutines for %d caught-up subscriptions, want at most 1 each (their readers)", got-before, n)
	}
	post(4)
	for _, c := range append(clients, warm) {
		replayed(c, 4, 4)
	}
}

// settledGoroutines waits until the goroutine count stops moving.
func settledGoroutines() int {
	prev, stable := -1, 0
	deadline := time.Now().Add(5 * time.Second)
	for stable < 5 && time.Now().Before(deadline) {
		n := runtime.NumGoroutine()
		if n == prev {
			stable++
		} else {
			stable = 0
		}
		prev = n
		time.Sleep(20 * time.Millisecond)
	}
	return prev
}

// TestEndedByInstanceLogsNoError: disabling or deleting an instance ends its
// subscriptions (websocket and SSE) with SUBSCRIPTION_ENDED, which is not a
// failure of the gateway and logs no ERROR.
func TestEndedByInstanceLogsNoError(t *testing.T) {
	fm := marketotest.New()
	t.Cleanup(fm.Close)
	fm.AddClient("cid", "csecret")
	g := apptest.Start(t, "", nil)
	newInstance := func() string {
		var out struct{ CreateInstance struct{ ID string } }
		g.MustDo(t, apptest.AuthA, `mutation($in: CreateInstanceInput!) { createInstance(input: $in) { id } }`, map[string]any{"in": map[string]any{
			"connector": map[string]any{"key": "marketo"}, "name": "ended", "configuration": map[string]any{
				"oauth.api.key": "cid", "oauth.api.secret": "csecret",
				"marketo.identity.url": fm.IdentityURL(), "marketo.rest.url": fm.RESTURL(),
			}}}, &out)
		return out.CreateInstance.ID
	}
	q := `subscription($id: ID) { marketoEvents(instanceId: $id) { cursor } }`
	for _, tt := range []struct{ proto, mutation, why string }{
		{"graphql-transport-ws", `mutation($id: ID!) { updateInstance(id: $id, input: {disabled: true}) { id } }`, "disabled"},
		{"graphql-ws", `mutation($id: ID!) { deleteInstance(id: $id) }`, "deleted"},
		{"sse", `mutation($id: ID!) { deleteInstance(id: $id) }`, "deleted"},
	} {
		id := newInstance()
		s := apptest.Subscribe(t, g.URL, tt.proto, apptest.AuthA, q, map[string]any{"id": id})
		g.WaitSubscriptions(t, 1)
		g.MustDo(t, apptest.AuthA, tt.mutation, map[string]any{"id": id}, nil)
		m := s.Next(t, 5*time.Second)
		if len(m.Errors) == 0 || !strings.Contains(string(m.Errors[0]), "SUBSCRIPTION_ENDED") || !strings.Contains(string(m.Errors[0]), tt.why) {
			t.Fatalf("%s: %s", tt.proto, m.Raw)
		}
		if tt.proto != "sse" { // SSE ends the response
			if m := s.Next(t, 5*time.Second); !m.Done {
				t.Fatalf("%s: after the error: %s, want complete", tt.proto, m.Raw)
			}
		}
		g.WaitSubscriptions(t, 0)
	}
	if logs := g.Logs.String(); strings.Contains(logs, "level=ERROR") {
		t.Fatalf("ending subscriptions logged errors:\n%s", logs)
	}
}

// TestStoreOutageCloses4500: 4500 is an internal failure, and the one that
// closes a socket is connection_init's credentials lookup failing (here the
// store, an external FerretDB, is gone); the legacy protocol gets a
// connection_error first. Credentials are not refused: the client may retry.
func TestStoreOutageCloses4500(t *testing.T) {
	uri, stop, err := store.StartEmbedded(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			stop()
		}
	})
	// A short server selection, so a lookup fails fast once the store is gone.
	g := apptest.Start(t, "", map[string]string{"MONGODB_URI": uri + "?serverSelectionTimeoutMS=300", "MONGODB_DATABASE": "ls_outage",
		"SECRET_KEY": "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="})
	stop()
	stopped = true
	for _, proto := range []string{"graphql-transport-ws", "graphql-ws"} {
		c := dial(t, g, proto, nil)
		c.t = t
		// Credentials never seen, so not remembered: they must be looked up.
		c.send(map[string]any{"type": "connection_init", "payload": map[string]any{"Authorization": "User usr_" + proto + ", Organization org_" + proto}})
		if proto == "graphql-ws" {
			if f := c.expect("connection_error"); !strings.Contains(string(f.Payload), "INTERNAL") {
				t.Fatalf("%s: connection_error %s", proto, f.Payload)
			}
		}
		if code, why := c.closed(10 * time.Second); code != 4500 || why != "internal error" {
			t.Fatalf("%s: closed %d %q, want 4500 internal error", proto, code, why)
		}
	}
	if !strings.Contains(g.Logs.String(), "websocket auth") {
		t.Fatal("the failure is not in the log")
	}
}
