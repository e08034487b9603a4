package quota_test

import (
	"sync"
	"testing"

	"github.com/leadstream/leadstream/internal/quota"
)

func TestCounter(t *testing.T) {
	c := quota.New(3)
	var rels []func()
	for i := range 3 {
		rel, ok := c.Acquire("a")
		if !ok {
			t.Fatalf("acquire %d refused", i)
		}
		rels = append(rels, rel)
	}
	if _, ok := c.Acquire("a"); ok {
		t.Fatal("a fourth was granted")
	}
	if _, ok := c.Acquire("b"); !ok {
		t.Fatal("another key is capped too")
	}
	rels[0]()
	rels[0]() // twice gives back once
	if c.Count("a") != 2 {
		t.Fatalf("count %d", c.Count("a"))
	}
	var wg sync.WaitGroup
	granted := make(chan func(), 100)
	for range 100 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if rel, ok := c.Acquire("c"); ok {
				granted <- rel
			}
		}()
	}
	wg.Wait()
	if len(granted) != 3 {
		t.Fatalf("%d granted concurrently, want 3", len(granted))
	}
}
