package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.mongodb.org/mongo-driver/bson"
	"go.mongodb.org/mongo-driver/mongo"
	"go.mongodb.org/mongo-driver/mongo/options"

	"github.com/leadstream/leadstream/internal/events"
)

// InsertEvents writes a batch in one round trip (the embedded store takes a
// batch about ten times faster than single inserts). The answer has one entry
// per event: nil, ErrDuplicate (a unique key — id or sequence — is taken),
// or another error.
//
// Events with a pending delivery are first entered in the delivery queue, a
// small collection the notifier reads instead of the events (on the embedded
// store every lookup reads a whole collection), with a copy of the event.
// Queue first, confirmed after the events are in: a crash in between leaves
// an unconfirmed entry, which the notifier later checks against the events,
// never an event without its entry.
func (s *Store) InsertEvents(ctx context.Context, evs []*events.Event) ([]error, error) {
	var queue []any
	for _, e := range evs {
		if e.Delivery != nil && e.Delivery.State == events.DeliveryPending {
			queue = append(queue, queueEntry{EventID: e.ID, InstanceID: e.InstanceID, NextAttemptAt: deref(e.Delivery.NextAttemptAt), Delivery: *e.Delivery, Event: e})
		}
	}
	if len(queue) > 0 {
		_, err := s.db.Collection(colQueue).InsertMany(ctx, queue, options.InsertMany().SetOrdered(false))
		if err != nil && !onlyDuplicates(err) {
			return nil, wrap("queue deliveries", err)
		}
	}
	docs := make([]any, len(evs))
	for i, e := range evs {
		docs[i] = e
	}
	errs := make([]error, len(evs))
	_, err := s.db.Collection(colEvents).InsertMany(ctx, docs, options.InsertMany().SetOrdered(false))
	if err != nil {
		var bwe mongo.BulkWriteException
		if !errors.As(err, &bwe) || bwe.WriteConcernError != nil {
			return nil, wrap("insert events", err)
		}
		for _, we := range bwe.WriteErrors {
			if we.Index < 0 || we.Index >= len(errs) {
				return nil, wrap("insert events", err)
			}
			if mongo.IsDuplicateKeyError(we) {
				errs[we.Index] = fmt.Errorf("%w: %w", ErrDuplicate, events.ErrDuplicateKey)
			} else {
				errs[we.Index] = wrap("insert event", we)
			}
		}
	}
	if len(queue) > 0 {
		var ids []string
		for i, e := range evs {
			if errs[i] == nil && e.Delivery != nil && e.Delivery.State == events.DeliveryPending {
				ids = append(ids, e.ID)
			}
		}
		// A failed confirmation heals itself: the notifier checks
		// unconfirmed entries against the events after orphanGrace.
		_, _ = s.db.Collection(colQueue).UpdateMany(ctx, bson.D{{Key: "_id", Value: bson.D{{Key: "$in", Value: ids}}}},
			bson.D{{Key: "$set", Value: bson.D{{Key: "confirmed", Value: true}}}})
	}
	return errs, nil
}

// queueEntry is a pending delivery. While pending, its state lives here,
// in a small collection, and only the final state is written to the event:
// the embedded store's updates get slower as a collection grows.
type queueEntry struct {
	EventID       string          `bson:"_id"`
	InstanceID    string          `bson:"instanceId"`
	NextAttemptAt time.Time       `bson:"nextAttemptAt"`
	Delivery      events.Delivery `bson:"delivery"`
	Event         *events.Event   `bson:"event"`
	Confirmed     bool            `bson:"confirmed"` // the event is stored
}

// orphanGrace is how long an unconfirmed queue entry may wait for its
// event: the entry is written just before the event, so a young one is an
// insert in progress, not a leftover.
const orphanGrace = time.Minute

func onlyDuplicates(err error) bool {
	var bwe mongo.BulkWriteException
	if !errors.As(err, &bwe) || bwe.WriteConcernError != nil {
		return false
	}
	for _, we := range bwe.WriteErrors {
		if !mongo.IsDuplicateKeyError(we) {
			return false
		}
	}
	return true
}

func deref(t *time.Time) time.Time {
	if t == nil {
		return time.Time{}
	}
	return *t
}

