// Package control tells every replica about changes made through one of
// them: an instance updated, disabled or deleted, a secret or token
// rotated, a poll asked for. Each replica acts on them (drops caches, ends
// subscriptions, refreshes its poller) within a second.
//
// Messages go through a small JetStream stream rather than plain NATS
// publish: a publish is acknowledged once the cluster has it, and a replica
// whose connection moves to another NATS node (or drops for a while) still
// receives every message sent meanwhile, in order, through its ordered
// consumer.
package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go/jetstream"
)

// Kind is what happened.
type Kind string

// The kinds of change replicas tell each other about.
const (
	// InstanceUpdated: created or changed, a webhook secret or token
	// rotated included; receivers read the instance again.
	InstanceUpdated  Kind = "instance_updated"
	InstanceDisabled Kind = "instance_disabled"
	InstanceDeleted  Kind = "instance_deleted"
	// PollNow asks the replica holding the instance's Marketo lease to
	// poll it at once.
	PollNow Kind = "poll_now"
)

// Message is one change.
type Message struct {
	Kind       Kind   `json:"kind"`
	InstanceID string `json:"instanceId"`
	// From is the replica that sent it; Run does not hand a replica its
	// own messages (it acted on the change when it made it).
	From string `json:"from"`
}

// Defaults for Options fields left zero.
const (
	DefaultStream  = "CONTROL"
	DefaultSubject = "leadstream.control"
	// DefaultMaxAge is how long a message is kept for a replica whose
	// connection is away; caches expire by themselves after about as long.
	DefaultMaxAge = time.Minute
)

// Options tune a Bus.
type Options struct {
	Stream   string // default "CONTROL"
	Subject  string // default "leadstream.control"
	Replicas int    // the stream's replica count: the event log's (default 1)
	MaxAge   time.Duration
	// Replica names this process (default random).
	Replica string
	Logger  *slog.Logger
}

// Bus sends and receives control messages.
type Bus struct {
	js       jetstream.JetStream
	opts     Options
	log      *slog.Logger
	startSeq uint64
}

// Open creates or updates the stream. Run delivers every message published
// after Open returned.
func Open(ctx context.Context, js jetstream.JetStream, o Options) (*Bus, error) {
	if o.Stream == "" {
		o.Stream = DefaultStream
	}
	if o.Subject == "" {
		o.Subject = DefaultSubject
	}
	if o.Replicas <= 0 {
		o.Replicas = 1
	}
	if o.MaxAge <= 0 {
		o.MaxAge = DefaultMaxAge
	}
	if o.Replica == "" {
		o.Replica = uuid.NewString()
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	st, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:        o.Stream,
		Description: "leadstream: changes every replica acts on",
		Subjects:    []string{o.Subject},
		Storage:     jetstream.MemoryStorage,
		Replicas:    o.Replicas,
		MaxAge:      o.MaxAge,
		Discard:     jetstream.DiscardOld,
	})
	if err != nil {
		return nil, fmt.Errorf("control: stream %s: %w", o.Stream, err)
	}
	return &Bus{js: js, opts: o, log: o.Logger, startSeq: st.CachedInfo().State.LastSeq + 1}, nil
}

// Replica is this process's name in the messages it sends.
func (b *Bus) Replica() string { return b.opts.Replica }

// Publish sends a change to every replica and returns once the stream
// has it.
func (b *Bus) Publish(ctx context.Context, m Message) error {
	m.From = b.opts.Replica
	data, err := json.Marshal(m)
	if err != nil {
		return fmt.Errorf("control: %w", err)
	}
	if _, err := b.js.Publish(ctx, b.opts.Subject, data); err != nil {
		return fmt.Errorf("control: publish %s: %w", m.Kind, err)
	}
	return nil
}

// Run hands every other replica's message to handle, in the order they
// were published, until ctx ends. handle runs on one goroutine and should
// be quick. It returns nil after ctx ends.
func (b *Bus) Run(ctx context.Context, handle func(Message)) error {
	c, err := b.js.OrderedConsumer(ctx, b.opts.Stream, jetstream.OrderedConsumerConfig{
		DeliverPolicy: jetstream.DeliverByStartSequencePolicy,
		OptStartSeq:   b.startSeq,
	})
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("control: consumer: %w", err)
	}
	msgs := make(chan jetstream.Msg, 64)
	cc, err := c.Consume(func(m jetstream.Msg) {
		select {
		case msgs <- m:
		case <-ctx.Done():
		}
	}, jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) {
		if ctx.Err() == nil && !errors.Is(err, jetstream.ErrNoHeartbeat) {
			b.log.Warn("control: consumer", "err", err)
		}
	}))
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("control: consume: %w", err)
	}
	defer cc.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case jm := <-msgs:
			var m Message
			if err := json.Unmarshal(jm.Data(), &m); err != nil {
				b.log.Warn("control: unreadable message; ignored", "err", err)
				continue
			}
			if m.From != b.opts.Replica {
				handle(m)
			}
		}
	}
}
