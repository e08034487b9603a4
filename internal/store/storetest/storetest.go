// Package storetest opens a fresh embedded store per test.
package storetest

import (
	"context"
	"testing"

	"github.com/leadstream/leadstream/internal/store"
)

// New starts an embedded store in t.TempDir() and closes it when the test ends.
func New(t testing.TB) *store.Store {
	t.Helper()
	return Open(t, t.TempDir())
}

// Open starts an embedded store in dir (for tests that reopen one directory).
func Open(t testing.TB, dir string) *store.Store {
	t.Helper()
	s, err := store.Open(context.Background(), store.Options{DataDir: dir})
	if err != nil {
		t.Fatalf("storetest: %v", err)
	}
	t.Cleanup(func() { s.Close(context.Background()) })
	return s
}
