package poller_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/leadstream/leadstream/internal/lease"
	"github.com/leadstream/leadstream/internal/marketo"
	"github.com/leadstream/leadstream/internal/poller"
)

// leaseJS starts an embedded JetStream server for the test's leases.
func leaseJS(t *testing.T) jetstream.JetStream {
	t.Helper()
	ns, err := server.NewServer(&server.Options{JetStream: true, StoreDir: t.TempDir(), DontListen: true})
	if err != nil {
		t.Fatal(err)
	}
	ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats server did not start")
	}
	t.Cleanup(ns.Shutdown)
	nc, err := nats.Connect("", nats.InProcessServer(ns))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return js
}

// replica is one poller with its lease manager, as one gateway runs them.
type replica struct {
	p      *poller.Poller
	leases *lease.Manager
	polls  atomic.Int32
	stop   func()
}

func (e *env) startReplica(js jetstream.JetStream, name string) *replica {
	e.t.Helper()
	r := &replica{}
	var p atomic.Pointer[poller.Poller]
	m, err := lease.Open(context.Background(), js, lease.Options{
		TTL: time.Second, Owner: name,
		OnChange: func() {
			if p := p.Load(); p != nil {
				p.Refresh()
			}
		},
	})
	if err != nil {
		e.t.Fatal(err)
	}
	r.leases = m
	pl, stopPoller := e.startPoller(poller.Options{
		Leases:      m,
		ObservePoll: func(string, time.Duration, error) { r.polls.Add(1) },
	})
	p.Store(pl)
	r.p = pl
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	var once sync.Once
	r.stop = func() {
		once.Do(func() {
			// As the gateway stops: polls first, then the leases go.
			stopPoller()
			cancel()
			if err := <-done; err != nil {
				e.t.Error(err)
			}
		})
	}
	e.t.Cleanup(r.stop)
	return r
}

// Two replicas on one Marketo: only the lease holder polls it, PollNow on
// the other says so, and when the holder stops the other takes over and
// goes on where it stopped: every activity once.
func TestOneReplicaPollsEachHost(t *testing.T) {
	e := newEnv(t)
	js := leaseJS(t)
	ids := []string{"in-a", "in-b", "in-c"}
	for _, id := range ids {
		e.addInstance(id)
	}
	addLeadActivities(e.fake, 30)
	a := e.startReplica(js, "a")
	b := e.startReplica(js, "b")
	for _, id := range ids {
		e.waitStored(id, 30, patience)
	}
	host := hostOf(e)
	holder, other := a, b
	if b.leases.Held(host) {
		holder, other = b, a
	}
	if !holder.leases.Held(host) || other.leases.Held(host) {
		t.Fatalf("lease of %s: a %v, b %v; want exactly one", host, a.leases.Held(host), b.leases.Held(host))
	}
	if n := other.polls.Load(); n != 0 {
		t.Fatalf("the replica without the lease polled %d times", n)
	}
	if err := other.p.PollNow(ids[0]); !errors.Is(err, poller.ErrElsewhere) {
		t.Fatalf("PollNow on the replica without the lease: %v, want ErrElsewhere", err)
	}
	if err := holder.p.PollNow(ids[0]); err != nil {
		t.Fatalf("PollNow on the holder: %v", err)
	}

	holder.stop()
	addLeadActivities(e.fake, 30)
	for _, id := range ids {
		e.waitStored(id, 60, patience)
	}
	if !other.leases.Held(host) {
		t.Fatal("the remaining replica does not hold the lease")
	}
	if other.polls.Load() == 0 {
		t.Fatal("the remaining replica never polled")
	}
	for _, id := range ids {
		checkGapFree(t, e.stored(id), 60)
	}
}

func hostOf(e *env) string { return marketo.SubscriptionKey(e.fake.RESTURL()) }
