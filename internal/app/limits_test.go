package app_test

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/leadstream/leadstream/internal/app/apptest"
)

// postRaw posts a body to /graphql and returns the status and answer.
func postRaw(t *testing.T, g *apptest.Gateway, body []byte) (int, []byte) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, g.URL+"/graphql", bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", apptest.AuthA)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, out
}

func aliases(n int, field string) string {
	var b strings.Builder
	b.WriteString("{")
	for i := range n {
		fmt.Fprintf(&b, " a%d: %s", i, field)
	}
	b.WriteString(" }")
	return b.String()
}

// Each limit answers at once with LIMIT_EXCEEDED naming it; a body is
// never echoed.
func TestGraphQLLimits(t *testing.T) {
	g := apptest.Start(t, "", map[string]string{"GRAPHQL_MAX_DEPTH": "4", "GRAPHQL_MAX_COMPLEXITY": "500"})
	tests := []struct {
		name, query string
		limit       string
	}{
		{"aliases", "{ connectors " + aliases(1000, "key") + " }", "GRAPHQL_MAX_FIELDS"},
		{"repeated fields", "{ connectors {" + strings.Repeat(" key", 3000) + " } }", "GRAPHQL_MAX_FIELDS"},
		{"aliases of a top-level field", aliases(1000, "instances { id }"), "GRAPHQL_MAX_COMPLEXITY"},
		{"tokens", "{" + strings.Repeat(" connectors { key }", 50000) + " }", "GRAPHQL_MAX_TOKENS"},
		{"depth", "{ __schema { types { fields { type { name } } } } }", "GRAPHQL_MAX_DEPTH"},
		{"complexity", aliases(10, "connectors { key name id }"), "GRAPHQL_MAX_COMPLEXITY"},
		{"fragments", `{ ...A }
			fragment A on Query { a: connectors { ...B } b: connectors { ...B } c: connectors { ...B } }
			fragment B on Connector { ` + strings.Repeat("...C ", 50) + ` }
			fragment C on Connector { key name id }`, "GRAPHQL_MAX_COMPLEXITY"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// How fast a refusal comes is not timed here (this machine's
			// load decides that); what is checked is that the limit, not
			// the execution, answered.
			r := g.Do(t, apptest.AuthA, tt.query, nil)
			if r.Code() != "LIMIT_EXCEEDED" || !strings.Contains(r.Errors[0].Message, tt.limit) || r.Data != nil && string(r.Data) != "null" {
				t.Fatalf("answer: %.300s", r.Raw)
			}
		})
	}
	// Within every limit: answered.
	var ok struct{ Connectors []struct{ Key string } }
	g.MustDo(t, apptest.AuthA, aliases(5, "connectors { key name }"), nil, nil)
	g.MustDo(t, apptest.AuthA, "{ connectors { key } }", nil, &ok)

	big := append([]byte(`{"query":"{ connectors { key } }","x":"`), bytes.Repeat([]byte(marker), (1<<20)/len(marker)+1)...)
	big = append(big, `"}`...)
	status, out := postRaw(t, g, big)
	if status != http.StatusRequestEntityTooLarge || bytes.Contains(out, []byte(marker)) || !bytes.Contains(out, []byte("GRAPHQL_MAX_BODY_BYTES")) || len(out) > 500 {
		t.Fatalf("1 MiB body: %d %.300s", status, out)
	}
	bad := append([]byte(`{"query": "`), bytes.Repeat([]byte(marker), 1000)...)
	status, out = postRaw(t, g, bad)
	if status != http.StatusBadRequest || bytes.Contains(out, []byte(marker)) {
		t.Fatalf("malformed body: %d %.300s", status, out)
	}
}

func TestOperationTimeLimit(t *testing.T) {
	g := apptest.Start(t, "", map[string]string{"GRAPHQL_TIMEOUT": "1ns"})
	r := g.Do(t, apptest.AuthA, "{ instances { id } }", nil)
	if r.Code() != "LIMIT_EXCEEDED" || !strings.Contains(r.Errors[0].Message, "GRAPHQL_TIMEOUT") {
		t.Fatalf("answer: %s", r.Raw)
	}
}

// A client trickling its request is cut off after REQUEST_READ_TIMEOUT on
// every route that reads a body, and one trickling headers after the
// header timeout; streams outlive both.
func TestSlowClientsCutOff(t *testing.T) {
	const timeout = time.Second
	g := apptest.Start(t, "", map[string]string{"REQUEST_READ_TIMEOUT": timeout.String()})
	addr := strings.TrimPrefix(g.URL, "http://")
	for _, tt := range []struct{ name, head string }{
		{"graphql", "POST /graphql HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\nAuthorization: " + apptest.AuthA + "\r\n\r\n{"},
		{"graphql unauthenticated", "POST /graphql HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"},
		{"webhook", "POST /events/marketo/eA HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"},
		{"connect page", "POST /oauth/marketo/authorize?request=x HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 1000\r\n\r\na"},
		{"headers", "POST /graphql HTTP/1.1\r\nHost: x\r\nX-Slow: a"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			start := time.Now()
			if _, err := io.WriteString(c, tt.head); err != nil {
				t.Fatal(err)
			}
			closed := make(chan struct{})
			go func() { _, _ = io.Copy(io.Discard, c); close(closed) }()
			tick := time.NewTicker(100 * time.Millisecond)
			defer tick.Stop()
			for {
				select {
				case <-closed:
					if took := time.Since(start); took < timeout/2 || took > 4*timeout {
						t.Fatalf("connection closed after %v", took)
					}
					return
				case <-tick.C:
					_, _ = c.Write([]byte("a"))
				case <-time.After(10 * timeout):
					t.Fatal("a trickling client still holds its connection")
				}
			}
		})
	}
}

func TestStreamsOutliveReadTimeout(t *testing.T) {
	fm := fakeMarketo(t)
	g := apptest.Start(t, "", map[string]string{"REQUEST_READ_TIMEOUT": "500ms"})
	id, hook := newInstance(t, g, apptest.AuthA, fullConfig(fm))
	subs := []*apptest.Sub{
		apptest.Subscribe(t, g.URL, "sse", apptest.AuthA, subQuery, map[string]any{"id": id}),
		apptest.Subscribe(t, g.URL, "graphql-transport-ws", apptest.AuthA, subQuery, map[string]any{"id": id}),
	}
	g.WaitSubscriptions(t, 2)
	// Past the read timeout several times over (no condition to wait
	// for: the point is that time passes and nothing happens).
	time.Sleep(1500 * time.Millisecond)
	if status, _ := apptest.Post(t, hook, "application/json", []byte(`{"n":1}`), nil); status != http.StatusAccepted {
		t.Fatalf("webhook %d", status)
	}
	for _, s := range subs {
		if ev := nextEvent(t, s); string(ev.Payload) != `{"n":1}` {
			t.Fatalf("event %s", ev.Payload)
		}
	}
}
