package eventlog_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/leadstream/leadstream/internal/egress"
	"github.com/leadstream/leadstream/internal/eventlog"
	"github.com/leadstream/leadstream/internal/eventlog/eventlogtest"
	"github.com/leadstream/leadstream/internal/events"
	"github.com/leadstream/leadstream/internal/notify"
)

// receiver counts the callbacks it is sent by event id, answering 204, or
// 503 to the refused event.
type receiver struct {
	srv     *httptest.Server
	mu      sync.Mutex
	n       map[string]int
	refused string
}

func newReceiver(t *testing.T) *receiver {
	r := &receiver{n: map[string]int{}}
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		id := req.Header.Get("webhook-id")
		r.mu.Lock()
		r.n[id]++
		refused := id == r.refused
		r.mu.Unlock()
		if refused {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(r.srv.Close)
	return r
}

func (r *receiver) refuse(eventID string) {
	r.mu.Lock()
	r.refused = eventID
	r.mu.Unlock()
}

func (r *receiver) count(id string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.n[id]
}

// Target sends every instance's events to the receiver.
func (r *receiver) Target(_ context.Context, instanceID string) (string, string, bool, error) {
	return r.srv.URL, "", true, nil
}

// runNotifier delivers from l until the returned stop is called.
func runNotifier(t *testing.T, l *eventlog.Log, targets notify.Targets, retryBase time.Duration) (stop func()) {
	t.Helper()
	c := egress.New(egress.Policy{Allow: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}})
	n, err := notify.New(l, targets, c.Callbacks(), notify.Options{FetchWait: 100 * time.Millisecond, RetryBase: retryBase})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Error(err)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

func waitFor(t *testing.T, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		ok, state := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s: %s", what, state)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func delivered(t *testing.T, l *eventlog.Log, r *receiver, id string, posts, gen int) func() (bool, string) {
	return func() (bool, string) {
		d, ok, err := l.DeliveryState(context.Background(), id)
		if err != nil {
			t.Fatal(err)
		}
		return ok && d.State == events.DeliveryDelivered && d.Gen == gen && r.count(id) == posts,
			fmt.Sprintf("state %s, generation %d, %d callbacks", d.State, d.Gen, r.count(id))
	}
}

// A redelivery whose requester is killed after publishing its job and
// before marking the state pending is delivered all the same, once, by
// the next notifier; later redeliveries work as ever.
func TestRedeliveryKilledBetweenItsWrites(t *testing.T) {
	l := eventlogtest.New(t)
	ctx := context.Background()
	r := newReceiver(t)
	e := ev("o", "i", events.SourceWebhook, "webhook", "WEBHOOK", "{}")
	e.Notify = true
	if _, err := l.Append(ctx, e); err != nil {
		t.Fatal(err)
	}
	stop := runNotifier(t, l, r, 50*time.Millisecond)
	waitFor(t, "the first delivery", delivered(t, l, r, e.ID, 1, 0))
	stop()

	if err := eventlog.RedeliveryJobOnly(ctx, l, e.ID); err != nil {
		t.Fatal(err)
	}
	if d, _, _ := l.DeliveryState(ctx, e.ID); d.State != events.DeliveryDelivered || d.Gen != 0 {
		t.Fatalf("state after the job alone: %+v, want the first delivery's", d)
	}
	stop = runNotifier(t, l, r, 50*time.Millisecond)
	waitFor(t, "the interrupted redelivery", delivered(t, l, r, e.ID, 2, 1))

	// Two requests at once: one is queued, the other told it is pending.
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i := range errs {
		wg.Go(func() { errs[i] = l.Redeliver(ctx, e, time.Now()) })
	}
	wg.Wait()
	if (errs[0] == nil) == (errs[1] == nil) || !errors.Is(errors.Join(errs...), events.ErrDeliveryPending) {
		t.Fatalf("concurrent redeliveries: %v", errs)
	}
	waitFor(t, "the next redelivery", delivered(t, l, r, e.ID, 3, 2))
	stop()
	if n := r.count(e.ID); n != 3 {
		t.Fatalf("%d callbacks, want 3", n)
	}
}

// Deleting an instance removes its delivery states with its events and
// attempts, and a callback pending for it is not delivered; another
// instance's deliveries go on.
func TestPurgeRemovesDeliveries(t *testing.T) {
	l := eventlogtest.New(t)
	ctx := context.Background()
	r := newReceiver(t)
	gone := ev("o", "gone", events.SourceWebhook, "webhook", "WEBHOOK", "{}")
	gone.Notify = true
	r.refuse(gone.ID)
	if _, err := l.Append(ctx, gone); err != nil {
		t.Fatal(err)
	}
	stop := runNotifier(t, l, r, 2*time.Second)
	waitFor(t, "a refused first attempt", func() (bool, string) {
		d, _, err := l.DeliveryState(ctx, gone.ID)
		if err != nil {
			t.Fatal(err)
		}
		return d.Attempts == 1 && d.State == events.DeliveryPending, fmt.Sprintf("%+v", d)
	})
	if err := l.PurgeInstance(ctx, "gone"); err != nil {
		t.Fatal(err)
	}
	r.refuse("") // the retry would be answered 2xx now
	if _, ok, err := l.DeliveryState(ctx, gone.ID); ok || err != nil {
		t.Fatalf("delivery state of a purged event: %v %v", ok, err)
	}
	if as, err := l.Attempts(ctx, "gone", 10); len(as) != 0 || err != nil {
		t.Fatalf("attempts of a purged instance: %v %v", as, err)
	}
	if _, err := l.DeliveredEvent(ctx, "o", gone.ID); !errors.Is(err, events.ErrNoDelivery) {
		t.Fatalf("DeliveredEvent of a purged event: %v", err)
	}
	kept := ev("o", "kept", events.SourceWebhook, "webhook", "WEBHOOK", "{}")
	kept.Notify = true
	if _, err := l.Append(ctx, kept); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the other instance's delivery", delivered(t, l, r, kept.ID, 1, 0))
	// Past the purged job's retry time: nothing is pending any more, and
	// the purged event was neither delivered nor given a state again.
	waitFor(t, "no delivery pending", func() (bool, string) {
		n, err := l.PendingDeliveries(ctx)
		return err == nil && n == 0, fmt.Sprintf("%d pending, %v", n, err)
	})
	stop()
	if n := r.count(gone.ID); n != 1 {
		t.Fatalf("the purged event was posted %d times, want 1 (the refused attempt)", n)
	}
	if _, ok, err := l.DeliveryState(ctx, gone.ID); ok || err != nil {
		t.Fatalf("delivery state of a purged event after the notifier ran: %v %v", ok, err)
	}
}
