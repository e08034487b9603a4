package poller_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/leadstream/leadstream/internal/control"
	"github.com/leadstream/leadstream/internal/instance"
	"github.com/leadstream/leadstream/internal/lease"
	"github.com/leadstream/leadstream/internal/marketo"
	"github.com/leadstream/leadstream/internal/poller"
	"github.com/leadstream/leadstream/internal/store"
)

// replica is one poller with its lease manager, as one gateway runs them.
type replica struct {
	p      *poller.Poller
	leases *lease.Manager
	polls  atomic.Int32
	stop   func()
}

// replicaOptions vary a replica: its leases' TTL (default 1 s), the
// polls asked for it keeps (default none).
type replicaOptions struct {
	ttl      time.Duration
	requests poller.Requests
}

func (e *env) startReplica(js jetstream.JetStream, name string, opts ...replicaOptions) *replica {
	e.t.Helper()
	o := replicaOptions{ttl: time.Second}
	if len(opts) > 0 {
		o = opts[0]
	}
	r := &replica{}
	var p atomic.Pointer[poller.Poller]
	m, err := lease.Open(context.Background(), js, lease.Options{
		TTL: o.ttl, Owner: name,
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
		Requests:    o.requests,
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
	js := e.log.JetStream() // leases on the log's NATS, as the gateway has them
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

// A pollNow asked of a replica while the instance's lease is on its way to
// it (the previous holder died, its lease has not expired yet) is made by
// that replica once it holds the lease, though the instance is not due for
// an hour; then the request is gone.
func TestPollNowDuringLeaseMove(t *testing.T) {
	e := newEnv(t)
	js := e.log.JetStream()
	ctx := context.Background()
	reqs, err := control.OpenRequests(ctx, js, control.RequestsOptions{})
	if err != nil {
		t.Fatal(err)
	}
	in := e.addInstance("in-a", withConfig(instance.KeyRefreshInterval, "1h"))
	// Polled a moment ago by a replica that then died holding the lease.
	now := time.Now().UTC()
	if err := e.st.SavePollState(ctx, store.PollState{InstanceID: in.ID, LastPollAt: &now, LastSuccessAt: &now}); err != nil {
		t.Fatal(err)
	}
	const ttl = 3 * time.Second
	dead, err := lease.Open(ctx, js, lease.Options{TTL: ttl, Owner: "dead"})
	if err != nil {
		t.Fatal(err)
	}
	dead.Want([]string{hostOf(e)})
	dead.Sync(ctx)
	if !dead.Held(hostOf(e)) {
		t.Fatal("the first replica did not get the lease")
	}
	addLeadActivities(e.fake, 10)

	b := e.startReplica(js, "b", replicaOptions{ttl: ttl, requests: reqs})
	if err := b.p.PollNow(in.ID); !errors.Is(err, poller.ErrElsewhere) {
		t.Fatalf("PollNow before the lease moved: %v, want ErrElsewhere", err)
	}
	e.waitStored(in.ID, 10, patience)
	if !b.leases.Held(hostOf(e)) {
		t.Fatal("the replica polled without the lease")
	}
	eventually(t, patience, func() (bool, string) {
		ids, err := reqs.Pending(ctx)
		return err == nil && len(ids) == 0, fmt.Sprintf("requests pending after the poll: %v %v", ids, err)
	})
}
