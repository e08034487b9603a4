package app_test

import (
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/leadstream/leadstream/internal/app/apptest"
	"github.com/leadstream/leadstream/internal/eventlog/eventlogtest"
	"github.com/leadstream/leadstream/internal/store"
)

// within waits up to a second for post to answer want, and fails with
// what it answered last.
func within(t *testing.T, what string, want int, post func() int) {
	t.Helper()
	start := time.Now()
	got := 0
	for time.Since(start) < time.Second {
		if got = post(); got == want {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("%s: still %d a second after the change on the other replica, want %d", what, got, want)
}

// Two replicas on one NATS and one store: a change made through one
// reaches the other's webhook checks, caches and subscriptions within a
// second, and pollNow works on either.
func TestChangesReachEveryReplica(t *testing.T) {
	uri, stop, err := store.StartEmbedded(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	env := map[string]string{
		"NATS_URL": eventlogtest.StartServer(t), "MONGODB_URI": uri, "MONGODB_DATABASE": "ls_replicas",
		"SECRET_KEY": "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
	}
	g1, g2 := apptest.Start(t, "", env), apptest.Start(t, "", env)
	fm := fakeMarketo(t)
	cfg := fullConfig(fm)
	cfg["event.notification.enabled"] = "true"
	id, hook := newInstance(t, g1, apptest.AuthA, cfg)
	u, _ := url.Parse(hook)
	onG2 := func(hook string) string {
		u, _ := url.Parse(hook)
		return g2.URL + u.RequestURI()
	}
	post := func(u string) func() int {
		return func() int {
			st, _ := apptest.Post(t, u, "application/json", []byte(`{}`), nil)
			return st
		}
	}
	// g2 has the instance cached now.
	if st := post(onG2(hook))(); st != 202 {
		t.Fatalf("webhook on the other replica: %d", st)
	}

	var rot struct{ RotateWebhookSecret instanceAnswer }
	g1.MustDo(t, apptest.AuthA, `mutation($id: ID!) { rotateWebhookSecret(id: $id) { webhookUrl } }`, map[string]any{"id": id}, &rot)
	within(t, "old webhook secret on the other replica", 401, post(g2.URL+u.RequestURI()))
	if st := post(onG2(rot.RotateWebhookSecret.WebhookURL))(); st != 202 {
		t.Fatalf("new webhook secret on the other replica: %d", st)
	}
	hook = rot.RotateWebhookSecret.WebhookURL

	// pollNow works on both replicas, whichever holds the Marketo lease.
	for _, g := range []*apptest.Gateway{g1, g2} {
		var out struct{ PollNow bool }
		g.MustDo(t, apptest.AuthA, `mutation($id: ID!) { pollNow(instanceId: $id) }`, map[string]any{"id": id}, &out)
		if !out.PollNow {
			t.Fatal("pollNow answered false")
		}
	}

	s := apptest.Subscribe(t, g2.URL, "graphql-transport-ws", apptest.AuthA, subQuery, map[string]any{"id": id})
	g2.WaitSubscriptions(t, 1)
	g1.MustDo(t, apptest.AuthA, `mutation($id: ID!) { updateInstance(id: $id, input: {disabled: true}) { id } }`, map[string]any{"id": id}, nil)
	start := time.Now()
	m := s.Next(t, 5*time.Second)
	if d := time.Since(start); d > time.Second {
		t.Fatalf("the subscription on the other replica ended %v after the disable", d)
	}
	if c := errCode(t, m); c != "SUBSCRIPTION_ENDED" || !strings.Contains(string(m.Raw), "disabled") {
		t.Fatalf("after disable on the other replica: %s", m.Raw)
	}
	within(t, "disabled instance's webhook on the other replica", 409, post(onG2(hook)))
	g1.MustDo(t, apptest.AuthA, `mutation($id: ID!) { updateInstance(id: $id, input: {disabled: false}) { id } }`, map[string]any{"id": id}, nil)
	within(t, "re-enabled instance's webhook on the other replica", 202, post(onG2(hook)))

	s2 := apptest.Subscribe(t, g2.URL, "sse", apptest.AuthA, subQuery, map[string]any{"id": id})
	g2.WaitSubscriptions(t, 1)
	g1.MustDo(t, apptest.AuthA, `mutation($id: ID!) { deleteInstance(id: $id) }`, map[string]any{"id": id}, nil)
	start = time.Now()
	m = s2.Next(t, 5*time.Second)
	if d := time.Since(start); d > time.Second {
		t.Fatalf("the subscription on the other replica ended %v after the delete", d)
	}
	if c := errCode(t, m); c != "SUBSCRIPTION_ENDED" || !strings.Contains(string(m.Raw), "deleted") {
		t.Fatalf("after delete on the other replica: %s", m.Raw)
	}
	within(t, "deleted instance's webhook on the other replica", 404, post(onG2(hook)))
}