// EventsByID returns the stored events among ids, one _id lookup each:
// the only lookup the embedded store answers without a full scan.
func (s *Store) EventsByID(ctx context.Context, ids []string) ([]*events.Event, error) {
	var out []*events.Event
	for _, id := range ids {
		e, err := s.Event(ctx, id)
		if errors.Is(err, ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		out = append(out, e)
	}
	return out, nil
}

// Event returns one event by id, whatever its organization.
func (s *Store) Event(ctx context.Context, id string) (*events.Event, error) {
	var e events.Event
	if err := s.db.Collection(colEvents).FindOne(ctx, bson.D{{Key: "_id", Value: id}}).Decode(&e); err != nil {
		return nil, wrap("find event", err)
	}
	return &e, nil
}

// MaxSeq returns the highest sequence number stored for an instance, 0 if none.
func (s *Store) MaxSeq(ctx context.Context, instanceID string) (int64, error) {
	var e events.Event
	err := s.db.Collection(colEvents).FindOne(ctx, bson.D{{Key: "instanceId", Value: instanceID}},
		options.FindOne().SetSort(bson.D{{Key: "seq", Value: -1}}).SetProjection(bson.D{{Key: "seq", Value: 1}})).Decode(&e)
	if errors.Is(err, mongo.ErrNoDocuments) {
		return 0, nil
	}
	return e.Seq, wrap("max seq", err)
}

// EventsAfter returns up to limit events of an organization's instance with a
// sequence number above after, oldest first.
func (s *Store) EventsAfter(ctx context.Context, orgID, instanceID string, after int64, limit int) ([]*events.Event, error) {
	cur, err := s.db.Collection(colEvents).Find(ctx, bson.D{
		{Key: "instanceId", Value: instanceID},
		{Key: "orgId", Value: orgID},
		{Key: "seq", Value: bson.D{{Key: "$gt", Value: after}}},
	}, options.Find().SetSort(bson.D{{Key: "seq", Value: 1}}).SetLimit(int64(limit)))
	if err != nil {
		return nil, wrap("events after", err)
	}
	out := make([]*events.Event, 0, limit)
	return out, wrap("events after", cur.All(ctx, &out))
}

// DueDeliveries returns up to limit events whose callback delivery is pending
// and due at now, oldest due first, with their current delivery state, from
// the queue alone. An unconfirmed entry older than orphanGrace is checked
// against the events: confirmed if its event is there, dropped if not (a
// crash between the two inserts, before the event was acknowledged).
func (s *Store) DueDeliveries(ctx context.Context, now time.Time, limit int) ([]*events.Event, error) {
	cur, err := s.db.Collection(colQueue).Find(ctx, bson.D{{Key: "nextAttemptAt", Value: bson.D{{Key: "$lte", Value: now}}}},
		options.Find().SetSort(bson.D{{Key: "nextAttemptAt", Value: 1}}).SetLimit(int64(limit)))
	if err != nil {
		return nil, wrap("due deliveries", err)
	}
	var due []queueEntry
	if err := cur.All(ctx, &due); err != nil {
		return nil, wrap("due deliveries", err)
	}
	out := make([]*events.Event, 0, len(due))
	for _, q := range due {
		if !q.Confirmed || q.Event == nil {
			if !q.NextAttemptAt.Before(now.Add(-orphanGrace)) {
				continue // being inserted
			}
			e, err := s.Event(ctx, q.EventID)
			if errors.Is(err, ErrNotFound) {
				if _, err := s.db.Collection(colQueue).DeleteOne(ctx, bson.D{{Key: "_id", Value: q.EventID}}); err != nil {
					return nil, wrap("drop queue entry", err)
				}
				continue
			}
			if err != nil {
				return nil, err
			}
			if _, err := s.db.Collection(colQueue).UpdateOne(ctx, bson.D{{Key: "_id", Value: q.EventID}},
				bson.D{{Key: "$set", Value: bson.D{{Key: "confirmed", Value: true}, {Key: "event", Value: e}}}}); err != nil {
				return nil, wrap("confirm queue entry", err)
			}
			q.Event = e
		}
		d := q.Delivery
		q.Event.Delivery = &d
		out = append(out, q.Event)
	}
	return out, nil
}

// PendingDelivery returns the current state of an event's pending
// delivery; ok is false when none is pending.
func (s *Store) PendingDelivery(ctx context.Context, eventID string) (events.Delivery, bool, error) {
	var q queueEntry
	err := s.db.Collection(colQueue).FindOne(ctx, bson.D{{Key: "_id", Value: eventID}}).Decode(&q)
	if errors.Is(err, mongo.ErrNoDocuments) {
		return events.Delivery{}, false, nil
	}
	if err != nil {
		return events.Delivery{}, false, wrap("pending delivery", err)
	}
	return q.Delivery, true, nil
}

// SetDelivery records an event's new delivery state: in its queue entry
// while pending, on the event itself once final. The notifier is the single
// writer of delivery state, one event at a time.
func (s *Store) SetDelivery(ctx context.Context, eventID string, d events.Delivery) error {
	q := s.db.Collection(colQueue)
	if d.State == events.DeliveryPending {
		_, err := q.UpdateOne(ctx, bson.D{{Key: "_id", Value: eventID}}, bson.D{{Key: "$set", Value: bson.D{
			{Key: "nextAttemptAt", Value: deref(d.NextAttemptAt)}, {Key: "delivery", Value: d}}}})
		return wrap("requeue delivery", err)
	}
	_, err := s.db.Collection(colEvents).UpdateOne(ctx, bson.D{{Key: "_id", Value: eventID}}, bson.D{{Key: "$set", Value: bson.D{{Key: "delivery", Value: d}}}})
	if err != nil {
		return wrap("set delivery", err)
	}
	_, err = q.DeleteOne(ctx, bson.D{{Key: "_id", Value: eventID}})
	return wrap("dequeue delivery", err)
}

// DeleteEventsOf removes every event and delivery attempt of an instance.
func (s *Store) DeleteEventsOf(ctx context.Context, instanceID string) error {
	f := bson.D{{Key: "instanceId", Value: instanceID}}
	if _, err := s.db.Collection(colEvents).DeleteMany(ctx, f); err != nil {
		return wrap("delete events", err)
	}
	if _, err := s.db.Collection(colQueue).DeleteMany(ctx, f); err != nil {
		return wrap("delete queued deliveries", err)
	}
	_, err := s.db.Collection(colAttempts).DeleteMany(ctx, f)
	return wrap("delete attempts", err)
}

// InsertAttempt records one delivery attempt.
func (s *Store) InsertAttempt(ctx context.Context, a events.Attempt) error {
	_, err := s.db.Collection(colAttempts).InsertOne(ctx, a)
	return wrap("insert attempt", err)
}

// Attempts returns an instance's latest delivery attempts, newest first.
func (s *Store) Attempts(ctx context.Context, instanceID string, limit int) ([]events.Attempt, error) {
	cur, err := s.db.Collection(colAttempts).Find(ctx, bson.D{{Key: "instanceId", Value: instanceID}},
		options.Find().SetSort(bson.D{{Key: "at", Value: -1}, {Key: "attempt", Value: -1}}).SetLimit(int64(limit)))
	if err != nil {
		return nil, wrap("attempts", err)
	}
	var out []events.Attempt
	return out, wrap("attempts", cur.All(ctx, &out))
}

// RequeueDelivery queues an event for delivery again with a fresh set of
// attempts. The queue entry is the claim: ErrDuplicate when the event is
// already pending.
func (s *Store) RequeueDelivery(ctx context.Context, ev *events.Event, now time.Time) error {
	d := events.Delivery{State: events.DeliveryPending, NextAttemptAt: &now}
	_, err := s.db.Collection(colQueue).InsertOne(ctx, queueEntry{EventID: ev.ID, InstanceID: ev.InstanceID, NextAttemptAt: now, Delivery: d, Event: ev, Confirmed: true})
	if err != nil {
		return wrap("requeue delivery", err)
	}
	_, err = s.db.Collection(colEvents).UpdateOne(ctx, bson.D{{Key: "_id", Value: ev.ID}}, bson.D{{Key: "$set", Value: bson.D{{Key: "delivery", Value: d}}}})
	return wrap("requeue delivery", err)
}

// DeleteEvents removes events by id, with any queued delivery of theirs.
func (s *Store) DeleteEvents(ctx context.Context, ids []string) error {
	f := bson.D{{Key: "_id", Value: bson.D{{Key: "$in", Value: ids}}}}
	if _, err := s.db.Collection(colQueue).DeleteMany(ctx, f); err != nil {
		return wrap("delete queued deliveries", err)
	}
	_, err := s.db.Collection(colEvents).DeleteMany(ctx, f)
	return wrap("delete events", err)
}

// DequeueDeliveries drops queued deliveries by event id.
func (s *Store) DequeueDeliveries(ctx context.Context, ids []string) error {
	_, err := s.db.Collection(colQueue).DeleteMany(ctx, bson.D{{Key: "_id", Value: bson.D{{Key: "$in", Value: ids}}}})
	return wrap("dequeue deliveries", err)
}
