package store_test

import (
	"context"
	"testing"
	"time"

	"github.com/leadstream/leadstream/internal/store"
	"github.com/leadstream/leadstream/internal/store/storetest"
)

// A store reopened on the same directory keeps its data and indexes.
func TestReopenKeepsData(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	s := storetest.Open(t, dir)
	now := time.Now().UTC().Truncate(time.Millisecond)
	if err := s.InsertInstance(ctx, store.Instance{ID: "i1", OrgID: "o1", Name: "kept", CreatedAt: now, UpdatedAt: now}); err != nil {
		t.Fatal(err)
	}
	s.Close(ctx)
	s2 := storetest.Open(t, dir)
	in, err := s2.Instance(ctx, "o1", "i1")
	if err != nil || in.Name != "kept" {
		t.Fatalf("after reopen: %+v %v", in, err)
	}
	if err := s2.RedeemOAuthCode(ctx, "h", now); err != nil {
		t.Fatal(err)
	}
}
