package store

import (
	"context"
	"testing"
	"time"

	"github.com/leadstream/leadstream/internal/events"
)

// An entry left unconfirmed by a crash is delivered if its event made it
// into the store, dropped if not, and left alone while it is young.
func TestUnconfirmedQueueEntries(t *testing.T) {
	s, err := Open(context.Background(), Options{DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(context.Background())
	ctx := context.Background()
	now := time.Now().UTC().Truncate(time.Millisecond)
	old := now.Add(-2 * orphanGrace)
	pending := events.Delivery{State: events.DeliveryPending, NextAttemptAt: &old}
	stored := &events.Event{ID: "stored", InstanceID: "i1", OrgID: "o1", Seq: 1, Payload: events.JSON(`{}`), Delivery: &pending}
	if _, err := s.db.Collection(colEvents).InsertOne(ctx, stored); err != nil {
		t.Fatal(err)
	}
	for _, q := range []queueEntry{
		{EventID: "stored", InstanceID: "i1", NextAttemptAt: old, Delivery: pending},
		{EventID: "lost", InstanceID: "i1", NextAttemptAt: old, Delivery: pending},
		{EventID: "young", InstanceID: "i1", NextAttemptAt: now, Delivery: pending},
	} {
		if _, err := s.db.Collection(colQueue).InsertOne(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	due, err := s.DueDeliveries(ctx, now.Add(time.Second), 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(due) != 1 || due[0].ID != "stored" || due[0].Delivery.State != events.DeliveryPending {
		t.Fatalf("due = %+v", due)
	}
	n, _ := s.db.Collection(colQueue).CountDocuments(ctx, map[string]any{})
	if n != 2 {
		t.Fatalf("%d queue entries left, want the stored one and the young one", n)
	}
	if _, ok, _ := s.PendingDelivery(ctx, "lost"); ok {
		t.Fatal("the entry without an event was kept")
	}
}
