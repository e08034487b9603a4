package notify_test

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/leadstream/leadstream/internal/egress"
	"github.com/leadstream/leadstream/internal/eventlog"
	"github.com/leadstream/leadstream/internal/events"
	"github.com/leadstream/leadstream/internal/notify"
)

const orgID = "org-1"

// newNotifier builds a Notifier on the gateway's callbacks client with
// loopback allowed (EGRESS_ALLOW=127.0.0.0/8), as the app's tests run it.
func newNotifier(t *testing.T, q notify.Queue, tg notify.Targets, o notify.Options) *notify.Notifier {
	t.Helper()
	c := egress.New(egress.Policy{Allow: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}})
	n, err := notify.New(q, tg, c.Callbacks(), o)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// targets is an in-memory instance table: instance id -> callback URL and key.
type targets struct {
	mu sync.Mutex
	m  map[string][2]string
}

func newTargets() *targets { return &targets{m: map[string][2]string{}} }

func (t *targets) set(instanceID, url, key string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.m[instanceID] = [2]string{url, key}
}

func (t *targets) Target(_ context.Context, instanceID string) (string, string, bool, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	v, ok := t.m[instanceID]
	return v[0], v[1], ok, nil
}

// addEvents appends n events of an instance, each for delivery.
func addEvents(t *testing.T, l *eventlog.Log, instanceID string, n int) []*events.Event {
	t.Helper()
	now := time.Now().UTC().Truncate(time.Millisecond)
	evs := make([]*events.Event, n)
	for i := range evs {
		id := uuid.NewString()
		obj := fmt.Sprint(1000 + i)
		evs[i] = &events.Event{
			ID: id, InstanceID: instanceID, OrgID: orgID, DedupeKey: "key-" + id,
			Source: events.SourceWebhook, EventType: "lead.created", ObjectType: "lead", ObjectID: &obj,
			OccurredAt: now, ReceivedAt: now, Payload: events.JSON(fmt.Sprintf(`{"n":%d,"name":"Ann"}`, i)), Notify: true,
		}
		if _, err := l.Append(context.Background(), evs[i]); err != nil {
			t.Fatalf("Append: %v", err)
		}
	}
	return evs
}

// attempts returns an instance's recorded attempts, oldest first.
func attempts(t *testing.T, l *eventlog.Log, instanceID string) []events.Attempt {
	t.Helper()
	as, err := l.Attempts(context.Background(), instanceID, 10000)
	if err != nil {
		t.Fatalf("Attempts: %v", err)
	}
	slices.SortFunc(as, func(a, b events.Attempt) int {
		if c := strings.Compare(a.EventID, b.EventID); c != 0 {
			return c
		}
		return a.Attempt - b.Attempt
	})
	return as
}

// delivery is an event's current delivery state (PENDING before any).
func delivery(t *testing.T, l *eventlog.Log, ev *events.Event) events.Delivery {
	t.Helper()
	d, ok, err := l.DeliveryState(context.Background(), ev.ID)
	if err != nil {
		t.Fatal(err)
	}
	if !ok {
		return events.Delivery{State: events.DeliveryPending}
	}
	return d
}

// start runs n until the returned stop is called (or the test ends); stop
// returns only after Run did.
func start(t *testing.T, n *notify.Notifier) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Run: %v", err)
				}
			case <-time.After(10 * time.Second):
				t.Errorf("Run did not return 10s after its context ended")
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// waitFor polls cond until it holds, failing the test after timeout.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func waitState(t *testing.T, s *eventlog.Log, ev *events.Event, want events.DeliveryState) events.Delivery {
	t.Helper()
	var d events.Delivery
	waitFor(t, 10*time.Second, "delivery state "+string(want), func() bool {
		d = delivery(t, s, ev)
		return d.State == want
	})
	return d
}

// observed counts the outcomes a notifier reports.
type observed struct {
	mu sync.Mutex
	m  map[string]int
}

func (o *observed) observe(outcome string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.m == nil {
		o.m = map[string]int{}
	}
	o.m[outcome]++
}

func (o *observed) counts() map[string]int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return maps.Clone(o.m)
}

// specKey decodes a signature key the way the spec says: the base64 rest of
// a whsec_ value; any other key is its own bytes.
func specKey(t *testing.T, key string) []byte {
	t.Helper()
	if rest, ok := strings.CutPrefix(key, "whsec_"); ok {
		b, err := base64.StdEncoding.DecodeString(rest)
		if err != nil {
			t.Fatalf("test key %q: %v", key, err)
		}
		return b
	}
	return []byte(key)
}

// specSignature computes a Standard Webhooks v1 signature straight from the
// spec, independently of notify.Sign.
func specSignature(secret []byte, id, ts string, body []byte) string {
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte(id + "." + ts + "."))
	mac.Write(body)
	return "v1," + base64.StdEncoding.EncodeToString(mac.Sum(nil))
}
