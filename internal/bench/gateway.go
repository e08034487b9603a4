package main

// Starting the real gateway in this process (internal/app, embedded store),
// a fake Marketo for credential checks, and the little GraphQL the bench needs.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/leadstream/leadstream/internal/app"
	"github.com/leadstream/leadstream/internal/config"
	"github.com/leadstream/leadstream/internal/marketo/marketotest"
)

const (
	benchOrgSecret  = "org_bench_secret"
	benchUserSecret = "usr_bench_secret"
	benchAuth       = "User " + benchUserSecret + ", Organization " + benchOrgSecret
)

// subscriptionQuery is what every gateway subscriber runs.
const subscriptionQuery = `subscription($id: ID){ marketoEvents(instanceId: $id){ id cursor payload } }`

type gateway struct {
	URL        string
	app        *app.App
	stop       context.CancelFunc
	done       chan error
	marketo    *marketotest.Server
	InstanceID string
	WebhookURL string
	http       *http.Client
}

func startGateway(ctx context.Context, dir string) (*gateway, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	addr := ln.Addr().String()
	ln.Close()
	env := map[string]string{
		"DATA_DIR": dir, "LISTEN_ADDR": addr, "PUBLIC_URL": "http://" + addr,
		"ORGANIZATION_SECRET": benchOrgSecret, "USER_SECRET": benchUserSecret,
		"LOG_LEVEL": "error", "MARKETO_HOSTS": "127.0.0.1", "EGRESS_ALLOW": "127.0.0.0/8",
		// One organization holds every benchmark connection.
		"WEBSOCKETS_PER_ORGANIZATION": "1000000", "SSE_PER_ORGANIZATION": "1000000",
	}
	cfg, err := config.Load(func(k string) string { return env[k] })
	if err != nil {
		return nil, err
	}
	rctx, cancel := context.WithCancel(context.Background())
	a, err := app.New(ctx, cfg, io.Discard, io.Discard)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("gateway: %w", err)
	}
	g := &gateway{URL: "http://" + addr, app: a, stop: cancel, done: make(chan error, 1)}
	g.http = &http.Client{Transport: &http.Transport{
		MaxIdleConns: 512, MaxIdleConnsPerHost: 512, IdleConnTimeout: 90 * time.Second, DisableCompression: true,
	}, Timeout: 60 * time.Second}
	ready := make(chan struct{})
	go func() { g.done <- a.Run(rctx, func(string) { close(ready) }) }()
	select {
	case <-ready:
	case err := <-g.done:
		a.Close()
		cancel()
		return nil, fmt.Errorf("gateway did not start: %w", err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := g.http.Get(g.URL + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		if time.Now().After(deadline) {
			g.Stop()
			return nil, fmt.Errorf("gateway /healthz never answered: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	g.marketo = marketotest.New()
	g.marketo.AddClient("bench-cid", "bench-csecret")
	if g.InstanceID, g.WebhookURL, err = g.createInstance(ctx, "bench"); err != nil {
		g.Stop()
		return nil, err
	}
	return g, nil
}

// createInstance provisions an instance on the fake Marketo and returns its
// id and secret-bearing webhook URL.
func (g *gateway) createInstance(ctx context.Context, name string) (id, webhookURL string, err error) {
	var out struct {
		CreateInstance struct {
			ID         string `json:"id"`
			WebhookURL string `json:"webhookUrl"`
		} `json:"createInstance"`
	}
	err = g.graphql(ctx, `mutation($cfg: JSON!, $name: String!){ createInstance(input: {connector: {key: "marketo"}, name: $name, configuration: $cfg}) { id webhookUrl } }`,
		map[string]any{"name": name, "cfg": map[string]string{
			"oauth.api.key": "bench-cid", "oauth.api.secret": "bench-csecret",
			"marketo.identity.url": g.marketo.IdentityURL(), "marketo.rest.url": g.marketo.RESTURL(),
			// Keep the poller out of the way: one poll a day.
			"event.poller.refresh_interval": "1440",
		}}, &out)
	if err != nil {
		return "", "", err
	}
	if out.CreateInstance.ID == "" || !strings.Contains(out.CreateInstance.WebhookURL, "secret=") {
		return "", "", fmt.Errorf("createInstance answered %+v", out.CreateInstance)
	}
	return out.CreateInstance.ID, out.CreateInstance.WebhookURL, nil
}

func (g *gateway) graphql(ctx context.Context, query string, vars map[string]any, v any) error {
	body, _ := json.Marshal(map[string]any{"query": query, "variables": vars})
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, g.URL+"/graphql", bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", benchAuth)
	resp, err := g.http.Do(req)
	if err != nil {
		return fmt.Errorf("graphql: %w", err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var r struct {
		Data   json.RawMessage `json:"data"`
		Errors []any           `json:"errors"`
	}
	if err := json.Unmarshal(raw, &r); err != nil || resp.StatusCode != 200 || len(r.Errors) > 0 {
		return fmt.Errorf("graphql: HTTP %d: %s", resp.StatusCode, raw)
	}
	return json.Unmarshal(r.Data, v)
}

// liveSubscriptions reads the leadstream_live_subscriptions gauge.
func (g *gateway) liveSubscriptions() (int, error) {
	f, err := g.metric("leadstream_live_subscriptions")
	return int(f), err
}

// metric reads one unlabelled figure off the gateway's /metrics.
func (g *gateway) metric(name string) (float64, error) {
	resp, err := g.http.Get(g.URL + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			return strconv.ParseFloat(strings.TrimSpace(rest), 64)
		}
	}
	return 0, fmt.Errorf("no %s in /metrics", name)
}

// tailCaughtUp waits until the gateway's live tail has read the whole log,
// so that what is timed next does not share the cores with a tail still
// working through events seeded behind the gateway's back.
func (g *gateway) tailCaughtUp(ctx context.Context) error {
	for {
		lag, err := g.metric("leadstream_live_tail_lag")
		if err != nil || lag == 0 {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// post sends one webhook and reports whether it was accepted (202).
func (g *gateway) post(ctx context.Context, body []byte) (bool, error) {
	return g.postTo(ctx, g.WebhookURL, body)
}

// postTo sends one webhook to url with the gateway's client.
func (g *gateway) postTo(ctx context.Context, url string, body []byte) (bool, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	resp, err := g.http.Do(req)
	if err != nil {
		return false, err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		return false, fmt.Errorf("webhook: HTTP %d", resp.StatusCode)
	}
	return true, nil
}

// Stop shuts the gateway down and closes its store and the fake Marketo.
func (g *gateway) Stop() {
	if g.stop == nil {
		return
	}
	g.stop()
	g.stop = nil
	<-g.done
	g.app.Close()
	if g.marketo != nil {
		g.marketo.Close()
	}
	g.http.CloseIdleConnections()
}
