// Package notify delivers stored events to their instance's callback URL:
// signed per Standard Webhooks, retried with exponential backoff, every
// attempt recorded. The queue is the events collection itself (each event's
// delivery state), so a restarted notifier resumes where the last one stopped
// and delivery is at-least-once.
//
// One Notifier is the single writer of delivery state in the process. Two
// in-memory sets keep an event from being POSTed twice at once: the events in
// flight, and the events released since the current store scan began (the
// scan may have read them before their new state was written).
package notify

import (
	"container/heap"
	"context"
	"errors"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/leadstream/leadstream/internal/events"
)

// MaxAttempts bounds the POSTs of one event: the first one plus 9 retries.
const MaxAttempts = 10

// Outcomes passed to Options.Observe.
const (
	OutcomeDelivered     = "delivered"
	OutcomeFailedAttempt = "failed_attempt"
	OutcomeGaveUp        = "gave_up"
)

// Store is the part of the database the notifier needs; *store.Store
// satisfies it.
type Store interface {
	DueDeliveries(ctx context.Context, now time.Time, limit int) ([]*events.Event, error)
	SetDelivery(ctx context.Context, eventID string, d events.Delivery) error
	InsertAttempt(ctx context.Context, a events.Attempt) error
}

// Targets says where an instance's events go, read at each attempt so a
// changed or removed callback URL applies to queued events too. ok is false
// when the instance no longer exists or has no callback URL.
type Targets interface {
	Target(ctx context.Context, instanceID string) (url, signatureKey string, ok bool, err error)
}

// Options tunes a Notifier; zero values take the defaults.
type Options struct {
	RetryBase      time.Duration // NOTIFY_RETRY_BASE, default 4s: retry n waits RetryBase * 4^(n-1)
	AttemptTimeout time.Duration // default 10s per attempt
	Workers        int           // concurrent deliveries, default 8
	PollInterval   time.Duration // how often the store is scanned when not woken, default 1s
	// HTTPClient sends the POSTs (default: a client on a clone of
	// http.DefaultTransport, whose idle connections Run closes on return).
	// Its CheckRedirect is replaced: a redirect is never followed and counts
	// as a failed attempt.
	HTTPClient *http.Client
	Logger     *slog.Logger
	// Observe, when set, is called once per outcome: OutcomeDelivered,
	// OutcomeFailedAttempt (each failed POST), OutcomeGaveUp (the event is
	// FAILED: attempts exhausted or no target). It must not block.
	Observe func(outcome string)
	Now     func() time.Time // default time.Now
}

// Notifier delivers pending events; Run drives it, Wake nudges it.
type Notifier struct {
	store   Store
	targets Targets
	o       Options
	client  *http.Client
	log     *slog.Logger
	batch   int

	wake    chan struct{}
	running atomic.Bool

	mu        sync.Mutex
	inflight  map[string]struct{} // claimed by a worker
	released  map[string]struct{} // released since the current scan began
	unwritten map[string]*outcome // outcomes whose store write failed, retried before any new POST
	retries   timeHeap            // when scheduled retries fall due, to wake up on time
}

