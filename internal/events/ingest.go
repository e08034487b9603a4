package events

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/google/uuid"
)

// ErrClosed means the ingester has stopped and takes no more events.
var ErrClosed = errors.New("events: ingester closed")

// ErrDuplicateKey is what Store.InsertEvents reports for an event whose
// sequence number or dedupe key is taken.
var ErrDuplicateKey = errors.New("events: duplicate key")

// Draft is an event before it is stored: what a source knows.
type Draft struct {
	InstanceID string
	OrgID      string
	Source     Source
	DedupeKey  string // Marketo's marketoGUID; "" gives a fresh one
	EventType  string
	ObjectType string
	ObjectID   *string
	OccurredAt time.Time
	Payload    JSON
	Notify     bool // the instance has a callback URL: queue a delivery
}

// Result is the outcome of one draft.
type Result struct {
	Event     *Event
	Duplicate bool // already stored before; Event is the stored one
	Err       error
}

// Store is what ingest needs from the database.
type Store interface {
	// InsertEvents reports, per event, nil or an error matching ErrDuplicateKey.
	InsertEvents(ctx context.Context, evs []*Event) ([]error, error)
	// EventsByID returns the events among ids that are stored.
	EventsByID(ctx context.Context, ids []string) ([]*Event, error)
	// DeleteEvents removes events by id (to take back sequence numbers).
	DeleteEvents(ctx context.Context, ids []string) error
	// DequeueDeliveries drops queued deliveries by event id.
	DequeueDeliveries(ctx context.Context, ids []string) error
	MaxSeq(ctx context.Context, instanceID string) (int64, error)
}

// Publisher receives stored events in cursor order.
type Publisher interface {
	PublishAll(evs []*Event)
}

// IngesterOptions tunes the ingester.
type IngesterOptions struct {
	Shards   int // writers; an instance always goes to the same one (default 2)
	MaxBatch int // events per database write (default 500)
	// Linger is how long a writer waits for more callers while they arrive
	// concurrently (default 1ms; negative: never).
	Linger time.Duration
	Logger *slog.Logger
	// Stored is called after each batch with the new events (for example to
	// wake the notifier); it must not block.
	Stored func(evs []*Event)
}

// Ingester stores events once, with a per-instance increasing cursor, then
// publishes them. Each instance has one writer goroutine in the process (its
// shard), because the embedded store loses concurrent counter updates; the
// unique (instanceId, seq) index is the safety net across replicas. Writers
// batch whatever arrived while the previous write ran (group commit).
type Ingester struct {
	store  Store
	pub    Publisher
	opts   IngesterOptions
	shards []chan *request
	wg     sync.WaitGroup
	mu     sync.RWMutex
	closed bool
	stop   chan struct{}
}

type request struct {
	ctx     context.Context
	drafts  []Draft
	results []Result
	done    chan struct{}
}

