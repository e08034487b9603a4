package app_test

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/leadstream/leadstream/internal/app/apptest"
	"github.com/leadstream/leadstream/internal/marketo/marketotest"
)

// heldOperation starts createInstance, whose credential check reaches the
// fake Marketo, over proto ("http", "graphql-transport-ws" or "graphql-ws")
// and returns a function that makes its client go away, and the websocket
// (nil over HTTP).
func heldOperation(t *testing.T, g *apptest.Gateway, fm *marketotest.Server, proto string) (leave func(), ws *websocket.Conn) {
	t.Helper()
	op := map[string]any{"query": createMut, "variables": map[string]any{"in": map[string]any{
		"connector": map[string]any{"key": "marketo"}, "name": "held", "configuration": fullConfig(fm)}}}
	if proto == "http" {
		ctx, cancel := context.WithCancel(context.Background())
		body, _ := json.Marshal(op)
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, g.URL+"/graphql", bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", apptest.AuthA)
		done := make(chan struct{})
		go func() {
			defer close(done)
			if resp, err := http.DefaultClient.Do(req); err == nil {
				resp.Body.Close()
			}
		}()
		t.Cleanup(func() { cancel(); <-done })
		return func() { cancel(); <-done }, nil
	}
	d := websocket.Dialer{Subprotocols: []string{proto}, HandshakeTimeout: 5 * time.Second}
	ws, _, err := d.Dial(strings.Replace(g.URL, "http", "ws", 1)+"/graphql", nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ws.Close() })
	if err := ws.WriteJSON(map[string]any{"type": "connection_init", "payload": map[string]any{"Authorization": apptest.AuthA}}); err != nil {
		t.Fatal(err)
	}
	_ = ws.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		var m struct{ Type string }
		if err := ws.ReadJSON(&m); err != nil {
			t.Fatal(err)
		}
		if m.Type == "connection_ack" {
			break
		}
	}
	typ := "subscribe"
	if proto == "graphql-ws" {
		typ = "start"
	}
	if err := ws.WriteJSON(map[string]any{"id": "1", "type": typ, "payload": op}); err != nil {
		t.Fatal(err)
	}
	return func() { ws.Close() }, ws
}

// An operation whose client goes away is cancelled: the Marketo call it
// waits on is abandoned (the fake sees its client leave, though it would
// have held the answer much longer) and the goroutines that ran it end.
// Over HTTP the client drops its request; over websocket it closes the
// socket in the middle of a mutation.
func TestOperationCancelledWhenClientLeaves(t *testing.T) {
	fm := fakeMarketo(t)
	g := apptest.Start(t, "", nil)
	for _, proto := range []string{"http", "graphql-transport-ws", "graphql-ws"} {
		t.Run(proto, func(t *testing.T) {
			http.DefaultClient.CloseIdleConnections()
			before := servingGoroutines()
			release := fm.HoldTokens()
			defer release()
			abandoned := fm.Stats().TokensAbandoned
			leave, _ := heldOperation(t, g, fm, proto)
			waitFor(t, "the fake to hold the token request", func() bool { return fm.Stats().TokensHeld == 1 })
			if servingGoroutines() <= before {
				t.Fatal("the running operation is not among the counted goroutines")
			}
			leave()
			waitFor(t, "the fake to see the gateway give up", func() bool { return fm.Stats().TokensAbandoned == abandoned+1 })
			waitFor(t, "the operation's goroutines to end", func() bool {
				http.DefaultClient.CloseIdleConnections()
				return servingGoroutines() <= before
			})
		})
	}
}

// GRAPHQL_TIMEOUT ends a query or mutation that runs too long, over HTTP
// and websocket: LIMIT_EXCEEDED naming it, and the Marketo call it was
// waiting on is abandoned.
func TestOperationTimeLimitCancelsWork(t *testing.T) {
	fm := fakeMarketo(t)
	g := apptest.Start(t, "", map[string]string{"GRAPHQL_TIMEOUT": "300ms"})
	release := fm.HoldTokens()
	defer release()
	wantLimit := func(t *testing.T, code any, msg string) {
		t.Helper()
		if code != "LIMIT_EXCEEDED" || !strings.Contains(msg, "GRAPHQL_TIMEOUT") {
			t.Fatalf("error %v %q, want LIMIT_EXCEEDED naming GRAPHQL_TIMEOUT", code, msg)
		}
	}
	t.Run("http", func(t *testing.T) {
		abandoned := fm.Stats().TokensAbandoned
		r := g.Do(t, apptest.AuthA, createMut, map[string]any{"in": map[string]any{
			"connector": map[string]any{"key": "marketo"}, "name": "held", "configuration": fullConfig(fm)}})
		if len(r.Errors) == 0 {
			t.Fatalf("answer %s, want an error", r.Raw)
		}
		wantLimit(t, r.Code(), r.Errors[0].Message)
		waitFor(t, "the fake to see the gateway give up", func() bool { return fm.Stats().TokensAbandoned == abandoned+1 })
	})
	for _, proto := range []string{"graphql-transport-ws", "graphql-ws"} {
		t.Run(proto, func(t *testing.T) {
			abandoned := fm.Stats().TokensAbandoned
			_, ws := heldOperation(t, g, fm, proto)
			_ = ws.SetReadDeadline(time.Now().Add(10 * time.Second))
			var got []string
			for {
				var m struct {
					ID      string
					Type    string
					Payload struct {
						Errors []struct {
							Message    string
							Extensions map[string]any
						}
					}
				}
				if err := ws.ReadJSON(&m); err != nil {
					t.Fatalf("read after %v: %v", got, err)
				}
				if m.Type == "ka" || m.Type == "ping" {
					continue
				}
				got = append(got, m.Type)
				if len(got) > 2 {
					t.Fatalf("messages %v, want the result with the error, then complete", got)
				}
				if m.Type == "next" || m.Type == "data" {
					if len(m.Payload.Errors) == 0 {
						t.Fatalf("%s without errors", m.Type)
					}
					wantLimit(t, m.Payload.Errors[0].Extensions["code"], m.Payload.Errors[0].Message)
				}
				if m.Type == "complete" {
					break
				}
			}
			if len(got) != 2 {
				t.Fatalf("messages %v, want the result with the error, then complete", got)
			}
			waitFor(t, "the fake to see the gateway give up", func() bool { return fm.Stats().TokensAbandoned == abandoned+1 })
		})
	}
}
