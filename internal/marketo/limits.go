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

// NewLimits allows, per REST host, at most maxCalls calls in any span of
// window (a call counts from its start to its end), and at most
// maxConcurrent calls in flight. A value <= 0
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
// The call limit is a sliding log of maxCalls slots. Marketo counts a call
// when it arrives, which is some time after we start it and before its
// answer is back, and that delay varies (a loaded machine, a slow
// network). So a slot is held from a call's start until its end, and may
// be taken again only window after that end: then any window of Marketo's
// clock sees at most maxCalls arrivals, however late each one was. (Counting
// starts only, a margin guessed the delay, and under load Marketo saw more
// than maxCalls in a window.) Unlike a token bucket, whose burst lets about
// twice the rate through in one window, this bounds every window.
type hostLimiter struct {
	sem    chan struct{} // one slot per call in flight; nil when unlimited
	window time.Duration // 0: no call limit
	max    int

	mu          sync.Mutex
	ended       []time.Time   // per slot: when its last call ended; zero while one runs
	busy        []bool        // per slot: a call holds it
	freed       chan struct{} // closed and replaced when a call ends
	pausedUntil time.Time     // set after a 606: no call starts before it
}

func newHostLimiter(maxCalls int, window time.Duration, maxConcurrent int) *hostLimiter {
	h := &hostLimiter{max: maxCalls, freed: make(chan struct{})}
	if maxConcurrent > 0 {
		h.sem = make(chan struct{}, maxConcurrent)
	}
	if maxCalls > 0 && window > 0 {
		h.window = window
		h.ended = make([]time.Time, maxCalls)
		h.busy = make([]bool, maxCalls)
	}
	return h
}

// acquire waits until a call may start, counts it as started, and returns
// the function that ends it (to be called once its answer is read). It
// gives up when ctx is done.
func (h *hostLimiter) acquire(ctx context.Context) (release func(), err error) {
	if h.sem != nil {
		select {
		case h.sem <- struct{}{}:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	unsem := func() {
		if h.sem != nil {
			<-h.sem
		}
	}
	for {
		slot, wait, freed := h.reserve(time.Now())
		if slot >= 0 || (wait <= 0 && freed == nil) {
			return func() {
				h.end(slot, time.Now())
				unsem()
			}, nil
		}
		if freed == nil {
			t := time.NewTimer(wait)
			select {
			case <-t.C:
				continue
			case <-ctx.Done():
				t.Stop()
			}
		} else {
			select {
			case <-freed:
				continue
			case <-ctx.Done():
			}
		}
		unsem()
		return nil, ctx.Err()
	}
}

// reserve takes a slot for a call starting at now and returns its index
// (-1 with no call limit). Otherwise it returns how long to wait before
// trying again, or, when every slot is held by a running call, a channel
// closed when one ends.
func (h *hostLimiter) reserve(now time.Time) (slot int, wait time.Duration, freed <-chan struct{}) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if now.Before(h.pausedUntil) {
		return -1, h.pausedUntil.Sub(now), nil
	}
	if h.window == 0 {
		return -1, 0, nil
	}
	best := -1
	for i := range h.ended {
		if !h.busy[i] && (best < 0 || h.ended[i].Before(h.ended[best])) {
			best = i
		}
	}
	if best < 0 {
		return -1, 0, h.freed
	}
	if wait := h.ended[best].Add(h.window).Sub(now); wait > 0 {
		return -1, wait, nil
	}
	h.busy[best] = true
	return best, 0, nil
}

// end frees a call's slot: the window of that slot runs from now.
func (h *hostLimiter) end(slot int, now time.Time) {
	if slot < 0 {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.busy[slot] = false
	h.ended[slot] = now
	close(h.freed)
	h.freed = make(chan struct{})
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
