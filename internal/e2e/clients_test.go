// Package e2e drives the running gateway with real third-party GraphQL
// clients (node scripts under clients/, installed by `make clients`).
package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/leadstream/leadstream/internal/app/apptest"
	"github.com/leadstream/leadstream/internal/marketo/marketotest"
)

const (
	clientsDir   = "clients"
	marketoID    = "e2e-client-id"
	marketoKey   = "e2e-client-secret"
	nodeDeadline = 30 * time.Second
)

// webhookBody is posted as is; every client must receive it byte for byte.
const webhookBody = `{"first_name":"Ada","email":"ada@example.com","n":1.50}`

// requireClients fails (never skips) when node or the installed clients are
// missing, saying how to install them.
func requireClients(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("node"); err != nil {
		t.Fatalf("node is not on PATH (%v): the end-to-end client tests need node >= 20 and npm; install them, then run `make clients`", err)
	}
	for _, pkg := range []string{"graphql", "graphql-ws", "subscriptions-transport-ws", "graphql-sse", "graphql-http", "ws"} {
		if _, err := os.Stat(filepath.Join(clientsDir, "node_modules", pkg, "package.json")); err != nil {
			t.Fatalf("the JS clients are not installed (%s missing in internal/e2e/clients/node_modules): run `make clients` (npm ci --prefix internal/e2e/clients) first", pkg)
		}
	}
}

type instance struct {
	ID         string `json:"id"`
	WebhookURL string `json:"webhookUrl"`
}

// startWithInstance starts a gateway and creates one Marketo instance on a
// fake Marketo.
func startWithInstance(t *testing.T) (*apptest.Gateway, instance) {
	t.Helper()
	fm := marketotest.New()
	t.Cleanup(fm.Close)
	fm.AddClient(marketoID, marketoKey)
	g := apptest.Start(t, "", nil)
	var out struct{ CreateInstance instance }
	g.MustDo(t, apptest.AuthA, `mutation($in: CreateInstanceInput!) { createInstance(input: $in) { id webhookUrl } }`,
		map[string]any{"in": map[string]any{
			"connector": map[string]any{"key": "marketo"},
			"name":      "e2e",
			"configuration": map[string]any{
				"oauth.api.key": marketoID, "oauth.api.secret": marketoKey,
				"marketo.identity.url": fm.IdentityURL(), "marketo.rest.url": fm.RESTURL(),
			},
		}}, &out)
	in := out.CreateInstance
	if in.ID == "" || !strings.Contains(in.WebhookURL, "secret=") {
		t.Fatalf("createInstance answered %+v", in)
	}
	return g, in
}

// nodeProc is a running client script.
type nodeProc struct {
	cmd    *exec.Cmd
	lines  chan string // stdout, line by line; closed at EOF
	stderr *syncBuffer
	done   chan struct{}
	err    error // Wait's, once done is closed
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func startNode(t *testing.T, script string, args ...string) *nodeProc {
	t.Helper()
	return startNodeFor(t, nodeDeadline, script, args...)
}

// startNodeFor runs a script that is killed after d.
func startNodeFor(t *testing.T, d time.Duration, script string, args ...string) *nodeProc {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	cmd := exec.CommandContext(ctx, "node", append([]string{script}, args...)...)
	cmd.Dir = clientsDir
	cmd.Env = append(os.Environ(), "LEADSTREAM_TIMEOUT_MS=15000")
	cmd.WaitDelay = 2 * time.Second
	p := &nodeProc{cmd: cmd, lines: make(chan string, 64), stderr: &syncBuffer{}, done: make(chan struct{})}
	cmd.Stderr = p.stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatalf("start node %s: %v", script, err)
	}
	go func() {
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 0, 64*1024), 4<<20)
		for sc.Scan() {
			p.lines <- sc.Text()
		}
		close(p.lines)
		p.err = cmd.Wait()
		cancel()
		close(p.done)
	}()
	t.Cleanup(func() {
		cancel()
		<-p.done
		if t.Failed() {
			t.Logf("node %s stderr:\n%s", script, p.stderr.String())
		}
	})
	return p
}

// next returns the next stdout line, or fails once stdout ends or d passes.
func (p *nodeProc) next(t *testing.T, d time.Duration, waitingFor string) string {
	t.Helper()
	select {
	case l, ok := <-p.lines:
		if !ok {
			<-p.done
			t.Fatalf("node %s exited (%v) before %s; stderr:\n%s", p.cmd.Args[1], p.err, waitingFor, p.stderr.String())
		}
		return l
	case <-time.After(d):
		t.Fatalf("no %s from node %s within %s; stderr:\n%s", waitingFor, p.cmd.Args[1], d, p.stderr.String())
	}
	return ""
}

// wait returns the exit code once the process ended.
func (p *nodeProc) wait(t *testing.T) int {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(nodeDeadline):
		t.Fatalf("node %s did not exit", p.cmd.Args[1])
	}
	var ee *exec.ExitError
	if errors.As(p.err, &ee) {
		return ee.ExitCode()
	}
	if p.err != nil {
		t.Fatalf("node %s: %v", p.cmd.Args[1], p.err)
	}
	return 0
}

