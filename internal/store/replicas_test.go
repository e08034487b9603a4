package store_test

import (
	"context"
	"sync"
	"testing"

	"github.com/leadstream/leadstream/internal/store"
)

// Replicas that start together open one fresh database at the same time:
// every one of them starts, with the indexes in place (the unique ones are
// what exclusive claims rely on).
func TestReplicasOpenTogether(t *testing.T) {
	uri, stop, err := store.StartEmbedded(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	const n = 4
	stores := make([]*store.Store, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			stores[i], errs[i] = store.Open(context.Background(), store.Options{URI: uri, Database: "together"})
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("replica %d: %v", i, err)
		}
		defer stores[i].Close(context.Background())
	}
	ctx := context.Background()
	if err := stores[0].InsertOrganization(ctx, store.Organization{ID: "o1", SecretHash: "h"}); err != nil {
		t.Fatal(err)
	}
	if err := stores[1].InsertOrganization(ctx, store.Organization{ID: "o2", SecretHash: "h"}); err == nil {
		t.Fatal("a second organization with the same secret hash was stored: the unique index is missing")
	}
}
