package app

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"
	"time"

	"github.com/leadstream/leadstream/internal/config"
	"github.com/leadstream/leadstream/internal/instance"
	"github.com/leadstream/leadstream/internal/marketo/marketotest"
)

// Demo credentials: fixed so the README can show them.
const (
	demoOrgSecret  = "demo-organization-secret"
	demoUserSecret = "demo-user-secret"
	// The fake Marketo's API user.
	demoClientID     = "demo-client"
	demoClientSecret = "demo-client-secret"
)

// runDemo runs the gateway with a fake Marketo beside it that produces a
// few lead activities a second, and a demo instance that polls it, on a
// throw-away data directory.
func runDemo(ctx context.Context, cfg config.Config, stdout, stderr io.Writer) error {
	dir, err := os.MkdirTemp("", "leadstream-demo-")
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	defer os.RemoveAll(dir)
	cfg.DataDir, cfg.MongoURI, cfg.SecretKey = dir, "", nil
	if cfg.OrgSecret == "" {
		cfg.OrgSecret, cfg.UserSecret = demoOrgSecret, demoUserSecret
	}
	cfg.PollerMinInterval = min(cfg.PollerMinInterval, defaultDemoInterval)

	fm := marketotest.New()
	defer fm.Close()
	fm.AddClient(demoClientID, demoClientSecret)
	// The fake runs on loopback, which MARKETO_HOSTS leaves out by default.
	cfg.MarketoHosts = append(cfg.MarketoHosts, "127.0.0.1")

	a, err := New(ctx, cfg, stdout, stderr)
	if err != nil {
		return err
	}
	defer a.Close()
	id, err := a.auth.CreatePair(ctx, cfg.OrgSecret, cfg.UserSecret)
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	conf, _ := json.Marshal(map[string]string{
		instance.KeyAPIKey: demoClientID, instance.KeyAPISecret: demoClientSecret,
		instance.KeyIdentityURL: fm.IdentityURL(), instance.KeyRESTURL: fm.RESTURL(),
		instance.KeyEventsEnabled: "true", instance.KeyRefreshInterval: defaultDemoInterval.String(),
	})
	created, err := a.instances.Create(ctx, id.OrgID, instance.CreateInput{ConnectorKey: "marketo", Name: "Demo (fake Marketo)", Config: conf})
	if err != nil {
		return fmt.Errorf("demo: create instance: %w", err)
	}
	gen, stopGen := context.WithCancel(ctx)
	defer stopGen()
	fm.StartGenerator(gen, 3)

	authz := fmt.Sprintf("User %s, Organization %s", cfg.UserSecret, cfg.OrgSecret)
	fmt.Fprintf(stdout, `
Leadstream demo: a fake Marketo produces about 3 lead activities a second,
polled every %s into instance %s.

Open GraphiQL at %[3]s/ and put in its Headers tab
  {"Authorization": "%[4]s"}
then run
  subscription { marketoEvents(instanceId: "%[2]s") { cursor eventType objectType objectId occurredAt payload } }

Or follow the same events as Server-Sent Events with curl:
  curl -N %[3]s/graphql -H 'Authorization: %[4]s' -H 'Accept: text/event-stream' -H 'Content-Type: application/json' \
    -d '{"query":"subscription { marketoEvents(instanceId: \"%[2]s\") { cursor eventType payload } }"}'

Webhooks for this instance go to
  %[5]s

`, defaultDemoInterval, created.Instance.ID, cfg.PublicURL, authz,
		a.instances.WebhookURL(created.Instance.ID, created.WebhookSecret))
	return a.Run(ctx, nil)
}

const defaultDemoInterval = 2 * time.Second // a demo should show events at once

// runFakeMarketo serves only the fake Marketo, with one API user and a few
// lead activities a second, until ctx ends.
func runFakeMarketo(ctx context.Context, addr string, stdout io.Writer) error {
	fm, err := marketotest.NewAt(addr)
	if errors.Is(err, syscall.EADDRINUSE) {
		return fmt.Errorf("fake Marketo: %s is already in use (by another fake Marketo, or another program): "+
			"stop that one, or pick a free address: make fake-marketo FAKE_MARKETO_ADDR=127.0.0.1:9091", addr)
	}
	if err != nil {
		return err
	}
	defer fm.Close()
	fm.AddClient(demoClientID, demoClientSecret)
	fm.StartGenerator(ctx, 3)
	fmt.Fprintf(stdout, `Fake Marketo running. Use these on the connect page or in createInstance:
  marketo.identity.url  %s
  marketo.rest.url      %s
  oauth.api.key         %s
  oauth.api.secret      %s
`, fm.IdentityURL(), fm.RESTURL(), demoClientID, demoClientSecret)
	<-ctx.Done()
	return nil
}
