// Package lease gives one replica at a time a key (a Marketo REST host),
// through a JetStream key-value bucket whose entries expire after a TTL.
//
// A claim is a KV Create (exactly one contender wins), a renewal an Update
// with the revision last written (fails once anyone else wrote), a release
// a Delete with that revision. The server expires an entry TTL after it was
// last written, so the leases of a replica that died move once TTL passed.
// The holder counts its lease as held only until TTL-Renew/2 after the start
// of its last successful write, which is before the server can let anyone
// else have it.
package lease

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go/jetstream"
)

// Defaults for Options fields left zero.
const (
	DefaultBucket = "leases"
	DefaultTTL    = 15 * time.Second
)

// Options tune a Manager; the zero value gives production behaviour.
type Options struct {
	// Bucket is the KV bucket's name (default "leases").
	Bucket string
	// TTL is how long a lease outlives its holder's last renewal (default
	// 15 s): a dead replica's leases move after at most TTL plus Renew.
	TTL time.Duration
	// Renew is how often held leases are renewed and wanted ones claimed
	// (default TTL/3).
	Renew time.Duration
	// Replicas is the bucket's replica count: the event log's (default 1).
	Replicas int
	// Owner names this replica in the entries it writes (default random).
	Owner string
	// Settle is how long a freshly claimed lease waits before it counts as
	// held, so that what the previous holder did has faded: for Marketo,
	// its calls leave the 20 s rate window. A holder that loses a lease
	// stops TTL-Renew/2 after its last renewal and the next claim comes at
	// least TTL after it, so Settle = window - Renew/2 is enough. Renewals
	// and a lease won back with its own revision do not settle again.
	Settle time.Duration
	// Now is the clock validity is measured with (default time.Now).
	Now func() time.Time
	// OnChange is told, from the Manager's goroutine, after the set of
	// held keys changed. It must not block.
	OnChange func()
	// Logger gets lost leases and failed renewals; nil discards.
	Logger *slog.Logger
}

// Manager claims the keys it is told to want and keeps renewing them.
// Create it with Open and run it with Run; Want, Held and Count may be
// called from any goroutine.
type Manager struct {
	kv   jetstream.KeyValue
	opts Options
	log  *slog.Logger
	wake chan struct{}

	mu   sync.Mutex
	want map[string]bool
	held map[string]*claim
}

// claim is a lease this replica wrote last.
type claim struct {
	rev uint64
	// activeAt is when a fresh claim has settled.
	activeAt time.Time
	// settled: OnChange was told that activeAt passed.
	settled bool
	// validUntil ends the lease for this replica, however the renewals go.
	validUntil time.Time
	// lost: the last renewal failed; the next round tries to win it back
	// with rev (if nobody wrote since) before claiming afresh.
	lost bool
}

// entry is the value of a lease in the bucket, for people looking at it.
type entry struct {
	Owner string    `json:"owner"`
	At    time.Time `json:"at"`
}

// Open creates or updates the bucket and returns a Manager that wants no
// key yet.
func Open(ctx context.Context, js jetstream.JetStream, o Options) (*Manager, error) {
	if o.Bucket == "" {
		o.Bucket = DefaultBucket
	}
	if o.TTL <= 0 {
		o.TTL = DefaultTTL
	}
	if o.Renew <= 0 || o.Renew >= o.TTL {
		o.Renew = o.TTL / 3
	}
	if o.Replicas <= 0 {
		o.Replicas = 1
	}
	if o.Owner == "" {
		o.Owner = uuid.NewString()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.OnChange == nil {
		o.OnChange = func() {}
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      o.Bucket,
		Description: "leadstream: which replica polls which Marketo REST host",
		History:     1,
		TTL:         o.TTL,
		Replicas:    o.Replicas,
		Storage:     jetstream.FileStorage,
	})
	if err != nil {
		return nil, fmt.Errorf("lease: bucket %s: %w", o.Bucket, err)
	}
	return &Manager{
		kv: kv, opts: o, log: o.Logger, wake: make(chan struct{}, 1),
		want: map[string]bool{}, held: map[string]*claim{},
	}, nil
}

