package app_test

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/leadstream/leadstream/internal/app/apptest"
)

type received struct {
	id, ts, sig string
	body        []byte
}

// A callback receiver that fails its first `fail` requests.
func receiver(t *testing.T, fail int32) (*httptest.Server, func() []received) {
	var mu sync.Mutex
	var got []received
	var n atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		got = append(got, received{r.Header.Get("webhook-id"), r.Header.Get("webhook-timestamp"), r.Header.Get("webhook-signature"), b})
		mu.Unlock()
		if n.Add(1) <= fail {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	}))
	t.Cleanup(srv.Close)
	return srv, func() []received {
		mu.Lock()
		defer mu.Unlock()
		return append([]received(nil), got...)
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestCallbackSignedRetriedAndResumedAfterRestart(t *testing.T) {
	fm := fakeMarketo(t)
	dir := t.TempDir()
	// A retry base long enough that the gateway cannot run through many
	// retries while it stops (the delivery after restart waits for the next
	// one), short enough for three attempts in about a second.
	env := map[string]string{"NOTIFY_RETRY_BASE": "200ms"}
	g := apptest.Start(t, dir, env)
	srv, got := receiver(t, 2)
	key := "whsec_" + base64.StdEncoding.EncodeToString([]byte("0123456789abcdef0123456789abcdef"))
	cfg := fullConfig(fm)
	cfg["event.notification.callback.url"] = srv.URL + "/hook"
	cfg["event.notification.signature.key"] = key
	id, hook := newInstance(t, g, apptest.AuthA, cfg)

	status, ack := apptest.Post(t, hook, "application/json", []byte(`{"lead":7}`), nil)
	if status != 202 {
		t.Fatalf("webhook %d", status)
	}
	waitFor(t, "three attempts", func() bool { return len(got()) >= 3 })
	reqs := got()
	if len(reqs) != 3 {
		t.Fatalf("%d requests after a 2xx, want exactly 3", len(reqs))
	}
	for i, r := range reqs {
		if r.id != ack["id"] {
			t.Fatalf("attempt %d webhook-id %q, want the event id %q", i, r.id, ack["id"])
		}
		mac := hmac.New(sha256.New, []byte("0123456789abcdef0123456789abcdef"))
		mac.Write([]byte(r.id + "." + r.ts + "." + string(r.body)))
		if want := "v1," + base64.StdEncoding.EncodeToString(mac.Sum(nil)); r.sig != want {
			t.Fatalf("attempt %d signature %q, want %q", i, r.sig, want)
		}
		var ev eventAnswer
		if err := json.Unmarshal(r.body, &ev); err != nil || string(ev.Payload) != `{"lead":7}` || ev.Cursor != cur(1) || ev.InstanceID != id {
			t.Fatalf("body %s", r.body)
		}
	}
	// Attempts and the final state are visible through GraphQL, once the
	// notifier has recorded the answer the receiver just gave.
	var evs struct {
		Events struct {
			Edges []struct {
				Node struct {
					Delivery struct {
						State    string
						Attempts int
					}
				}
			}
		}
	}
	waitFor(t, "the delivery to be recorded", func() bool {
		g.MustDo(t, apptest.AuthA, `query($id: ID!) { events(instanceId: $id) { edges { node { delivery { state attempts } } } } }`, map[string]any{"id": id}, &evs)
		return evs.Events.Edges[0].Node.Delivery.State != "PENDING"
	})
	if d := evs.Events.Edges[0].Node.Delivery; d.State != "DELIVERED" || d.Attempts != 3 {
		t.Fatalf("delivery = %+v", d)
	}
	var att struct {
		Deliveries []struct {
			EventID    string
			Attempt    int
			StatusCode *int
		}
	}
	g.MustDo(t, apptest.AuthA, `query($id: ID!) { deliveries(instanceId: $id) { eventId attempt statusCode error durationMs } }`, map[string]any{"id": id}, &att)
	if len(att.Deliveries) != 3 || att.Deliveries[0].Attempt != 3 || *att.Deliveries[0].StatusCode != 200 || *att.Deliveries[2].StatusCode != 503 {
		t.Fatalf("deliveries = %+v", att.Deliveries)
	}

	// The queue survives a restart: a failing receiver, a stop, a new
	// gateway on the same data, and the event is delivered.
	srv2, got2 := receiver(t, 1000)
	g.MustDo(t, apptest.AuthA, `mutation($id: ID!, $c: JSON) { updateInstance(id: $id, input: {configuration: $c}) { id } }`,
		map[string]any{"id": id, "c": map[string]any{"event.notification.callback.url": srv2.URL, "event.notification.signature.key": nil}}, nil)
	if st, _ := apptest.Post(t, hook, "application/json", []byte(`{"lead":8}`), nil); st != 202 {
		t.Fatal("second webhook refused")
	}
	waitFor(t, "a failed attempt", func() bool { return len(got2()) >= 1 })
	g.Stop()
	srv2.Close()
	srv3, got3 := receiver(t, 0)
	// Point the instance at a working receiver while the gateway is down:
	// on restart the pending delivery must go there.
	g2 := apptest.Start(t, dir, env)
	g2.MustDo(t, apptest.AuthA, `mutation($id: ID!, $c: JSON) { updateInstance(id: $id, input: {configuration: $c}) { id } }`,
		map[string]any{"id": id, "c": map[string]any{"event.notification.callback.url": srv3.URL}}, nil)
	waitFor(t, "delivery after restart", func() bool { return len(got3()) >= 1 })
	r := got3()[0]
	if !strings.Contains(string(r.body), `"lead":8`) || r.sig != "" {
		t.Fatalf("after restart: %s sig=%q", r.body, r.sig)
	}
	time.Sleep(200 * time.Millisecond)
	if len(got3()) != 1 {
		t.Fatalf("delivered %d times after a 2xx", len(got3()))
	}
}

// A delivery that gave up can be queued again by hand; a pending one or
// another organization's event cannot.
func TestRedeliver(t *testing.T) {
	fm := fakeMarketo(t)
	// Ten attempts, the last one 4^8 retry bases after the first: keep it short.
	g := apptest.Start(t, "", map[string]string{"NOTIFY_RETRY_BASE": "10us"})
	var down atomic.Bool
	down.Store(true)
	var posts atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		posts.Add(1)
		if down.Load() {
			w.WriteHeader(http.StatusBadGateway)
		}
	}))
	t.Cleanup(srv.Close)
	cfg := fullConfig(fm)
	cfg["event.notification.callback.url"] = srv.URL
	id, hook := newInstance(t, g, apptest.AuthA, cfg)
	_, ack := apptest.Post(t, hook, "application/json", []byte(`{"x":1}`), nil)
	const q = `mutation($e: ID!) { redeliver(eventId: $e) { id delivery { state attempts } } }`

	if r := g.Do(t, apptest.AuthA, q, map[string]any{"e": ack["id"]}); r.Code() != "BAD_USER_INPUT" {
		t.Fatalf("redeliver while pending: %s", r.Raw)
	}
	state := func() string {
		var out struct {
			Events struct {
				Edges []struct {
					Node struct{ Delivery struct{ State string } }
				}
			}
		}
		g.MustDo(t, apptest.AuthA, `query($id: ID!) { events(instanceId: $id) { edges { node { delivery { state } } } } }`, map[string]any{"id": id}, &out)
		return out.Events.Edges[0].Node.Delivery.State
	}
	waitFor(t, "the delivery to give up", func() bool { return state() == "FAILED" })
	if posts.Load() != 10 {
		t.Fatalf("%d attempts before giving up, want 10", posts.Load())
	}
	authB := g.NewOrg(t, "B")
	if r := g.Do(t, authB, q, map[string]any{"e": ack["id"]}); r.Code() != "NOT_FOUND" {
		t.Fatalf("another organization redelivered: %s", r.Raw)
	}
	down.Store(false)
	var out struct {
		Redeliver struct {
			ID       string
			Delivery struct {
				State    string
				Attempts int
			}
		}
	}
	g.MustDo(t, apptest.AuthA, q, map[string]any{"e": ack["id"]}, &out)
	if out.Redeliver.ID != ack["id"] || (out.Redeliver.Delivery.State != "PENDING" && out.Redeliver.Delivery.State != "DELIVERED") {
		t.Fatalf("redeliver answered %+v", out.Redeliver)
	}
	waitFor(t, "the redelivery", func() bool { return state() == "DELIVERED" })
	if posts.Load() != 11 {
		t.Fatalf("%d posts, want 11", posts.Load())
	}
}
