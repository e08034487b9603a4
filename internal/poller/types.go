package poller

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/leadstream/leadstream/internal/marketo"
)

// typesTTL is how long a subscription's activity type names are kept:
// Marketo's list changes rarely and its docs ask to cache it for a day.
const typesTTL = 24 * time.Hour

// typesRetryAfterRefusal is how long a subscription that refuses the type
// list (for example an API user without that permission) keeps fallback
// names before the poller asks again.
const typesRetryAfterRefusal = time.Hour

// typesRetryAfterFailure is how long stale names are used after a failed
// refresh before the poller asks again.
const typesRetryAfterFailure = 5 * time.Minute

// typeCache holds activity type names per Marketo REST host, shared by
// every instance on that subscription.
type typeCache struct {
	ttl time.Duration

	mu    sync.Mutex
	hosts map[string]*hostTypes
}

// hostTypes is one subscription's names. The map is replaced, never
// changed, so a caller may keep reading one it got.
type hostTypes struct {
	sem       chan struct{} // held while reading or fetching: one fetch at a time
	names     map[int]string
	expiresAt time.Time
}

func newTypeCache(ttl time.Duration) *typeCache {
	return &typeCache{ttl: ttl, hosts: map[string]*hostTypes{}}
}

// names returns the subscription's type names by id, fetching them with c
// when missing or older than the TTL. A failed refresh keeps stale names;
// a refusal (ErrBadRequest) gives no names for a while, so activities are
// named "activity <id>" rather than not polled at all.
func (tc *typeCache) names(ctx context.Context, host string, c *marketo.Client) (map[int]string, error) {
	tc.mu.Lock()
	h := tc.hosts[host]
	if h == nil {
		h = &hostTypes{sem: make(chan struct{}, 1)}
		tc.hosts[host] = h
	}
	tc.mu.Unlock()

	select {
	case h.sem <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	defer func() { <-h.sem }()

	now := time.Now()
	if h.names != nil && now.Before(h.expiresAt) {
		return h.names, nil
	}
	types, err := c.ActivityTypes(ctx)
	switch {
	case err == nil:
		names := make(map[int]string, len(types))
		for _, t := range types {
			names[t.ID] = t.Name
		}
		h.names, h.expiresAt = names, now.Add(tc.ttl)
	case h.names != nil && ctx.Err() == nil:
		// Keep the stale names for a while rather than stop polling.
		h.expiresAt = now.Add(min(tc.ttl, typesRetryAfterFailure))
	case errors.Is(err, marketo.ErrBadRequest):
		h.names, h.expiresAt = map[int]string{}, now.Add(typesRetryAfterRefusal)
	default:
		return nil, err
	}
	return h.names, nil
}
