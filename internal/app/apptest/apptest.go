// Package apptest starts the real gateway (embedded store, real HTTP) for
// tests, and speaks GraphQL to it.
package apptest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/leadstream/leadstream/internal/app"
	"github.com/leadstream/leadstream/internal/config"
)

// Org and user secrets every gateway started here has.
const (
	OrgSecret  = "org_test_secret_A"
	UserSecret = "usr_test_secret_A"
	AuthA      = "User " + UserSecret + ", Organization " + OrgSecret
)

// Gateway is a running gateway.
type Gateway struct {
	URL     string
	DataDir string
	Logs    *SyncBuffer
	stop    context.CancelFunc
	done    chan error
	app     *app.App
	t       testing.TB
}

// SyncBuffer is a log sink safe for concurrent writes.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// String returns everything written so far.
func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Start runs a gateway on a free port with DataDir dir ("" = a new temp dir)
// and extra environment; it waits for /healthz and stops at test end.
func Start(t testing.TB, dir string, env map[string]string) *Gateway {
	t.Helper()
	if dir == "" {
		dir = t.TempDir()
	}
	e := map[string]string{
		"PORT": "0", "LISTEN_ADDR": "127.0.0.1:0", "DATA_DIR": dir,
		"ORGANIZATION_SECRET": OrgSecret, "USER_SECRET": UserSecret,
		"POLLER_MIN_INTERVAL": "100ms", "NOTIFY_RETRY_BASE": "20ms", "LOG_LEVEL": "debug",
		// The fake Marketo and the capture servers listen on loopback.
		"MARKETO_HOSTS": "127.0.0.1", "EGRESS_ALLOW": "127.0.0.0/8",
	}
	for k, v := range env {
		e[k] = v
	}
	g := &Gateway{DataDir: dir, Logs: &SyncBuffer{}, done: make(chan error, 1), t: t}
	// PUBLIC_URL must name the port, which is only known once listening:
	// listen first on a fixed free port.
	if e["PUBLIC_URL"] == "" {
		addr := freeAddr(t)
		e["LISTEN_ADDR"] = addr
		e["PUBLIC_URL"] = "http://" + addr
	}
	cfg, err := config.Load(func(k string) string { return e[k] })
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	g.stop = cancel
	a, err := app.New(ctx, cfg, io.Discard, g.Logs)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	g.app = a
	ready := make(chan string, 1)
	go func() { g.done <- a.Run(ctx, func(addr string) { ready <- addr }) }()
	select {
	case <-ready:
	case err := <-g.done:
		t.Fatalf("gateway did not start: %v", err)
	}
	g.URL = e["PUBLIC_URL"]
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get(g.URL + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("healthz never answered: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Cleanup(g.Stop)
	return g
}

// Stop shuts the gateway down gracefully and closes its store.
func (g *Gateway) Stop() {
	if g.stop == nil {
		return
	}
	g.stop()
	g.stop = nil
	if err := <-g.done; err != nil {
		g.t.Errorf("gateway run: %v", err)
	}
	g.app.Close()
}

func freeAddr(t testing.TB) string {
	l, err := (&net.ListenConfig{}).Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// Response is a GraphQL answer.
type Response struct {
	Status int
	Data   json.RawMessage
	Errors []struct {
		Message    string         `json:"message"`
		Extensions map[string]any `json:"extensions"`
	}
	Raw []byte
}

// Code is the first error's extensions.code, or "".
func (r *Response) Code() string {
	if len(r.Errors) == 0 {
		return ""
	}
	c, _ := r.Errors[0].Extensions["code"].(string)
	return c
}

// Do posts a GraphQL operation with an Authorization value ("" sends none).
func (g *Gateway) Do(t testing.TB, authz, query string, vars map[string]any) *Response {
	t.Helper()
	body, _ := json.Marshal(map[string]any{"query": query, "variables": vars})
	req, _ := http.NewRequest(http.MethodPost, g.URL+"/graphql", bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	if authz != "" {
		req.Header.Set("Authorization", authz)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("graphql: %v", err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	out := &Response{Status: resp.StatusCode, Raw: raw}
	if err := json.Unmarshal(raw, out); err != nil {
		t.Fatalf("graphql answer %d is not JSON: %s", resp.StatusCode, raw)
	}
	return out
}

// MustDo is Do that fails the test on any GraphQL error, decoding data into v.
func (g *Gateway) MustDo(t testing.TB, authz, query string, vars map[string]any, v any) {
	t.Helper()
	r := g.Do(t, authz, query, vars)
	if len(r.Errors) > 0 || r.Status != 200 {
		t.Fatalf("graphql %d: %s", r.Status, r.Raw)
	}
	if v != nil {
		if err := json.Unmarshal(r.Data, v); err != nil {
			t.Fatalf("decode %s: %v", r.Data, err)
		}
	}
}

// NewOrg creates another organization with one user and returns its
// Authorization value.
func (g *Gateway) NewOrg(t testing.TB, name string) string {
	t.Helper()
	org, user := "org_"+name+"_secret", "usr_"+name+"_secret"
	if err := g.app.CreateOrganization(context.Background(), org, user); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("User %s, Organization %s", user, org)
}

// HasSubscriptions reports whether the gateway counts n live subscriptions now.
func (g *Gateway) HasSubscriptions(t testing.TB, n int) bool {
	t.Helper()
	resp, err := http.Get(g.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return bytes.Contains(b, []byte(fmt.Sprintf("leadstream_live_subscriptions %d\n", n)))
}

// WaitSubscriptions waits until the gateway counts n live subscriptions:
// transports acknowledge a subscription before its resolver ran.
func (g *Gateway) WaitSubscriptions(t testing.TB, n int) {
	t.Helper()
	want := fmt.Sprintf("leadstream_live_subscriptions %d\n", n)
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get(g.URL + "/metrics")
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if bytes.Contains(b, []byte(want)) {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("never saw %d live subscriptions", n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Post sends a webhook body to url with a content type and returns the
// status and the decoded JSON answer.
func Post(t testing.TB, url, contentType string, body []byte, header map[string]string) (int, map[string]string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	req.Header.Set("Content-Type", contentType)
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("post: %v", err)
	}
	defer resp.Body.Close()
	var out map[string]string
	raw, _ := io.ReadAll(resp.Body)
	if err := json.Unmarshal(raw, &out); err != nil {
		t.Fatalf("answer %d is not a JSON object: %q", resp.StatusCode, raw)
	}
	return resp.StatusCode, out
}