// Owner is the name this replica writes into its leases.
func (m *Manager) Owner() string { return m.opts.Owner }

// Want replaces the set of keys this replica should hold. New keys are
// claimed at once (by Run), keys no longer wanted are released.
func (m *Manager) Want(keys []string) {
	m.mu.Lock()
	changed := len(keys) != len(m.want)
	next := make(map[string]bool, len(keys))
	for _, k := range keys {
		next[k] = true
		changed = changed || !m.want[k]
	}
	m.want = next
	m.mu.Unlock()
	if changed {
		select {
		case m.wake <- struct{}{}:
		default:
		}
	}
}

// Held reports whether this replica holds key now.
func (m *Manager) Held(key string) bool {
	now := m.opts.Now()
	m.mu.Lock()
	defer m.mu.Unlock()
	c := m.held[key]
	return c != nil && !c.lost && !now.Before(c.activeAt) && now.Before(c.validUntil)
}

// Count is how many leases this replica holds now, settling ones included.
func (m *Manager) Count() int {
	now := m.opts.Now()
	m.mu.Lock()
	defer m.mu.Unlock()
	n := 0
	for _, c := range m.held {
		if !c.lost && now.Before(c.validUntil) {
			n++
		}
	}
	return n
}

// Run claims and renews every Renew (and at once when Want adds a key)
// until ctx ends, then releases what it holds so other replicas take over
// without waiting for the TTL. It returns nil after ctx ends.
func (m *Manager) Run(ctx context.Context) error {
	defer m.releaseAll()
	timer := time.NewTimer(0)
	defer timer.Stop()
	next := m.opts.Now()
	for {
		if !m.opts.Now().Before(next) {
			m.Sync(ctx)
			next = m.opts.Now().Add(m.opts.Renew)
		}
		// Wake for the next round, or when a lease's validity runs out
		// first (a round that hangs), so OnChange is told in time.
		wait := time.Until(next)
		if t, ok := m.nextTransition(); ok {
			wait = min(wait, time.Until(t))
		}
		timer.Reset(max(wait, 0))
		select {
		case <-ctx.Done():
			return nil
		case <-m.wake:
			next = m.opts.Now()
		case <-timer.C:
			if m.dropLapsed() || m.markSettled() {
				m.opts.OnChange()
			}
		}
	}
}

// Sync runs one round: renews what is held, claims what is wanted and not
// held, releases what is no longer wanted. Run calls it every Renew; tests
// call it to step a Manager.
func (m *Manager) Sync(ctx context.Context) {
	m.mu.Lock()
	keys := make([]string, 0, len(m.want)+len(m.held))
	for k := range m.want {
		keys = append(keys, k)
	}
	for k := range m.held {
		if !m.want[k] {
			keys = append(keys, k)
		}
	}
	m.mu.Unlock()
	// Replicas that start together claim in different orders, so the keys
	// spread between them.
	rand.Shuffle(len(keys), func(i, j int) { keys[i], keys[j] = keys[j], keys[i] })
	changed := m.dropLapsed()
	changed = m.markSettled() || changed
	for _, k := range keys {
		if ctx.Err() != nil {
			break
		}
		changed = m.step(ctx, k) || changed
	}
	if changed {
		m.opts.OnChange()
	}
}

