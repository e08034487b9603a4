package lease_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/leadstream/leadstream/internal/eventlog/eventlogtest"
	"github.com/leadstream/leadstream/internal/lease"
)

// embedded returns a JetStream context on an embedded event log in a
// temporary directory, as the gateway's leases have.
func embedded(t *testing.T) jetstream.JetStream {
	t.Helper()
	return eventlogtest.New(t).JetStream()
}

// fakeClock is a clock a test moves by hand.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

func open(t *testing.T, js jetstream.JetStream, o lease.Options) *lease.Manager {
	t.Helper()
	m, err := lease.Open(context.Background(), js, o)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

const host = "123-abc-456.mktorest.com:443"

// Contenders racing for one key: exactly one holds it, however many try.
func TestRaceExactlyOneWins(t *testing.T) {
	js := embedded(t)
	for round := range 5 {
		key := fmt.Sprintf("%s-%d", host, round)
		const n = 8
		ms := make([]*lease.Manager, n)
		for i := range ms {
			ms[i] = open(t, js, lease.Options{Owner: fmt.Sprintf("r%d", i)})
			ms[i].Want([]string{key})
		}
		var wg sync.WaitGroup
		start := make(chan struct{})
		for _, m := range ms {
			wg.Go(func() { <-start; m.Sync(context.Background()) })
		}
		close(start)
		wg.Wait()
		holders := 0
		for _, m := range ms {
			if m.Held(key) {
				holders++
			}
		}
		if holders != 1 {
			t.Fatalf("round %d: %d holders, want exactly 1", round, holders)
		}
		// And it stays that way on the next rounds: renewals keep it.
		for _, m := range ms {
			m.Sync(context.Background())
		}
		holders = 0
		for _, m := range ms {
			if m.Held(key) {
				holders++
			}
		}
		if holders != 1 {
			t.Fatalf("round %d after renewals: %d holders, want 1", round, holders)
		}
	}
}

// A holder that stops renewing (a replica that died or hangs) loses the
// key once the TTL passed, and another replica takes it; the old holder
// stopped counting it as held before that, and cannot renew it back.
func TestTakeoverWhenHolderStopsRenewing(t *testing.T) {
	js := embedded(t)
	const ttl = time.Second
	a := open(t, js, lease.Options{Bucket: "takeover", TTL: ttl, Owner: "a"})
	b := open(t, js, lease.Options{Bucket: "takeover", TTL: ttl, Owner: "b"})
	a.Want([]string{host})
	b.Want([]string{host})
	claimed := time.Now()
	a.Sync(context.Background())
	if !a.Held(host) {
		t.Fatal("a did not claim a free key")
	}
	b.Sync(context.Background())
	if b.Held(host) {
		t.Fatal("b holds a key a holds")
	}
	// a renews no more; b keeps trying.
	waitFor(t, 10*time.Second, "b to take over", func() bool {
		b.Sync(context.Background())
		return b.Held(host)
	})
	took := time.Since(claimed)
	if took < ttl {
		t.Fatalf("b took over after %v, before the TTL of %v", took, ttl)
	}
	if a.Held(host) {
		t.Fatal("a still counts the key as held after b took it")
	}
	a.Sync(context.Background())
	if a.Held(host) || !b.Held(host) {
		t.Fatalf("after a's late renewal: a %v, b %v; want only b", a.Held(host), b.Held(host))
	}
	t.Logf("takeover after %v with a TTL of %v", took.Round(time.Millisecond), ttl)
}

// The holder stops counting a lease as held once its validity passed on
// its own clock, before the server could give it away, even with no round
// run in between.
func TestValidityEndsBeforeTTL(t *testing.T) {
	js := embedded(t)
	clk := &fakeClock{now: time.Now()}
	m := open(t, js, lease.Options{TTL: 15 * time.Second, Renew: 5 * time.Second, Now: clk.Now})
	m.Want([]string{host})
	m.Sync(context.Background())
	if !m.Held(host) || m.Count() != 1 {
		t.Fatal("not held after a claim")
	}
	clk.Add(12 * time.Second)
	if !m.Held(host) {
		t.Fatal("lost 12 s after the claim; valid until 12.5 s")
	}
	clk.Add(500 * time.Millisecond)
	if m.Held(host) || m.Count() != 0 {
		t.Fatal("still held 12.5 s after the last renewal, with a 15 s TTL and 5 s renewals")
	}
	// A renewal (the server still has our entry) makes it valid again.
	m.Sync(context.Background())
	if !m.Held(host) {
		t.Fatal("renewal did not win the lease back")
	}
}

// A renewal that finds the entry rewritten by someone else means the lease
// is lost at once, and OnChange says so.
func TestLostRenewal(t *testing.T) {
	js := embedded(t)
	var changes atomic.Int32
	m := open(t, js, lease.Options{Bucket: "lost", OnChange: func() { changes.Add(1) }})
	m.Want([]string{host})
	m.Sync(context.Background())
	if !m.Held(host) || changes.Load() != 1 {
		t.Fatalf("held %v, changes %d after a claim", m.Held(host), changes.Load())
	}
	kv, err := js.KeyValue(context.Background(), "lost")
	if err != nil {
		t.Fatal(err)
	}
	keys, err := kv.ListKeys(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for k := range keys.Keys() {
		if _, err := kv.Put(context.Background(), k, []byte(`{"owner":"intruder"}`)); err != nil {
			t.Fatal(err)
		}
	}
	m.Sync(context.Background())
	if m.Held(host) || changes.Load() != 2 {
		t.Fatalf("held %v, changes %d after someone else wrote the lease", m.Held(host), changes.Load())
	}
}

// Run renews for as long as it runs, so nobody else gets the key even
// well past the TTL; when it ends it releases the key and another replica
// takes it at once, and a key no longer wanted is released the same way.
func TestRunRenewsAndReleases(t *testing.T) {
	js := embedded(t)
	const ttl = 600 * time.Millisecond
	held := make(chan struct{}, 10)
	a := open(t, js, lease.Options{Bucket: "run", TTL: ttl, Owner: "a", OnChange: func() { held <- struct{}{} }})
	b := open(t, js, lease.Options{Bucket: "run", TTL: ttl, Owner: "b"})
	other := "other.mktorest.com"
	a.Want([]string{host, other})
	b.Want([]string{host, other})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	<-held
	if !a.Held(host) || !a.Held(other) {
		t.Fatal("Run did not claim both keys")
	}
	for end := time.Now().Add(3 * ttl); time.Now().Before(end); {
		b.Sync(context.Background())
		if b.Held(host) || b.Held(other) {
			t.Fatal("b won a key that a keeps renewing")
		}
		time.Sleep(ttl / 6)
	}
	if !a.Held(host) {
		t.Fatal("a lost a key it kept renewing")
	}

	a.Want([]string{host})
	waitFor(t, 5*time.Second, "a to release the key it no longer wants", func() bool { return !a.Held(other) })
	b.Sync(context.Background())
	if !b.Held(other) || b.Held(host) {
		t.Fatalf("after a released one key: b holds other %v, host %v", b.Held(other), b.Held(host))
	}

	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if a.Count() != 0 {
		t.Fatal("a counts leases after Run ended")
	}
	b.Sync(context.Background())
	if !b.Held(host) {
		t.Fatal("b did not get the key a released at shutdown")
	}
}

// A fresh claim settles before it counts as held (the previous holder's
// Marketo calls leave the rate window); renewals do not settle again.
func TestSettle(t *testing.T) {
	js := embedded(t)
	clk := &fakeClock{now: time.Now()}
	var changes atomic.Int32
	m := open(t, js, lease.Options{Bucket: "settle", Settle: 3 * time.Second, Now: clk.Now, OnChange: func() { changes.Add(1) }})
	m.Want([]string{host})
	m.Sync(context.Background())
	if m.Held(host) || m.Count() != 1 || changes.Load() != 0 {
		t.Fatalf("right after the claim: held %v, count %d, changes %d; want settling", m.Held(host), m.Count(), changes.Load())
	}
	clk.Add(3 * time.Second)
	m.Sync(context.Background())
	if !m.Held(host) || changes.Load() != 1 {
		t.Fatalf("after settling: held %v, changes %d", m.Held(host), changes.Load())
	}
	clk.Add(time.Second)
	m.Sync(context.Background())
	if !m.Held(host) || changes.Load() != 1 {
		t.Fatalf("after a renewal: held %v, changes %d", m.Held(host), changes.Load())
	}
}
