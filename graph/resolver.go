// Package graph is the GraphQL layer: gqlgen's generated code and thin
// resolvers that read the caller from ctx, call one internal method and map
// the answer.
package graph

import (
	"context"
	"log/slog"
	"time"

	"github.com/leadstream/leadstream/internal/connect"
	"github.com/leadstream/leadstream/internal/connector"
	"github.com/leadstream/leadstream/internal/events"
	"github.com/leadstream/leadstream/internal/instance"
	"github.com/leadstream/leadstream/internal/store"
)

//go:generate go run github.com/99designs/gqlgen generate

// PollStates is where resolvers read the poller's state from.
type PollStates interface {
	PollState(ctx context.Context, instanceID string) (store.PollState, error)
}

// EventLog is what resolvers read events and deliveries from, and where
// redeliveries are queued; *eventlog.Log has it.
type EventLog interface {
	Read(ctx context.Context, f events.Filter, after int64, limit int) ([]*events.Event, error)
	Attempts(ctx context.Context, instanceID string, limit int) ([]events.Attempt, error)
	DeliveryState(ctx context.Context, eventID string) (events.Delivery, bool, error)
	DeliveredEvent(ctx context.Context, orgID, eventID string) (*events.Event, error)
	Redeliver(ctx context.Context, ev *events.Event, now time.Time) error
}

// Poller starts polls on demand and knows its floor for poll intervals.
type Poller interface {
	PollNow(instanceID string) error
	EffectiveInterval(configured time.Duration) time.Duration
}

// Resolver holds the resolvers' dependencies.
type Resolver struct {
	Connectors *connector.Registry
	Connect    *connect.Service
	Instances  *instance.Service
	Store      PollStates
	EventLog   EventLog
	Broker     *events.Broker
	Poller     Poller
	Log        *slog.Logger
}
