package app_test

import (
	"context"
	"errors"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/leadstream/leadstream/internal/app/apptest"
)

// Caps on streams answer LIMIT_EXCEEDED naming the limit; others'
// streams and the refused connection's other subscriptions are untouched.
func TestStreamCaps(t *testing.T) {
	fm := fakeMarketo(t)
	g := apptest.Start(t, "", map[string]string{
		"SSE_PER_ORGANIZATION": "2", "WEBSOCKETS_PER_ORGANIZATION": "2", "SUBSCRIPTIONS_PER_CONNECTION": "3",
	})
	id, hook := newInstance(t, g, apptest.AuthA, fullConfig(fm))
	vars := map[string]any{"id": id}
	authB := g.NewOrg(t, "capsB")

	sse1 := apptest.Subscribe(t, g.URL, "sse", apptest.AuthA, subQuery, vars)
	apptest.Subscribe(t, g.URL, "sse", apptest.AuthA, subQuery, vars)
	if _, err := apptest.TrySubscribe(g.URL, "sse", apptest.AuthA, subQuery, vars); err == nil || !strings.Contains(err.Error(), "429") {
		t.Fatalf("third SSE stream: %v", err)
	}
	apptest.Subscribe(t, g.URL, "sse", authB, subQuery, nil)
	sse1.Close()
	waitFor(t, "an SSE place to free up", func() bool {
		s, err := apptest.TrySubscribe(g.URL, "sse", apptest.AuthA, subQuery, vars)
		if err == nil {
			t.Cleanup(s.Close)
		}
		return err == nil
	})

	ws1 := apptest.Subscribe(t, g.URL, "graphql-transport-ws", apptest.AuthA, subQuery, vars)
	apptest.Subscribe(t, g.URL, "graphql-transport-ws", apptest.AuthA, subQuery, vars)
	_, err := apptest.TrySubscribe(g.URL, "graphql-transport-ws", apptest.AuthA, subQuery, vars)
	var ce *websocket.CloseError
	if !errors.As(err, &ce) || ce.Code != 4429 || !strings.Contains(ce.Text, "WEBSOCKETS_PER_ORGANIZATION") {
		t.Fatalf("third websocket: %v", err)
	}
	apptest.Subscribe(t, g.URL, "graphql-transport-ws", authB, subQuery, nil)

	// Three more on ws1: two are taken, one is refused alone (the
	// transport starts them concurrently, so which one is not fixed).
	for _, sid := range []string{"2", "3", "4"} {
		if err := ws1.Conn.WriteJSON(map[string]any{"id": sid, "type": "subscribe", "payload": map[string]any{"query": subQuery, "variables": vars}}); err != nil {
			t.Fatal(err)
		}
	}
	m := ws1.Next(t, 10*time.Second)
	if !strings.Contains(string(m.Raw), "SUBSCRIPTIONS_PER_CONNECTION") || !strings.Contains(string(m.Raw), "LIMIT_EXCEEDED") {
		t.Fatalf("fourth subscription: %s", m.Raw)
	}
	live := []string{"1"}
	for _, sid := range []string{"2", "3", "4"} {
		if !strings.Contains(string(m.Raw), `"id":"`+sid+`"`) {
			live = append(live, sid)
		}
	}
	g.WaitSubscriptions(t, 8) // SSE: 2 of A, 1 of B; websockets: 3 on ws1, 1 on ws2, 1 of B

	if status, _ := apptest.Post(t, hook, "application/json", []byte(`{"n":1}`), nil); status != http.StatusAccepted {
		t.Fatalf("webhook %d", status)
	}
	seen := map[string]bool{}
	for len(seen) < 3 {
		m := ws1.Next(t, 10*time.Second)
		for _, sid := range live {
			if strings.Contains(string(m.Raw), `"id":"`+sid+`"`) && strings.Contains(string(m.Raw), `"type":"next"`) {
				seen[sid] = true
			}
		}
	}
}

