package store_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

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