// NewIngester starts the writers; Close stops them after draining.
func NewIngester(s Store, pub Publisher, o IngesterOptions) *Ingester {
	if o.Shards < 1 {
		o.Shards = 2
	}
	if o.MaxBatch < 1 {
		o.MaxBatch = 500
	}
	if o.Linger == 0 {
		o.Linger = time.Millisecond
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	in := &Ingester{store: s, pub: pub, opts: o, stop: make(chan struct{})}
	for range o.Shards {
		ch := make(chan *request, 1024)
		in.shards = append(in.shards, ch)
		in.wg.Add(1)
		go in.writer(ch)
	}
	return in
}

// Close stops taking events, finishes what was queued, and returns.
func (in *Ingester) Close() {
	in.mu.Lock()
	if in.closed {
		in.mu.Unlock()
		return
	}
	in.closed = true
	for _, ch := range in.shards {
		close(ch)
	}
	in.mu.Unlock()
	in.wg.Wait()
}

// Ingest stores one event and publishes it.
func (in *Ingester) Ingest(ctx context.Context, d Draft) (Result, error) {
	rs, err := in.IngestAll(ctx, []Draft{d})
	if err != nil {
		return Result{}, err
	}
	return rs[0], rs[0].Err
}

// IngestAll stores drafts of one instance in order and publishes them. It
// returns when every draft is stored (or failed), so a caller acknowledges
// only what is durable.
func (in *Ingester) IngestAll(ctx context.Context, drafts []Draft) ([]Result, error) {
	if len(drafts) == 0 {
		return nil, nil
	}
	for _, d := range drafts[1:] {
		if d.InstanceID != drafts[0].InstanceID {
			return nil, errors.New("events: IngestAll takes drafts of one instance")
		}
	}
	r := &request{ctx: ctx, drafts: drafts, results: make([]Result, len(drafts)), done: make(chan struct{})}
	in.mu.RLock()
	if in.closed {
		in.mu.RUnlock()
		return nil, ErrClosed
	}
	h := fnv.New32a()
	h.Write([]byte(drafts[0].InstanceID))
	ch := in.shards[int(h.Sum32())%len(in.shards)]
	select {
	case ch <- r:
	case <-ctx.Done():
		in.mu.RUnlock()
		return nil, ctx.Err()
	}
	in.mu.RUnlock()
	// Once queued, the request is finished even if ctx ends, so that
	// nothing half-stored is left behind; we only stop waiting.
	select {
	case <-r.done:
		return r.results, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (in *Ingester) writer(ch chan *request) {
	defer in.wg.Done()
	w := &shardWriter{in: in, lastSeq: map[string]int64{}}
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	concurrent := false // the last batch had several callers
	for r := range ch {
		batch := []*request{r}
		n := len(r.drafts)
		// While callers arrive concurrently, wait a moment for more of them:
		// each write costs a transaction (an fsync), whatever its size. A
		// lone caller is written at once.
		if concurrent && in.opts.Linger > 0 {
			timer.Reset(in.opts.Linger)
		}
	drain:
		for n < in.opts.MaxBatch {
			select {
			case r2, ok := <-ch:
				if !ok {
					break drain
				}
				batch = append(batch, r2)
				n += len(r2.drafts)
				continue
			default:
			}
			if !concurrent || in.opts.Linger <= 0 {
				break
			}
			select {
			case r2, ok := <-ch:
				if !ok {
					break drain
				}
				batch = append(batch, r2)
				n += len(r2.drafts)
			case <-timer.C:
				break drain
			}
		}
		timer.Stop()
		concurrent = len(batch) > 1
		w.write(batch)
	}
}

type shardWriter struct {
	in      *Ingester
	lastSeq map[string]int64 // per instance, owned by this goroutine
}

// slot ties a draft to its request and position.
type slot struct {
	r     *request
	i     int
	ev    *Event
	key   string
	id    string
	order int // arrival order within the batch
}

func (w *shardWriter) write(batch []*request) {
	// The writer outlives callers' contexts: a queued event is stored even
	// if its caller stopped waiting.
	n := 0
	for _, r := range batch {
		n += len(r.drafts)
	}
	// Keyed drafts cost one lookup each; give big batches time for them.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second+time.Duration(n)*50*time.Millisecond)
	defer cancel()
	// Milliseconds: what the store keeps, so a live event and its replay
	// carry the same times.
	now := time.Now().UTC().Truncate(time.Millisecond)

	var pending []*slot
	byKey := map[[2]string]*slot{} // first slot of each key in this batch
	for _, r := range batch {
		for i, d := range r.drafts {
			// A keyed event's id is derived from its key, so a repeat
			// collides; an unkeyed one (a webhook) gets a fresh id.
			key, id := d.DedupeKey, ""
			if key == "" {
				id = uuid.NewString()
				key = "gen:" + id
			} else {
				id = eventID(d.InstanceID, key)
			}
			s := &slot{r: r, i: i, key: key, id: id, order: len(pending)}
			pending = append(pending, s)
			k := [2]string{d.InstanceID, key}
			if _, seen := byKey[k]; seen {
				continue // a repeat within the batch, answered at the end
			}
			byKey[k] = s
		}
	}
	var toInsert []*slot
	for _, s := range pending {
		d := s.r.drafts[s.i]
		if byKey[[2]string{d.InstanceID, s.key}] != s {
			continue // in-batch repeat, answered below
		}
		s.ev = &Event{
			ID: s.id, InstanceID: d.InstanceID, OrgID: d.OrgID, DedupeKey: s.key,
			Source: d.Source, EventType: d.EventType, ObjectType: d.ObjectType, ObjectID: d.ObjectID,
			OccurredAt: d.OccurredAt.UTC().Truncate(time.Millisecond), ReceivedAt: now, Payload: d.Payload,
		}
		if s.ev.OccurredAt.IsZero() {
			s.ev.OccurredAt = now
		}
		if d.Notify {
			s.ev.Delivery = &Delivery{State: DeliveryPending, NextAttemptAt: &now}
		}
		toInsert = append(toInsert, s)
	}

	// Insert first, look up only on a collision. Repeats (a poller page
	// read again after a crash) collide on _id, which the unique index
	// finds cheaply, while a lookup before every insert would read the whole
	// collection on the embedded store. A collision costs a repair: events
	// stored after it in the batch give their sequence numbers back and go
	// again, so cursors stay gap-free.
	stored := map[*slot]bool{}
	for attempt := 0; len(toInsert) > 0; attempt++ {
		if attempt == 5 {
			w.failSlots(toInsert, errors.New("events: could not take a sequence number after 5 tries"))
			break
		}
		if err := w.assignSeqs(ctx, toInsert); err != nil {
			w.failSlots(toInsert, err)
			break
		}
		evs := make([]*Event, len(toInsert))
		for i, s := range toInsert {
			evs[i] = s.ev
		}
		errs, err := w.in.store.InsertEvents(ctx, evs)
		if err != nil {
			// Unknown outcome: forget cached sequences so the next write rereads them.
			clear(w.lastSeq)
			w.failSlots(toInsert, fmt.Errorf("events: store: %w", err))
			break
		}
		var collided []*slot
		for i, s := range toInsert {
			switch {
			case errs[i] == nil:
				s.r.results[s.i] = Result{Event: s.ev}
				stored[s] = true
			case errors.Is(errs[i], ErrDuplicateKey):
				collided = append(collided, s)
			default:
				s.r.results[s.i] = Result{Err: fmt.Errorf("events: store: %w", errs[i])}
			}
		}
		if len(collided) == 0 {
			break
		}
		retry, err := w.repair(ctx, toInsert, collided, stored)
		if err != nil {
			w.failSlots(toInsert, err)
			for _, s := range toInsert {
				delete(stored, s)
			}
			break
		}
		toInsert = retry
	}
	var published []*Event
	for _, s := range pending {
		if stored[s] {
			published = append(published, s.ev)
		}
	}
	// In-batch repeats point at the first occurrence's outcome.
	for _, s := range pending {
		d := s.r.drafts[s.i]
		if first := byKey[[2]string{d.InstanceID, s.key}]; first != s && first != nil {
			res := first.r.results[first.i]
			res.Duplicate = res.Err == nil
			s.r.results[s.i] = res
		}
	}
	if len(published) > 0 {
		if w.in.pub != nil {
			w.in.pub.PublishAll(published)
		}
		if w.in.opts.Stored != nil {
			w.in.opts.Stored(published)
		}
	}
	for _, r := range batch {
		close(r.done)
	}
}

// repair handles the collisions of one insert. A collision whose event is
// stored is a repeat: it is answered with the stored event. Otherwise
// another writer (a replica) took the sequence number. Either way the
// events of that instance stored after the first collision are deleted
// again and retried with the ones that collided, so no sequence number is
// skipped. It returns what to insert next, in arrival order.
func (w *shardWriter) repair(ctx context.Context, attempted, collided []*slot, stored map[*slot]bool) ([]*slot, error) {
	ids := make([]string, len(collided))
	for i, s := range collided {
		ids[i] = s.ev.ID
	}
	found, err := w.in.store.EventsByID(ctx, ids)
	if err != nil {
		return nil, fmt.Errorf("events: %w", err)
	}
	existing := map[string]*Event{}
	for _, e := range found {
		existing[e.ID] = e
	}
	firstBad := map[string]int64{} // per instance, the lowest sequence not taken
	var retry []*slot
	var unqueue []string
	for _, s := range collided {
		inst := s.ev.InstanceID
		if first, ok := firstBad[inst]; !ok || s.ev.Seq < first {
			firstBad[inst] = s.ev.Seq
		}
		if e, ok := existing[s.ev.ID]; ok {
			s.r.results[s.i] = Result{Event: e, Duplicate: true}
			// The insert queued a delivery for the repeat; the stored event
			// owns its delivery, so that entry goes unless it is pending.
			if s.ev.Delivery != nil && (e.Delivery == nil || e.Delivery.State != DeliveryPending) {
				unqueue = append(unqueue, e.ID)
			}
			continue
		}
		retry = append(retry, s)
	}
	if len(unqueue) > 0 {
		if err := w.in.store.DequeueDeliveries(ctx, unqueue); err != nil {
			return nil, fmt.Errorf("events: %w", err)
		}
	}
	var undo []string
	for _, s := range attempted {
		if first, ok := firstBad[s.ev.InstanceID]; ok && stored[s] && s.ev.Seq > first {
			undo = append(undo, s.ev.ID)
			delete(stored, s)
			retry = append(retry, s)
		}
	}
	if len(undo) > 0 {
		if err := w.in.store.DeleteEvents(ctx, undo); err != nil {
			return nil, fmt.Errorf("events: %w", err)
		}
	}
	for inst := range firstBad {
		delete(w.lastSeq, inst) // reread: another writer may have moved on
	}
	slices.SortFunc(retry, func(a, b *slot) int { return a.order - b.order })
	return retry, nil
}

// assignSeqs gives each slot the next sequence number of its instance, in
// the order the drafts arrived.
func (w *shardWriter) assignSeqs(ctx context.Context, slots []*slot) error {
	for _, s := range slots {
		inst := s.ev.InstanceID
		last, ok := w.lastSeq[inst]
		if !ok {
			var err error
			if last, err = w.in.store.MaxSeq(ctx, inst); err != nil {
				return fmt.Errorf("events: %w", err)
			}
		}
		last++
		s.ev.Seq = last
		w.lastSeq[inst] = last
	}
	return nil
}

// idSpace names the ids derived from dedupe keys.
var idSpace = uuid.MustParse("7c5d4a52-8f0e-4b61-9a53-2f8e3c1d0b7a")

// eventID is the event's id: derived from its instance and dedupe key, so
// that a repeat of one Marketo activity collides on _id.
func eventID(instanceID, key string) string {
	return uuid.NewSHA1(idSpace, []byte(instanceID+"\x00"+key)).String()
}

func (w *shardWriter) failSlots(slots []*slot, err error) {
	w.in.opts.Logger.Error("ingest failed", "err", err, "events", len(slots))
	for _, s := range slots {
		s.r.results[s.i] = Result{Err: err}
	}
}

func (w *shardWriter) failAll(batch []*request, err error) {
	w.in.opts.Logger.Error("ingest failed", "err", err)
	for _, r := range batch {
		for i := range r.results {
			r.results[i] = Result{Err: fmt.Errorf("events: %w", err)}
		}
		close(r.done)
	}
}
