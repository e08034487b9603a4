package events

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/google/uuid"
)

// ErrClosed means the ingester has stopped and takes no more events.
var ErrClosed = errors.New("events: ingester closed")

// MaxPage is the most drafts one IngestPage appends (all or none).
const MaxPage = 1000

// Draft is an event before it is logged: what a source knows.
type Draft struct {
	InstanceID string
	OrgID      string
	Source     Source
	DedupeKey  string // Marketo's marketoGUID; "" gives a fresh id
	EventType  string
	ObjectType string
	ObjectID   *string
	OccurredAt time.Time
	Payload    JSON
	Notify     bool // the instance has a callback URL: deliver the event there
}

// Result is the outcome of one draft.
type Result struct {
	Event *Event
	// Duplicate: the log already had an event with this id (a publish
	// repeated within the log's de-duplication window); Event carries the
	// logged one's cursor.
	Duplicate bool
}

// Log is where events are appended; *eventlog.Log has it. Both calls
// return once the log acknowledged, with each event's Seq set.
type Log interface {
	Append(ctx context.Context, e *Event) (duplicate bool, err error)
	// AppendPage appends events atomically (all or none) and keeps pos
	// with them.
	AppendPage(ctx context.Context, evs []*Event, pos Position) error
}

// IngesterOptions tunes the ingester.
type IngesterOptions struct {
	Logger *slog.Logger
	// Appended, when set, is told how long each append took and how many
	// events it carried. It must not block.
	Appended func(d time.Duration, n int, src Source)
}

// Ingester turns drafts into events and appends them to the log. It does
// not publish: every replica's live tail of the log does, so a subscriber
// sees an event whichever replica took it. Concurrent callers are batched
// by the log's connection (asynchronous publishes, acknowledged in bulk).
type Ingester struct {
	log  Log
	opts IngesterOptions

	mu     sync.RWMutex
	closed bool
	wg     sync.WaitGroup // appends in flight
}

// NewIngester returns an ingester appending to l; Close waits for appends
// in flight.
func NewIngester(l Log, o IngesterOptions) *Ingester {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return &Ingester{log: l, opts: o}
}

// Close stops taking events and waits for the appends in flight.
func (in *Ingester) Close() {
	in.mu.Lock()
	in.closed = true
	in.mu.Unlock()
	in.wg.Wait()
}

func (in *Ingester) begin() bool {
	in.mu.RLock()
	defer in.mu.RUnlock()
	if in.closed {
		return false
	}
	in.wg.Add(1)
	return true
}

// Ingest appends one event and returns once the log acknowledged it.
func (in *Ingester) Ingest(ctx context.Context, d Draft) (Result, error) {
	if !in.begin() {
		return Result{}, ErrClosed
	}
	defer in.wg.Done()
	e := newEvent(d, now())
	start := time.Now()
	dup, err := in.log.Append(ctx, e)
	if err != nil {
		in.opts.Logger.Error("ingest failed", "instance", d.InstanceID, "err", err)
		return Result{}, fmt.Errorf("events: append: %w", err)
	}
	if in.opts.Appended != nil {
		in.opts.Appended(time.Since(start), 1, d.Source)
	}
	return Result{Event: e, Duplicate: dup}, nil
}

// IngestPage appends the drafts of one instance's page, all or none, in
// order, with the poller's position, and returns once the log acknowledged.
func (in *Ingester) IngestPage(ctx context.Context, drafts []Draft, pos Position) ([]Result, error) {
	if len(drafts) == 0 {
		return nil, nil
	}
	if len(drafts) > MaxPage {
		return nil, fmt.Errorf("events: a page holds at most %d events, not %d", MaxPage, len(drafts))
	}
	for _, d := range drafts[1:] {
		if d.InstanceID != drafts[0].InstanceID {
			return nil, errors.New("events: IngestPage takes drafts of one instance")
		}
	}
	if !in.begin() {
		return nil, ErrClosed
	}
	defer in.wg.Done()
	t := now()
	evs := make([]*Event, len(drafts))
	for i, d := range drafts {
		evs[i] = newEvent(d, t)
	}
	start := time.Now()
	if err := in.log.AppendPage(ctx, evs, pos); err != nil {
		in.opts.Logger.Error("ingest failed", "instance", drafts[0].InstanceID, "events", len(evs), "err", err)
		return nil, fmt.Errorf("events: append page: %w", err)
	}
	if in.opts.Appended != nil {
		in.opts.Appended(time.Since(start), len(evs), drafts[0].Source)
	}
	out := make([]Result, len(evs))
	for i, e := range evs {
		out[i] = Result{Event: e}
	}
	return out, nil
}

// now is milliseconds: what the log's JSON keeps, so a live event and its
// replay carry the same times.
func now() time.Time { return time.Now().UTC().Truncate(time.Millisecond) }

func newEvent(d Draft, now time.Time) *Event {
	id := uuid.NewString()
	if d.DedupeKey != "" {
		id = eventID(d.InstanceID, d.DedupeKey)
	}
	e := &Event{
		ID: id, InstanceID: d.InstanceID, OrgID: d.OrgID, DedupeKey: d.DedupeKey,
		Source: d.Source, EventType: d.EventType, ObjectType: d.ObjectType, ObjectID: d.ObjectID,
		OccurredAt: d.OccurredAt.UTC().Truncate(time.Millisecond), ReceivedAt: now, Payload: d.Payload, Notify: d.Notify,
	}
	if e.OccurredAt.IsZero() {
		e.OccurredAt = now
	}
	return e
}

// idSpace names the ids derived from dedupe keys.
var idSpace = uuid.MustParse("7c5d4a52-8f0e-4b61-9a53-2f8e3c1d0b7a")

// eventID is a keyed event's id: derived from its instance and Marketo's
// key, so the same activity always has the same id (receivers of callbacks
// deduplicate on it).
func eventID(instanceID, key string) string {
	return uuid.NewSHA1(idSpace, []byte(instanceID+"\x00"+key)).String()
}
