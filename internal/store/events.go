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
// per event: nil, ErrDuplicate (a unique key — sequence or dedupe key — is
// taken), or another error.
func (s *Store) InsertEvents(ctx context.Context, evs []*events.Event) ([]error, error) {
	docs := make([]any, len(evs))
	for i, e := range evs {
		docs[i] = e
	}
	errs := make([]error, len(evs))
	_, err := s.db.Collection(colEvents).InsertMany(ctx, docs, options.InsertMany().SetOrdered(false))
	if err == nil {
		return errs, nil
	}
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
	return errs, nil
}

// EventsByDedupeKey returns the stored events of an instance among keys.
func (s *Store) EventsByDedupeKey(ctx context.Context, instanceID string, keys []string) ([]*events.Event, error) {
	cur, err := s.db.Collection(colEvents).Find(ctx, bson.D{
		{Key: "instanceId", Value: instanceID},
		{Key: "dedupeKey", Value: bson.D{{Key: "$in", Value: keys}}},
	})
	if err != nil {
		return nil, wrap("find events by dedupe key", err)
	}
	var out []*events.Event
	return out, wrap("find events by dedupe key", cur.All(ctx, &out))
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
// and due at now, oldest due first.
func (s *Store) DueDeliveries(ctx context.Context, now time.Time, limit int) ([]*events.Event, error) {
	cur, err := s.db.Collection(colEvents).Find(ctx, bson.D{
		{Key: "delivery.state", Value: events.DeliveryPending},
		{Key: "delivery.nextAttemptAt", Value: bson.D{{Key: "$lte", Value: now}}},
	}, options.Find().SetSort(bson.D{{Key: "delivery.nextAttemptAt", Value: 1}}).SetLimit(int64(limit)))
	if err != nil {
		return nil, wrap("due deliveries", err)
	}
	var out []*events.Event
	return out, wrap("due deliveries", cur.All(ctx, &out))
}

// SetDelivery records an event's new delivery state. The notifier is the
// single writer of delivery state, one event at a time.
func (s *Store) SetDelivery(ctx context.Context, eventID string, d events.Delivery) error {
	_, err := s.db.Collection(colEvents).UpdateOne(ctx, bson.D{{Key: "_id", Value: eventID}}, bson.D{{Key: "$set", Value: bson.D{{Key: "delivery", Value: d}}}})
	return wrap("set delivery", err)
}

// DeleteEventsOf removes every event and delivery attempt of an instance.
func (s *Store) DeleteEventsOf(ctx context.Context, instanceID string) error {
	f := bson.D{{Key: "instanceId", Value: instanceID}}
	if _, err := s.db.Collection(colEvents).DeleteMany(ctx, f); err != nil {
		return wrap("delete events", err)
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
