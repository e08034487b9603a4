package app

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/leadstream/leadstream/internal/control"
	"github.com/leadstream/leadstream/internal/lease"
	"github.com/leadstream/leadstream/internal/marketo"
	"github.com/leadstream/leadstream/internal/poller"
	"github.com/leadstream/leadstream/internal/store"
)

// Replicas share work through the event log's NATS: a lease per Marketo
// REST host decides which replica polls it, and the control stream carries
// every instance change to every replica. With the embedded NATS there is
// one replica, and both simply work locally.

// controlTimeout bounds publishing a control message and the store read
// one costs a receiver.
const controlTimeout = 5 * time.Second

// openReplicas opens the lease bucket and the control stream on the log's
// cluster, with the log's replica count.
func (a *App) openReplicas(ctx context.Context) error {
	js, replicas := a.evlog.JetStream(), a.evlog.Replicas()
	// With an external cluster other replicas may have polled a host just
	// before this one claims it: a fresh lease waits for their calls to
	// leave Marketo's rate window. The embedded NATS has one replica.
	var settle time.Duration
	if a.cfg.NATSURL != "" {
		settle = marketo.DefaultWindow - lease.DefaultTTL/3/2
	}
	// A cluster that is still forming may not answer yet: wait it out as
	// the log's own streams do.
	err := a.evlog.Retry(ctx, "creating the lease bucket", func(ctx context.Context) (err error) {
		a.leases, err = lease.Open(ctx, js, lease.Options{
			Replicas: replicas, Logger: a.log, Settle: settle,
			// The poller asks for the hosts it wants when it rescans, and
			// then polls only those held.
			OnChange: func() { a.poller.Refresh() },
		})
		return err
	})
	if err != nil {
		return fmt.Errorf("app: %w", err)
	}
	err = a.evlog.Retry(ctx, "creating the control stream", func(ctx context.Context) (err error) {
		a.control, err = control.Open(ctx, js, control.Options{Replicas: replicas, Replica: a.leases.Owner(), Logger: a.log})
		return err
	})
	if err != nil {
		return fmt.Errorf("app: %w", err)
	}
	err = a.evlog.Retry(ctx, "creating the poll requests bucket", func(ctx context.Context) (err error) {
		a.requests, err = control.OpenRequests(ctx, js, control.RequestsOptions{Replicas: replicas})
		return err
	})
	if err != nil {
		return fmt.Errorf("app: %w", err)
	}
	a.metrics.Leases(a.leases.Count)
	return nil
}

// broadcast tells the other replicas about a change this one made. The
// change is stored already; should the message not get out, the other
// replicas' caches expire by themselves within seconds.
func (a *App) broadcast(id string, in *store.Instance) {
	kind := control.InstanceUpdated
	switch {
	case in == nil:
		kind = control.InstanceDeleted
	case in.Disabled:
		kind = control.InstanceDisabled
	}
	ctx, cancel := context.WithTimeout(context.Background(), controlTimeout)
	defer cancel()
	if err := a.control.Publish(ctx, control.Message{Kind: kind, InstanceID: id}); err != nil {
		a.log.Warn("could not tell the other replicas about an instance change", "instance", id, "err", err)
	}
}

// remoteChange acts on another replica's message as on a change made here.
// The instance is read again rather than taken from the message, so that
// what the store holds wins.
func (a *App) remoteChange(m control.Message) {
	if m.Kind == control.PollNow {
		if err := a.poller.PollNow(m.InstanceID); err != nil && !errors.Is(err, poller.ErrElsewhere) {
			a.log.Debug("poll asked for by another replica not started", "instance", m.InstanceID, "err", err)
		}
		return
	}
	a.instances.Forget(m.InstanceID)
	ctx, cancel := context.WithTimeout(context.Background(), controlTimeout)
	defer cancel()
	in, err := a.instances.Lookup(ctx, m.InstanceID)
	switch {
	case errors.Is(err, store.ErrNotFound):
		a.applyChange(m.InstanceID, nil)
	case err != nil:
		// Caches are dropped all the same; subscriptions of a disabled
		// instance end when the next message or the poller's rescan comes.
		a.log.Warn("could not read an instance another replica changed", "instance", m.InstanceID, "err", err)
		a.auth.ForgetInstance(m.InstanceID)
		a.poller.Refresh()
	default:
		a.applyChange(m.InstanceID, &in)
	}
}

// replicaPoller is pollNow for any replica: the one holding the instance's
// Marketo lease polls, the others pass the request on to it. The poller
// has recorded the request (control.Requests) by then, so that a lease
// moving meanwhile does not lose it: the next holder finds it when it
// takes the lease; the control message only makes the holder of the
// moment act at once.
type replicaPoller struct{ a *App }

func (p replicaPoller) PollNow(instanceID string) error {
	err := p.a.poller.PollNow(instanceID)
	if !errors.Is(err, poller.ErrElsewhere) {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), controlTimeout)
	defer cancel()
	if err := p.a.control.Publish(ctx, control.Message{Kind: control.PollNow, InstanceID: instanceID}); err != nil {
		return fmt.Errorf("app: poll now: %w", err)
	}
	return nil
}

// EffectiveInterval is the poller's: the same on every replica.
func (p replicaPoller) EffectiveInterval(configured time.Duration) time.Duration {
	return p.a.poller.EffectiveInterval(configured)
}
