package store_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/leadstream/leadstream/internal/events"
	"github.com/leadstream/leadstream/internal/store"
	"github.com/leadstream/leadstream/internal/store/storetest"
)

// A code is redeemed exactly once even when 50 redemptions race.
func TestRedeemOAuthCodeOnceUnderConcurrency(t *testing.T) {
	s := storetest.New(t)
	ctx := context.Background()
	var wins, dups atomic.Int32
	var wg sync.WaitGroup
	for range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := s.RedeemOAuthCode(ctx, "code-hash", time.Now())
			switch {
			case err == nil:
				wins.Add(1)
			case errors.Is(err, store.ErrDuplicate):
				dups.Add(1)
			default:
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if wins.Load() != 1 || dups.Load() != 49 {
		t.Fatalf("wins=%d dups=%d, want 1 and 49", wins.Load(), dups.Load())
	}
}

// Concurrent UpdateInstance calls on one instance lose none of their changes.
func TestUpdateInstanceSerialised(t *testing.T) {
	s := storetest.New(t)
	ctx := context.Background()
	now := time.Now().UTC()
	if err := s.InsertInstance(ctx, store.Instance{ID: "i1", OrgID: "o1", CreatedAt: now, UpdatedAt: now}); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for n := range 30 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := s.UpdateInstance(ctx, "o1", "i1", func(in *store.Instance) error {
				in.Tags = append(in.Tags, fmt.Sprint(n))
				return nil
			})
			if err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	in, err := s.Instance(ctx, "o1", "i1")
	if err != nil || len(in.Tags) != 30 {
		t.Fatalf("tags=%d err=%v, want 30", len(in.Tags), err)
	}
	if _, err := s.Instance(ctx, "o2", "i1"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("other org sees the instance: %v", err)
	}
}

// Batch inserts report a taken sequence number or id per event.
func TestInsertEventsReportsDuplicates(t *testing.T) {
	s := storetest.New(t)
	ctx := context.Background()
	ev := func(id string, seq int64, key string) *events.Event {
		return &events.Event{ID: id, InstanceID: "i1", OrgID: "o1", Seq: seq, DedupeKey: key, Payload: events.JSON(`{"a":1}`)}
	}
	errs, err := s.InsertEvents(ctx, []*events.Event{ev("a", 1, "k1"), ev("b", 2, "k2")})
	if err != nil || errs[0] != nil || errs[1] != nil {
		t.Fatalf("first batch: %v %v", errs, err)
	}
	// c takes a used sequence number, a again is a used id; e is new.
	errs, err = s.InsertEvents(ctx, []*events.Event{ev("c", 2, "k3"), ev("a", 3, "k1"), ev("e", 3, "k4")})
	if err != nil {
		t.Fatal(err)
	}
	if !errors.Is(errs[0], store.ErrDuplicate) || !errors.Is(errs[1], store.ErrDuplicate) || errs[2] != nil {
		t.Fatalf("errs = %v", errs)
	}
	max, err := s.MaxSeq(ctx, "i1")
	if err != nil || max != 3 {
		t.Fatalf("max=%d err=%v", max, err)
	}
	got, err := s.EventsAfter(ctx, "o1", "i1", 1, 10)
	if err != nil || len(got) != 2 || got[0].Seq != 2 || got[1].Seq != 3 || string(got[0].Payload) != `{"a":1}` {
		t.Fatalf("after 1: %+v %v", got, err)
	}
	if got, _ := s.EventsAfter(ctx, "o2", "i1", 0, 10); len(got) != 0 {
		t.Fatalf("other org reads events: %d", len(got))
	}
}
