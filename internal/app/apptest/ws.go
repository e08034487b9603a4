package apptest

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// Message is one subscription message: an event's data, or an error that
// ended the subscription, or the end.
type Message struct {
	Data   json.RawMessage   // payload.data
	Errors []json.RawMessage // payload.errors
	Done   bool              // complete
	Raw    []byte
}

// Sub is a subscription over one transport.
type Sub struct {
	Conn  *websocket.Conn // websocket transports
	proto string
	sse   *bufio.Reader
	resp  *http.Response
	msgs  chan Message
	errs  chan error
	gate  chan struct{} // holds a token while reading is paused
}

// Pause stops reading from the connection, as a stuck client would.
func (s *Sub) Pause() { s.gate <- struct{}{} }

// Resume reads again.
func (s *Sub) Resume() { <-s.gate }

// Subscribe opens a subscription over "graphql-transport-ws", "graphql-ws"
// or "sse" and returns once the server acknowledged it.
func Subscribe(t testing.TB, baseURL, proto, authz, query string, vars map[string]any) *Sub {
	t.Helper()
	s, err := TrySubscribe(baseURL, proto, authz, query, vars)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

// TrySubscribe is Subscribe that returns errors (for refusals).
func TrySubscribe(baseURL, proto, authz, query string, vars map[string]any) (*Sub, error) {
	s := &Sub{proto: proto, msgs: make(chan Message, 4096), errs: make(chan error, 1), gate: make(chan struct{}, 1)}
	payload := map[string]any{"query": query, "variables": vars}
	if proto == "sse" {
		body, _ := json.Marshal(payload)
		req, _ := http.NewRequest(http.MethodPost, baseURL+"/graphql", bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Accept", "text/event-stream")
		if authz != "" {
			req.Header.Set("Authorization", authz)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return nil, err
		}
		if resp.StatusCode != 200 {
			resp.Body.Close()
			return nil, fmt.Errorf("sse: status %d", resp.StatusCode)
		}
		s.resp, s.sse = resp, bufio.NewReader(resp.Body)
		go s.readSSE()
		return s, nil
	}
	d := websocket.Dialer{Subprotocols: []string{proto}, HandshakeTimeout: 5 * time.Second}
	conn, _, err := d.Dial(strings.Replace(baseURL, "http", "ws", 1)+"/graphql", nil)
	if err != nil {
		return nil, err
	}
	s.Conn = conn
	init := map[string]any{"type": "connection_init"}
	if authz != "" {
		init["payload"] = map[string]any{"Authorization": authz}
	}
	if err := conn.WriteJSON(init); err != nil {
		return nil, err
	}
	for {
		conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		var m struct{ Type string }
		if err := conn.ReadJSON(&m); err != nil {
			conn.Close()
			return nil, err
		}
		if m.Type == "connection_ack" {
			break
		}
		if m.Type == "connection_error" {
			// The close frame with its code follows.
			continue
		}
	}
	conn.SetReadDeadline(time.Time{})
	start := "subscribe"
	if proto == "graphql-ws" {
		start = "start"
	}
	if err := conn.WriteJSON(map[string]any{"id": "1", "type": start, "payload": payload}); err != nil {
		return nil, err
	}
	go s.readWS()
	return s, nil
}

func (s *Sub) readWS() {
	defer close(s.msgs)
	for {
		s.gate <- struct{}{} // wait while paused
		<-s.gate
		_, raw, err := s.Conn.ReadMessage()
		if err != nil {
			s.errs <- err
			return
		}
		// An error message's payload is a list, a result's an object.
		var env struct{ Type string }
		if json.Unmarshal(raw, &env) != nil {
			continue
		}
		var m struct {
			Payload struct {
				Data   json.RawMessage
				Errors []json.RawMessage
			}
		}
		if env.Type != "error" && json.Unmarshal(raw, &m) != nil {
			continue
		}
		switch env.Type {
		case "next", "data":
			s.msgs <- Message{Data: m.Payload.Data, Errors: m.Payload.Errors, Raw: raw}
		case "error":
			var e struct{ Payload []json.RawMessage }
			_ = json.Unmarshal(raw, &e)
			s.msgs <- Message{Errors: e.Payload, Raw: raw}
		case "complete":
			s.msgs <- Message{Done: true, Raw: raw}
		}
	}
}

func (s *Sub) readSSE() {
	defer close(s.msgs)
	event := ""
	for {
		line, err := s.sse.ReadString('\n')
		if err != nil {
			s.errs <- err
			return
		}
		line = strings.TrimRight(line, "\r\n")
		switch {
		case line == "" && event == "complete":
			// gqlgen's complete event carries no data line.
			s.msgs <- Message{Done: true}
			event = ""
		case strings.HasPrefix(line, "event:"):
			event = strings.TrimSpace(line[6:])
		case strings.HasPrefix(line, "data:"):
			raw := []byte(strings.TrimSpace(line[5:]))
			if event == "complete" {
				s.msgs <- Message{Done: true, Raw: raw}
				event = ""
				continue
			}
			var p struct {
				Data   json.RawMessage
				Errors []json.RawMessage
			}
			if json.Unmarshal(raw, &p) == nil {
				s.msgs <- Message{Data: p.Data, Errors: p.Errors, Raw: raw}
			}
		}
	}
}

// Next waits for the next message.
func (s *Sub) Next(t testing.TB, timeout time.Duration) Message {
	t.Helper()
	select {
	case m, ok := <-s.msgs:
		if !ok {
			t.Fatalf("%s: subscription closed: %v", s.proto, <-s.errs)
		}
		return m
	case <-time.After(timeout):
		t.Fatalf("%s: no message within %v", s.proto, timeout)
	}
	return Message{}
}

// CloseCode waits for the websocket to close and returns its close code.
func (s *Sub) CloseCode(timeout time.Duration) int {
	deadline := time.After(timeout)
	for {
		select {
		case _, ok := <-s.msgs:
			if !ok {
				err := <-s.errs
				var ce *websocket.CloseError
				if e, isClose := err.(*websocket.CloseError); isClose {
					ce = e
					return ce.Code
				}
				return -1
			}
		case <-deadline:
			return 0
		}
	}
}

// Close ends the subscription.
func (s *Sub) Close() {
	if s.Conn != nil {
		s.Conn.Close()
	}
	if s.resp != nil {
		s.resp.Body.Close()
	}
}