// New prepares a Notifier; nothing runs until Run.
func New(s Store, t Targets, o Options) *Notifier {
	if o.RetryBase <= 0 {
		o.RetryBase = 4 * time.Second
	}
	if o.AttemptTimeout <= 0 {
		o.AttemptTimeout = 10 * time.Second
	}
	if o.Workers <= 0 {
		o.Workers = 8
	}
	if o.PollInterval <= 0 {
		o.PollInterval = time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	// Our own transport by default, so Run can close its idle connections.
	client := &http.Client{}
	if tr, ok := http.DefaultTransport.(*http.Transport); ok {
		client.Transport = tr.Clone()
	}
	if o.HTTPClient != nil {
		c := *o.HTTPClient
		client = &c
	}
	client.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	return &Notifier{
		store: s, targets: t, o: o, client: client,
		log: o.Logger.With("component", "notify"),
		// More than Workers, so a scan always holds events not in flight.
		batch:     max(8*o.Workers, 64),
		wake:      make(chan struct{}, 1),
		inflight:  map[string]struct{}{},
		released:  map[string]struct{}{},
		unwritten: map[string]*outcome{},
	}
}

// Wake tells the notifier new pending deliveries exist, so they go out now
// rather than at the next poll. It never blocks.
func (n *Notifier) Wake() {
	select {
	case n.wake <- struct{}{}:
	default:
	}
}

// Run delivers until ctx ends, then waits for the attempts in flight: each is
// either completed and recorded, or (not yet sent) left pending for the next
// run. It returns nil after a shutdown; one Notifier runs once at a time.
func (n *Notifier) Run(ctx context.Context) error {
	if !n.running.CompareAndSwap(false, true) {
		return errors.New("notify: Run is already running")
	}
	defer n.running.Store(false)
	defer n.client.CloseIdleConnections() // after the drain below: no keep-alive goroutines outlive Run

	var wg sync.WaitGroup
	defer wg.Wait()
	slots := make(chan struct{}, n.o.Workers)
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()

	for ctx.Err() == nil {
		r := n.scan(ctx, &wg, slots)
		// On the embedded store a scan's cost grows with the events stored;
		// spacing scans by their own duration keeps them to about half of
		// the store's time, however often Wake is called.
		notBefore := time.Now().Add(r.took)
		wait := n.o.PollInterval
		if r.err == nil && r.full && r.dispatched > 0 {
			wait = 0 // more may be due than one batch held
		}
		if next, ok := n.nextRetry(); ok {
			wait = min(wait, max(next.Sub(n.o.Now()), 0))
		}
		pause(ctx, timer, wait, n.wake)
		pause(ctx, timer, time.Until(notBefore), nil)
	}
	return nil
}

// pause waits d, less when ctx ends or wake (if not nil) fires.
func pause(ctx context.Context, timer *time.Timer, d time.Duration, wake <-chan struct{}) {
	if d <= 0 {
		return
	}
	timer.Reset(d)
	select {
	case <-ctx.Done():
	case <-wake:
	case <-timer.C:
	}
	timer.Stop()
}

type scanResult struct {
	dispatched int
	full       bool // the batch was full: more may be due
	took       time.Duration
	err        error
}

// scan reads the due deliveries and hands each one not in flight to a worker.
func (n *Notifier) scan(ctx context.Context, wg *sync.WaitGroup, slots chan struct{}) (r scanResult) {
	now := n.o.Now()
	n.mu.Lock()
	clear(n.released)
	n.retries.popThrough(now)
	n.mu.Unlock()

	began := time.Now()
	evs, err := n.store.DueDeliveries(ctx, now, n.batch)
	r.took = time.Since(began)
	if err != nil {
		if ctx.Err() == nil {
			n.log.Error("notify: reading due deliveries", "err", err)
		}
		r.err = err
		return r
	}
	r.full = len(evs) == n.batch
	for _, ev := range evs {
		if ev.Delivery == nil || ev.Delivery.State != events.DeliveryPending || !n.claim(ev.ID) {
			continue
		}
		select {
		case slots <- struct{}{}:
		case <-ctx.Done():
			n.release(ev.ID, time.Time{})
			return r
		}
		r.dispatched++
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-slots }()
			n.release(ev.ID, n.handle(ctx, ev))
		}()
	}
	return r
}

// claim marks an event in flight; false when it is already, or when it was
// released after this scan read it (the scan's copy may be stale).
func (n *Notifier) claim(id string) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if _, ok := n.inflight[id]; ok {
		return false
	}
	if _, ok := n.released[id]; ok {
		return false
	}
	n.inflight[id] = struct{}{}
	return true
}

// release ends a claim once the event's new state is written (or kept in
// unwritten), so the next scan sees what happened. A non-zero retryAt is when
// the event falls due again; it is remembered in the same step, so a scan
// either reads the new state or leaves that time for the next one.
func (n *Notifier) release(id string, retryAt time.Time) {
	n.mu.Lock()
	delete(n.inflight, id)
	n.released[id] = struct{}{}
	soonest := false
	if !retryAt.IsZero() {
		soonest = len(n.retries) == 0 || retryAt.Before(n.retries[0])
		heap.Push(&n.retries, retryAt)
	}
	n.mu.Unlock()
	if soonest {
		n.Wake()
	}
}

func (n *Notifier) nextRetry() (time.Time, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if len(n.retries) == 0 {
		return time.Time{}, false
	}
	return n.retries[0], true
}

// timeHeap is a min-heap of retry times.
type timeHeap []time.Time

func (h timeHeap) Len() int           { return len(h) }
func (h timeHeap) Less(i, j int) bool { return h[i].Before(h[j]) }
func (h timeHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *timeHeap) Push(x any)        { *h = append(*h, x.(time.Time)) }
func (h *timeHeap) Pop() any {
	old := *h
	t := old[len(old)-1]
	*h = old[:len(old)-1]
	return t
}

// popThrough drops the times a scan at now covers.
func (h *timeHeap) popThrough(now time.Time) {
	for len(*h) > 0 && !(*h)[0].After(now) {
		heap.Pop(h)
	}
}