// step renews, claims or releases one key and reports whether holding
// it changed.
func (m *Manager) step(ctx context.Context, key string) bool {
	m.mu.Lock()
	wanted := m.want[key]
	var c claim
	had := m.held[key]
	if had != nil {
		c = *had
	}
	m.mu.Unlock()
	wasHeld := had != nil && !had.lost

	cctx, cancel := context.WithTimeout(ctx, m.opts.Renew)
	defer cancel()
	kvKey := encodeKey(key)
	if !wanted {
		err := m.kv.Delete(cctx, kvKey, jetstream.LastRevision(c.rev))
		if err != nil && !errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
			m.log.Warn("lease: release failed; it expires by itself", "key", key, "err", err)
		}
		m.mu.Lock()
		delete(m.held, key)
		m.mu.Unlock()
		return wasHeld
	}
	start := m.opts.Now()
	val := m.value(start)
	var rev uint64
	var err error
	if had != nil {
		rev, err = m.kv.Update(cctx, kvKey, val, c.rev)
		if err != nil && !c.lost {
			m.log.Warn("lease: renewal failed; not polling until it is won back", "key", key, "err", err)
		}
	}
	if had == nil || errors.Is(err, jetstream.ErrKeyRevisionMismatch) || errors.Is(err, jetstream.ErrKeyNotFound) {
		rev, err = m.kv.Create(cctx, kvKey, val)
		if err != nil && !errors.Is(err, jetstream.ErrKeyExists) && ctx.Err() == nil {
			m.log.Warn("lease: claim failed", "key", key, "err", err)
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	switch {
	case err == nil:
		c := &claim{rev: rev, validUntil: start.Add(m.opts.TTL - m.opts.Renew/2), activeAt: start, settled: true}
		if had != nil {
			c.activeAt, c.settled = had.activeAt, had.settled
		} else if m.opts.Settle > 0 {
			c.activeAt, c.settled = start.Add(m.opts.Settle), false
		}
		m.held[key] = c
		return !wasHeld && c.settled
	case had != nil && !errors.Is(err, jetstream.ErrKeyExists):
		// Not known to be anyone else's: keep the revision to win it back
		// with next round, but stop using it now.
		had.lost = true
		return wasHeld
	default:
		delete(m.held, key)
		return wasHeld
	}
}

// dropLapsed marks leases whose validity ran out as lost and reports
// whether there were any.
func (m *Manager) dropLapsed() bool {
	now := m.opts.Now()
	m.mu.Lock()
	defer m.mu.Unlock()
	any := false
	for k, c := range m.held {
		if !c.lost && !now.Before(c.validUntil) {
			c.lost = true
			any = true
			m.log.Warn("lease: not renewed in time; no longer held", "key", k)
		}
	}
	return any
}

// markSettled flags claims whose settling ended and reports whether there
// were any.
func (m *Manager) markSettled() bool {
	now := m.opts.Now()
	m.mu.Lock()
	defer m.mu.Unlock()
	any := false
	for _, c := range m.held {
		if !c.lost && !c.settled && !now.Before(c.activeAt) {
			c.settled = true
			any = true
		}
	}
	return any
}

// nextTransition is when a held lease next lapses or settles.
func (m *Manager) nextTransition() (time.Time, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var t time.Time
	earlier := func(u time.Time) {
		if t.IsZero() || u.Before(t) {
			t = u
		}
	}
	for _, c := range m.held {
		if c.lost {
			continue
		}
		earlier(c.validUntil)
		if !c.settled {
			earlier(c.activeAt)
		}
	}
	return t, !t.IsZero()
}

// releaseAll deletes every lease held, each only if still ours.
func (m *Manager) releaseAll() {
	m.mu.Lock()
	held := m.held
	m.held = map[string]*claim{}
	m.mu.Unlock()
	if len(held) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), m.opts.Renew)
	defer cancel()
	for k, c := range held {
		if err := m.kv.Delete(ctx, encodeKey(k), jetstream.LastRevision(c.rev)); err != nil && !errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
			m.log.Warn("lease: release failed; it expires by itself", "key", k, "err", err)
		}
	}
	m.opts.OnChange()
}

func (m *Manager) value(at time.Time) []byte {
	b, _ := json.Marshal(entry{Owner: m.opts.Owner, At: at.UTC()})
	return b
}

// encodeKey makes any string a valid KV key (hosts carry ':').
func encodeKey(key string) string {
	return "k" + base64.RawURLEncoding.EncodeToString([]byte(key))
}
