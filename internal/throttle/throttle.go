// Package throttle counts failed authentications per client address and
// says when an address has failed too often.
package throttle

import (
	"net"
	"net/netip"
	"sync"
	"time"
)

// maxTracked bounds the addresses remembered; past it, expired entries are
// dropped, and if none are, all are (an attacker with that many addresses
// is not slowed by a per-address count anyway).
const maxTracked = 100000

// Failures counts failures per address in fixed windows: an address with
// Max failures inside one window is blocked until that window ends. It is
// safe for concurrent use.
type Failures struct {
	max    int
	window time.Duration
	now    func() time.Time

	mu sync.Mutex
	m  map[string]*entry
}

type entry struct {
	n     int
	start time.Time
}

// New returns a counter allowing max failures per window.
func New(max int, window time.Duration, now func() time.Time) *Failures {
	if now == nil {
		now = time.Now
	}
	return &Failures{max: max, window: window, now: now, m: map[string]*entry{}}
}

// Blocked reports whether addr must wait, and for how long.
func (f *Failures) Blocked(addr string) (time.Duration, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	e := f.m[addr]
	if e == nil {
		return 0, false
	}
	left := e.start.Add(f.window).Sub(f.now())
	if left <= 0 {
		delete(f.m, addr)
		return 0, false
	}
	return left, e.n >= f.max
}

// Fail counts one failure of addr.
func (f *Failures) Fail(addr string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	now := f.now()
	e := f.m[addr]
	if e == nil || !now.Before(e.start.Add(f.window)) {
		if len(f.m) >= maxTracked {
			f.prune(now)
		}
		e = &entry{start: now}
		f.m[addr] = e
	}
	e.n++
}

func (f *Failures) prune(now time.Time) {
	for k, e := range f.m {
		if !now.Before(e.start.Add(f.window)) {
			delete(f.m, k)
		}
	}
	if len(f.m) >= maxTracked {
		clear(f.m)
	}
}

// ClientKey is the address a request came from, as counted: the IP of
// remoteAddr (an http.Request's RemoteAddr; proxies' X-Forwarded-For is not
// trusted), with IPv6 addresses by their /64, which one client usually holds whole.
func ClientKey(remoteAddr string) string {
	host, _, err := net.SplitHostPort(remoteAddr)
	if err != nil {
		host = remoteAddr
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		return host
	}
	a = a.Unmap()
	if a.Is6() {
		p, _ := a.Prefix(64)
		return p.String()
	}
	return a.String()
}