// Failed authentication is counted per address: past the threshold that
// address gets 429 with Retry-After, even with the right credentials, while
// the right credentials from another address still work.
func TestFailedAuthThrottled(t *testing.T) {
	g := apptest.Start(t, "", map[string]string{"AUTH_FAILURES_PER_ADDRESS": "5"})
	from := func(ip string) *http.Client {
		d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
		return &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, n, a string) (net.Conn, error) {
			return d.DialContext(ctx, n, a)
		}}}
	}
	ask := func(c *http.Client, authz string) *http.Response {
		req, _ := http.NewRequest(http.MethodPost, g.URL+"/graphql", strings.NewReader(`{"query":"{ connectors { key } }"}`))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", authz)
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp
	}
	attacker, other := from("127.0.0.1"), from("127.0.0.2")
	wrong := "User " + apptest.UserSecret + ", Organization org_wrong_wrong_wrong"
	for i := range 5 {
		if resp := ask(attacker, wrong); resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("failure %d: %d", i+1, resp.StatusCode)
		}
	}
	for _, authz := range []string{wrong, apptest.AuthA} {
		resp := ask(attacker, authz)
		if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" {
			t.Fatalf("after 5 failures: %d, Retry-After %q", resp.StatusCode, resp.Header.Get("Retry-After"))
		}
	}
	if resp := ask(other, apptest.AuthA); resp.StatusCode != http.StatusOK {
		t.Fatalf("the right credentials from another address: %d", resp.StatusCode)
	}
	// REST counts and refuses the same way.
	req, _ := http.NewRequest(http.MethodGet, g.URL+"/instances", nil)
	req.Header.Set("Authorization", apptest.AuthA)
	resp, err := attacker.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("REST from the throttled address: %d", resp.StatusCode)
	}
	// A throttled address is refused before the websocket upgrade.
	d := websocket.Dialer{HandshakeTimeout: 5 * time.Second}
	_, resp, err = d.Dial(strings.Replace(g.URL, "http", "ws", 1)+"/graphql", nil)
	if !errors.Is(err, websocket.ErrBadHandshake) || resp == nil || resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("websocket from the throttled address: %v", err)
	}
}

// Wrong credentials in websocket connection_init count as failed
// authentications of the address too: past the threshold a socket opened
// earlier is closed 4429 at its connection_init (both protocols), a new
// upgrade is refused 429 with Retry-After, and the right credentials from
// another address still get a connection.
func TestFailedWebsocketInitThrottled(t *testing.T) {
	g := apptest.Start(t, "", map[string]string{"AUTH_FAILURES_PER_ADDRESS": "3"})
	wsURL := strings.Replace(g.URL, "http", "ws", 1) + "/graphql"
	dialFrom := func(ip, proto string) (*websocket.Conn, *http.Response, error) {
		nd := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
		d := websocket.Dialer{HandshakeTimeout: 5 * time.Second, Subprotocols: []string{proto}, NetDialContext: nd.DialContext}
		ws, resp, err := d.Dial(wsURL, nil)
		if ws != nil {
			t.Cleanup(func() { ws.Close() })
		}
		return ws, resp, err
	}
	mustDial := func(ip, proto string) *websocket.Conn {
		ws, _, err := dialFrom(ip, proto)
		if err != nil {
			t.Fatalf("dial from %s: %v", ip, err)
		}
		return ws
	}
	initWith := func(ws *websocket.Conn, authz string) {
		if err := ws.WriteJSON(map[string]any{"type": "connection_init", "payload": map[string]any{"Authorization": authz}}); err != nil {
			t.Fatal(err)
		}
	}
	// closedWith reads until the close and returns its code, reason and the
	// message types before it.
	closedWith := func(ws *websocket.Conn) (int, string, []string) {
		_ = ws.SetReadDeadline(time.Now().Add(5 * time.Second))
		var types []string
		for {
			var m struct{ Type string }
			if err := ws.ReadJSON(&m); err != nil {
				var ce *websocket.CloseError
				if !errors.As(err, &ce) {
					t.Fatalf("read: %v", err)
				}
				return ce.Code, ce.Text, types
			}
			types = append(types, m.Type)
		}
	}
	early := mustDial("127.0.0.1", "graphql-transport-ws")
	earlyLegacy := mustDial("127.0.0.1", "graphql-ws")
	wrong := "User " + apptest.UserSecret + ", Organization org_wrong_wrong_wrong"
	for i := range 3 {
		ws := mustDial("127.0.0.1", "graphql-transport-ws")
		initWith(ws, wrong)
		if code, why, _ := closedWith(ws); code != 4401 {
			t.Fatalf("wrong credentials %d: closed %d %q, want 4401", i+1, code, why)
		}
	}
	for _, ws := range []*websocket.Conn{early, earlyLegacy} {
		initWith(ws, apptest.AuthA)
		code, why, before := closedWith(ws)
		if code != 4429 || !strings.Contains(why, "RATE_LIMITED") {
			t.Fatalf("connection_init after 3 failures: closed %d %q, want 4429 RATE_LIMITED", code, why)
		}
		if ws == earlyLegacy && (len(before) != 1 || before[0] != "connection_error") {
			t.Fatalf("legacy: %v before the close, want connection_error", before)
		}
	}
	if _, resp, err := dialFrom("127.0.0.1", "graphql-transport-ws"); !errors.Is(err, websocket.ErrBadHandshake) ||
		resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("upgrade from the throttled address: %v", err)
	}
	other := mustDial("127.0.0.2", "graphql-transport-ws")
	initWith(other, apptest.AuthA)
	_ = other.SetReadDeadline(time.Now().Add(5 * time.Second))
	var ack struct{ Type string }
	if err := other.ReadJSON(&ack); err != nil || ack.Type != "connection_ack" {
		t.Fatalf("the right credentials from another address: %+v %v", ack, err)
	}
}
