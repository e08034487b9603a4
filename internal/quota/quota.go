// Package quota counts what each organization holds at once (streams,
// connections, subscriptions) against a cap.
package quota

import "sync"

// Counter counts holdings per key up to Max. It is safe for concurrent use.
type Counter struct {
	max int
	mu  sync.Mutex
	n   map[string]int
}

// New returns a Counter that lets each key hold at most max.
func New(max int) *Counter {
	return &Counter{max: max, n: map[string]int{}}
}

// Max is the cap.
func (c *Counter) Max() int { return c.max }

// Acquire takes one for key. ok is false when key holds Max already; else
// release gives it back (calling it again does nothing).
func (c *Counter) Acquire(key string) (release func(), ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n[key] >= c.max {
		return nil, false
	}
	c.n[key]++
	var once sync.Once
	return func() {
		once.Do(func() {
			c.mu.Lock()
			defer c.mu.Unlock()
			if c.n[key]--; c.n[key] <= 0 {
				delete(c.n, key)
			}
		})
	}, true
}

// Count is what key holds now.
func (c *Counter) Count(key string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[key]
}
