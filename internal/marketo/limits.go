package marketo

import (
	"context"
	"net/url"
	"strings"
	"sync"
	"time"
)

// Production limits: half of Marketo's 100 calls per 20 s, and half of its
// 10 concurrent calls, leaving room for the customer's other integrations.
const (
	DefaultMaxCalls      = 50
	DefaultWindow        = 20 * time.Second
	DefaultMaxConcurrent = 5
)

// Limits keeps the calls to each Marketo subscription under its limits.
// Marketo counts calls per subscription, not per API user, so every Client
// created with the same *Limits and a REST URL on the same host shares one
// budget. Use one Limits for the whole process.
type Limits struct {
	maxCalls      int
	window        time.Duration
	maxConcurrent int

	mu    sync.Mutex
	hosts map[string]*hostLimiter
}

// NewLimits allows, per REST host, at most maxCalls calls starting in any
// span of window, and at most maxConcurrent calls in flight. A value <= 0
// lifts that limit. Production uses NewLimits(50, 20*time.Second, 5).
func NewLimits(maxCalls int, window time.Duration, maxConcurrent int) *Limits {
	return &Limits{
		maxCalls:      maxCalls,
		window:        window,
		maxConcurrent: maxConcurrent,
		hosts:         make(map[string]*hostLimiter),
	}
}

// forHost returns the limiter for the REST URL's host, creating it once.
func (l *Limits) forHost(key string) *hostLimiter {
	l.mu.Lock()
	defer l.mu.Unlock()
	h, ok := l.hosts[key]
	if !ok {
		h = newHostLimiter(l.maxCalls, l.window, l.maxConcurrent)
		l.hosts[key] = h
	}
	return h
}

// hostKey is the lower-cased host of a REST URL, without a default port,
// so that spellings of one subscription share a limiter.
// SubscriptionKey names the Marketo subscription a REST URL belongs to (its
// lower-cased host without a default port): calls to one key share
// Marketo's limits, and callers may share per-subscription caches by it.
func SubscriptionKey(restURL string) string {
	u, err := url.Parse(strings.TrimSpace(restURL))
	if err != nil || u.Host == "" {
		return restURL
	}
	return hostKey(u)
}

func hostKey(u *url.URL) string {
	host := strings.ToLower(u.Host)
	switch {
	case u.Scheme == "https" && strings.HasSuffix(host, ":443"):
		host = strings.TrimSuffix(host, ":443")
	case u.Scheme == "http" && strings.HasSuffix(host, ":80"):
		host = strings.TrimSuffix(host, ":80")
	}
	return host
}

// hostLimiter enforces the limits of one Marketo subscription.
//
// The call limit is a sliding log: starts holds the start times of the last
// maxCalls calls, and a call may start only once the oldest of them is more
// than window (plus a margin) ago. Unlike a token bucket, whose burst lets
// about twice the rate through in one window, this bounds every window.
type hostLimiter struct {
	sem    chan struct{} // one slot per call in flight; nil when unlimited
	span   time.Duration // window plus margin
	starts []time.Time   // ring of the last maxCalls start times
	max    int

	mu          sync.Mutex
	next        int       // index of the oldest start once the ring is full
	pausedUntil time.Time // set after a 606: no call starts before it
}

func newHostLimiter(maxCalls int, window time.Duration, maxConcurrent int) *hostLimiter {
	h := &hostLimiter{max: maxCalls}
	if maxConcurrent > 0 {
		h.sem = make(chan struct{}, maxConcurrent)
	}
	if maxCalls > 0 && window > 0 {
		// Marketo sees a call a little after we count it, and not always
		// equally late; the margin keeps its view of a window under the
		// limit too.
		h.span = window + min(window/10, time.Second)
		h.starts = make([]time.Time, 0, maxCalls)
	}
	return h
}

// acquire waits until a call may start, counts it as started, and returns
// the function that ends it. It gives up when ctx is done.
func (h *hostLimiter) acquire(ctx context.Context) (release func(), err error) {
	if h.sem != nil {
		select {
		case h.sem <- struct{}{}:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	release = func() {
		if h.sem != nil {
			<-h.sem
		}
	}
	for {
		wait := h.reserve(time.Now())
		if wait <= 0 {
			return release, nil
		}
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			release()
			return nil, ctx.Err()
		}
	}
}

// reserve records a call starting at now and returns 0, or returns how
// long to wait before trying again.
func (h *hostLimiter) reserve(now time.Time) time.Duration {
	h.mu.Lock()
	defer h.mu.Unlock()
	if now.Before(h.pausedUntil) {
		return h.pausedUntil.Sub(now)
	}
	if h.span == 0 {
		return 0
	}
	if len(h.starts) < h.max {
		h.starts = append(h.starts, now)
		return 0
	}
	oldest := h.starts[h.next]
	if wait := oldest.Add(h.span).Sub(now); wait > 0 {
		return wait
	}
	h.starts[h.next] = now
	h.next = (h.next + 1) % h.max
	return 0
}

// pause keeps every call to the host from starting for d, after Marketo
// said the subscription is over its rate limit.
func (h *hostLimiter) pause(d time.Duration) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if until := time.Now().Add(d); until.After(h.pausedUntil) {
		h.pausedUntil = until
	}
}