var subscriptionsGauge = regexp.MustCompile(`(?m)^leadstream_live_subscriptions (\S+)$`)

// waitSubscribed waits until the gateway counts n live subscriptions: a
// client's READY says its request is out, this says the gateway registered it.
func waitSubscribed(t *testing.T, g *apptest.Gateway, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	last := "no answer"
	for time.Now().Before(deadline) {
		resp, err := http.Get(g.URL + "/metrics")
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if m := subscriptionsGauge.FindSubmatch(body); m != nil {
				last = string(m[1])
				if v, _ := strconv.ParseFloat(last, 64); int(v) >= n {
					return
				}
			} else {
				last = fmt.Sprintf("%d without leadstream_live_subscriptions", resp.StatusCode)
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("the gateway never counted %d live subscription(s) (last: %s)", n, last)
}

type webhookAnswer struct {
	ID     string `json:"id"`
	Cursor string `json:"cursor"`
}

func postWebhook(t *testing.T, url, body string) webhookAnswer {
	t.Helper()
	resp, err := http.Post(url, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var a webhookAnswer
	if resp.StatusCode != http.StatusAccepted || json.Unmarshal(raw, &a) != nil || a.ID == "" || a.Cursor == "" {
		t.Fatalf("webhook answered %d %s, want 202 {id, cursor}", resp.StatusCode, raw)
	}
	return a
}

type receivedEvent struct {
	ID         string          `json:"id"`
	Cursor     string          `json:"cursor"`
	InstanceID string          `json:"instanceId"`
	Source     string          `json:"source"`
	EventType  string          `json:"eventType"`
	ObjectType string          `json:"objectType"`
	Payload    json.RawMessage `json:"payload"`
}

// rawPayload finds marketoEvents.payload in a raw frame and returns its
// bytes exactly as the gateway wrote them.
func rawPayload(frame []byte) (json.RawMessage, bool) {
	var obj map[string]json.RawMessage
	if json.Unmarshal(frame, &obj) != nil {
		return nil, false
	}
	if ev, ok := obj["marketoEvents"]; ok {
		var fields map[string]json.RawMessage
		if json.Unmarshal(ev, &fields) != nil {
			return nil, false
		}
		p, ok := fields["payload"]
		return p, ok
	}
	for _, v := range obj {
		if p, ok := rawPayload(v); ok {
			return p, true
		}
	}
	return nil, false
}

func jsonEqual(t *testing.T, a, b []byte) bool {
	t.Helper()
	var x, y any
	if err := json.Unmarshal(a, &x); err != nil {
		t.Fatalf("not JSON: %s", a)
	}
	if err := json.Unmarshal(b, &y); err != nil {
		t.Fatalf("not JSON: %s", b)
	}
	return reflect.DeepEqual(x, y)
}

// TestClientsReceiveWebhookEvent: each real client subscribes, a webhook is
// posted, and the client gets that event with the body byte for byte.
func TestClientsReceiveWebhookEvent(t *testing.T) {
	requireClients(t)
	for _, tc := range []struct {
		name, script string
		frameType    string // the websocket message type that carries a result, per protocol
	}{
		{"graphql-ws", "graphql-ws.mjs", "next"},                                 // graphql-transport-ws
		{"subscriptions-transport-ws", "subscriptions-transport-ws.mjs", "data"}, // legacy graphql-ws
		{"graphql-sse", "graphql-sse.mjs", ""},                                   // an SSE data line: the result itself
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			g, in := startWithInstance(t)
			p := startNode(t, tc.script, g.URL+"/graphql", apptest.AuthA, in.ID)
			if l := p.next(t, 20*time.Second, "READY"); l != "READY" {
				t.Fatalf("first line = %q, want READY", l)
			}
			waitSubscribed(t, g, 1)
			sent := postWebhook(t, in.WebhookURL, webhookBody)

			line := p.next(t, 20*time.Second, "EVENT")
			if code := p.wait(t); code != 0 {
				t.Fatalf("node exited %d after %q", code, line)
			}
			js, ok := strings.CutPrefix(line, "EVENT ")
			if !ok {
				t.Fatalf("line = %q, want EVENT {…}", line)
			}
			var got struct {
				Event receivedEvent `json:"event"`
				Raw   *string       `json:"raw"`
			}
			if err := json.Unmarshal([]byte(js), &got); err != nil {
				t.Fatalf("EVENT line: %v: %s", err, js)
			}
			ev := got.Event
			if ev.ID != sent.ID || ev.Cursor != sent.Cursor {
				t.Errorf("event id/cursor = %q/%q, webhook answered %q/%q", ev.ID, ev.Cursor, sent.ID, sent.Cursor)
			}
			if ev.InstanceID != in.ID || ev.Source != "WEBHOOK" || ev.EventType != "WEBHOOK" || ev.ObjectType != "webhook" {
				t.Errorf("event = instanceId %q source %q eventType %q objectType %q, want %q WEBHOOK WEBHOOK webhook",
					ev.InstanceID, ev.Source, ev.EventType, ev.ObjectType, in.ID)
			}
			if !jsonEqual(t, ev.Payload, []byte(webhookBody)) {
				t.Errorf("payload (as the client parsed it) = %s, want %s", ev.Payload, webhookBody)
			}
			if got.Raw == nil {
				t.Fatalf("the script found no raw frame holding the event")
			}
			var frame struct {
				Type string `json:"type"`
			}
			if err := json.Unmarshal([]byte(*got.Raw), &frame); err != nil || frame.Type != tc.frameType {
				t.Errorf("the event arrived in a frame of type %q (%v), want %q: %s", frame.Type, err, tc.frameType, *got.Raw)
			}
			raw, ok := rawPayload([]byte(*got.Raw))
			if !ok {
				t.Fatalf("no marketoEvents.payload in the raw frame %s", *got.Raw)
			}
			if string(raw) != webhookBody {
				t.Errorf("payload bytes on the wire = %s, want exactly %s", raw, webhookBody)
			}
			t.Logf("%s received %s (frame %d bytes)", tc.name, raw, len(*got.Raw))
		})
	}
}

// TestGraphQLWSBadAuthIsFinal: a wrong Authorization in connection_init is
// closed with 4401 (or 4403) and graphql-ws, though told to retry, stops.
func TestGraphQLWSBadAuthIsFinal(t *testing.T) {
	requireClients(t)
	t.Parallel()
	g, in := startWithInstance(t)
	start := time.Now()
	p := startNode(t, "graphql-ws.mjs", g.URL+"/graphql", "User nobody, Organization nothing", in.ID)
	line := p.next(t, 20*time.Second, "CLOSED")
	code := p.wait(t)
	js, ok := strings.CutPrefix(line, "CLOSED ")
	if !ok || code != 3 {
		t.Fatalf("node exited %d with %q, want exit 3 and CLOSED {…}", code, line)
	}
	var closed struct {
		Code          int    `json:"code"`
		Reason        string `json:"reason"`
		Attempts      int    `json:"attempts"`
		RetryAttempts int    `json:"retryAttempts"`
	}
	if err := json.Unmarshal([]byte(js), &closed); err != nil {
		t.Fatal(err)
	}
	if closed.Code != 4401 && closed.Code != 4403 {
		t.Fatalf("close code %d (%q), want 4401 or 4403", closed.Code, closed.Reason)
	}
	// graphql-ws never retries 4401; it does retry 4403, but only as often as told.
	if (closed.Code == 4401 && closed.Attempts != 1) || closed.Attempts > 1+closed.RetryAttempts {
		t.Fatalf("close %d after %d connection attempts (retryAttempts %d)", closed.Code, closed.Attempts, closed.RetryAttempts)
	}
	t.Logf("refused with close %d %q after %d attempt(s), in %s", closed.Code, closed.Reason, closed.Attempts, time.Since(start).Round(time.Millisecond))
}

type auditResult struct {
	ID     string  `json:"id"`
	Name   string  `json:"name"`
	Status string  `json:"status"`
	Reason *string `json:"reason"`
}

// TestGraphQLHTTPServerAudit runs graphql-http's audit suite against
// /graphql: no MUST audit may fail; SHOULD warnings are logged.
func TestGraphQLHTTPServerAudit(t *testing.T) {
	requireClients(t)
	t.Parallel()
	g := apptest.Start(t, "", nil)
	p := startNode(t, "audit.mjs", g.URL+"/graphql", apptest.AuthA)
	line := p.next(t, nodeDeadline, "the audit summary")
	code := p.wait(t)
	var sum struct {
		Results      []auditResult  `json:"results"`
		Counts       map[string]int `json:"counts"`
		MustFailures int            `json:"mustFailures"`
	}
	if err := json.Unmarshal([]byte(line), &sum); err != nil {
		t.Fatalf("audit output is not the JSON summary: %v: %s", err, line)
	}
	if len(sum.Results) == 0 {
		t.Fatal("the audit ran no audit")
	}
	failed := 0
	for _, r := range sum.Results {
		reason := ""
		if r.Reason != nil {
			reason = *r.Reason
		}
		switch {
		case r.Status == "ok":
		case strings.HasPrefix(r.Name, "MUST"):
			failed++
			t.Errorf("MUST audit failed: [%s] %s: %s: %s", r.ID, r.Name, r.Status, reason)
		default:
			t.Logf("%s: [%s] %s: %s", strings.ToUpper(r.Status), r.ID, r.Name, reason)
		}
	}
	if (failed > 0) != (code != 0) || failed != sum.MustFailures {
		t.Errorf("audit exited %d reporting %d MUST failures; counted %d", code, sum.MustFailures, failed)
	}
	t.Logf("graphql-http audit: %d audits, %v", len(sum.Results), sum.Counts)
}
