package app_test

import (
	"bytes"
	"encoding/json"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/leadstream/leadstream/internal/app/apptest"
	"github.com/leadstream/leadstream/internal/eventlog"
	"github.com/leadstream/leadstream/internal/eventlog/eventlogtest"
)

// An event that cannot be rendered ends only the subscriptions that render
// it, each with an INTERNAL error in its protocol; the connection's other
// subscriptions and other subscribers go on, nothing is left attached to
// the broker and no goroutine stays behind. The broken event is a stored
// one whose occurredAt is missing (Time! is non-null), written into the
// event log beside the gateway, as a bug or another writer could leave it.
func TestUnrenderableEventEndsOnlyItsSubscriptions(t *testing.T) {
	fm := fakeMarketo(t)
	natsURL := eventlogtest.StartServer(t)
	g := apptest.Start(t, "", map[string]string{"NATS_URL": natsURL})
	id, hook := newInstance(t, g, apptest.AuthA, fullConfig(fm))
	const marker = "PAYLOAD-MARKER-9f2c"
	post := func(n int) {
		t.Helper()
		body := []byte(`{"n":` + string(rune('0'+n)) + `,"note":"` + marker + `"}`)
		if st, _ := apptest.Post(t, hook, "application/json", body, nil); st != 202 {
			t.Fatalf("webhook %d", st)
		}
	}
	post(1) // warms up the paths measured below
	// Client connections kept idle would count as goroutines on both sides.
	http.DefaultClient.CloseIdleConnections()
	before := servingGoroutines()

	const (
		withTime = `subscription($id: ID) { marketoEvents(instanceId: $id) { id occurredAt } }`
		idOnly   = `subscription($id: ID) { marketoEvents(instanceId: $id) { id } }`
		other    = `subscription($id: ID) { marketoEvents(instanceId: $id) { id payload } }`
	)
	vars := map[string]any{"id": id}
	ws := apptest.Subscribe(t, g.URL, "graphql-transport-ws", apptest.AuthA, withTime, vars)
	legacy := apptest.Subscribe(t, g.URL, "graphql-ws", apptest.AuthA, withTime, vars)
	sse := apptest.Subscribe(t, g.URL, "sse", apptest.AuthA, withTime, vars)
	others := apptest.Subscribe(t, g.URL, "graphql-transport-ws", apptest.AuthA, other, vars)
	// A second operation on each websocket, asking for what can be rendered.
	for _, s := range []*apptest.Sub{ws, legacy} {
		typ := "subscribe"
		if s == legacy {
			typ = "start"
		}
		if err := s.Conn.WriteJSON(map[string]any{"id": "2", "type": typ, "payload": map[string]any{"query": idOnly, "variables": vars}}); err != nil {
			t.Fatal(err)
		}
	}
	g.WaitSubscriptions(t, 6)
	if servingGoroutines() <= before {
		t.Fatal("the goroutine count does not see the subscriptions")
	}

	// The broken copy of the stored event: new id, no occurredAt.
	nc, err := nats.Connect(natsURL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	stream, err := js.Stream(t.Context(), eventlog.StreamEvents)
	if err != nil {
		t.Fatal(err)
	}
	info, err := stream.Info(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	stored, err := stream.GetMsg(t.Context(), info.State.LastSeq)
	if err != nil {
		t.Fatal(err)
	}
	metaLine, payload, ok := bytes.Cut(stored.Data, []byte("\n"))
	if !ok {
		t.Fatalf("stored message is not meta and payload: %q", stored.Data)
	}
	var meta map[string]any
	if err := json.Unmarshal(metaLine, &meta); err != nil {
		t.Fatal(err)
	}
	brokenID := uuid.NewString()
	meta["id"], meta["k"], meta["at"] = brokenID, "broken-"+brokenID, time.Time{}
	metaLine, _ = json.Marshal(meta)
	msg := nats.NewMsg(stored.Subject)
	msg.Data = append(append(metaLine, '\n'), payload...)
	msg.Header.Set(jetstream.MsgIDHeader, brokenID)
	if _, err := js.PublishMsg(t.Context(), msg); err != nil {
		t.Fatal(err)
	}
	post(2)

	// A result per subscription, by operation id.
	type result struct {
		id   string
		typ  string
		data string
		code string
		msg  string
		ext  map[string]any
	}
	read := func(s *apptest.Sub) result {
		t.Helper()
		m := s.Next(t, 10*time.Second)
		var env struct {
			ID   string
			Type string
		}
		_ = json.Unmarshal(m.Raw, &env)
		r := result{id: env.ID, typ: env.Type, data: string(m.Data)}
		if m.Done {
			r.typ = "complete"
		}
		if len(m.Errors) > 0 {
			var e struct {
				Message    string
				Extensions map[string]any
			}
			_ = json.Unmarshal(m.Errors[0], &e)
			r.code, _ = e.Extensions["code"].(string)
			r.msg, r.ext = e.Message, e.Extensions
		}
		return r
	}
	wantEnded := func(name string, r result) {
		t.Helper()
		if r.code != "INTERNAL" || !strings.Contains(r.msg, "could not be rendered") || r.data != "" && r.data != "null" {
			t.Fatalf("%s: %+v, want an INTERNAL error without data", name, r)
		}
		if r.ext["cursor"] == nil {
			t.Fatalf("%s: no cursor to resume past the event: %+v", name, r.ext)
		}
		if strings.Contains(r.msg, marker) {
			t.Fatalf("%s: the error carries the payload: %s", name, r.msg)
		}
	}
	hasID := func(r result, eventID string) bool { return strings.Contains(r.data, `"id":"`+eventID+`"`) }

	for _, s := range []*apptest.Sub{ws, legacy} {
		name := "graphql-transport-ws"
		if s == legacy {
			name = "graphql-ws"
		}
		// id 2 renders both events; id 1 ends at the broken one with an
		// error message and then gets nothing more.
		var got2 []result
		ended := false
		for len(got2) < 2 {
			r := read(s)
			switch {
			case r.id == "1" && !ended:
				if r.typ != "error" {
					t.Fatalf("%s: operation 1 got %+v, want an error message", name, r)
				}
				wantEnded(name, r)
				ended = true
			case r.id == "2" && (r.typ == "next" || r.typ == "data"):
				got2 = append(got2, r)
			default:
				t.Fatalf("%s: unexpected %+v", name, r)
			}
		}
		if !ended || !hasID(got2[0], brokenID) {
			t.Fatalf("%s: operation 2 got %+v, operation 1 ended %v", name, got2, ended)
		}
		// A query's answer comes after anything already queued: operation
		// 1 must have sent nothing more.
		typ := "subscribe"
		if s == legacy {
			typ = "start"
		}
		if err := s.Conn.WriteJSON(map[string]any{"id": "3", "type": typ, "payload": map[string]any{"query": "{ connectors { key } }"}}); err != nil {
			t.Fatal(err)
		}
		for r := read(s); r.id != "3" || r.typ != "complete"; r = read(s) {
			if r.id != "3" {
				t.Fatalf("%s: %+v after operation 1 ended", name, r)
			}
		}
	}
	// SSE: one result with the error, then complete, then the stream ends.
	if r := read(sse); r.typ == "complete" {
		t.Fatalf("sse: complete before the error")
	} else {
		wantEnded("sse", r)
	}
	if r := read(sse); r.typ != "complete" {
		t.Fatalf("sse: %+v after the error, want complete", r)
	}
	if m, ok := sse.TryNext(10 * time.Second); ok {
		t.Fatalf("sse: %s after complete", m.Raw)
	}
	// Another subscriber of the instance, asking for other fields, has both.
	if r := read(others); !hasID(r, brokenID) {
		t.Fatalf("other subscriber: %+v, want the broken event, which it can render", r)
	}
	if r := read(others); r.typ != "next" || r.code != "" {
		t.Fatalf("other subscriber: %+v, want the next event", r)
	}
	// The ended ones left the broker; the others are still there.
	g.WaitSubscriptions(t, 3)

	// Logged once per rendering at ERROR (the two websockets share one),
	// with the ids and never the payload.
	logs := g.Logs.String()
	var lines []string
	for _, l := range strings.Split(logs, "\n") {
		if strings.Contains(l, "could not be rendered") {
			lines = append(lines, l)
		}
	}
	if len(lines) != 2 {
		t.Fatalf("%d log lines about the rendering, want 2 (websocket group, SSE):\n%s", len(lines), strings.Join(lines, "\n"))
	}
	for _, l := range lines {
		if !strings.Contains(l, "level=ERROR") || !strings.Contains(l, brokenID) || !strings.Contains(l, id) {
			t.Fatalf("log line without level, event or instance: %s", l)
		}
	}
	if strings.Contains(logs, marker) {
		t.Fatal("a payload reached the log")
	}

	// Nothing stays behind once the clients are gone.
	for _, s := range []*apptest.Sub{ws, legacy, sse, others} {
		s.Close()
	}
	nc.Close()
	g.WaitSubscriptions(t, 0)
	deadline := time.Now().Add(10 * time.Second)
	for http.DefaultClient.CloseIdleConnections(); servingGoroutines() > before; http.DefaultClient.CloseIdleConnections() {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines serve clients, %d before the subscriptions:\n%s", servingGoroutines(), before, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// servingGoroutines counts the gateway's goroutines that serve clients:
// websocket connections and their operations, GraphQL executions (SSE
// streams, queries), replays. The store's and the event log's own
// goroutines come and go with their connection pools and are not counted.
func servingGoroutines() int {
	buf := make([]byte, 8<<20)
	buf = buf[:runtime.Stack(buf, true)]
	n := 0
	for _, g := range bytes.Split(buf, []byte("\n\n")) {
		if bytes.Contains(g, []byte("/apptest.")) || bytes.Contains(g, []byte("app_test.")) {
			continue // the test's clients
		}
		for _, frame := range []string{"leadstream/internal/subscribe.", "leadstream/leadstream/graph.", "leadstream/internal/events.Streamer", "leadstream/internal/events.(*Stream)"} {
			if bytes.Contains(g, []byte(frame)) {
				n++
				break
			}
		}
	}
	return n
}
