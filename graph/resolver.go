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

// EventStore is what resolvers read events, deliveries and poll states from.
type EventStore interface {
	EventsAfter(ctx context.Context, orgID, instanceID string, after int64, limit int) ([]*events.Event, error)
	InstanceIDs(ctx context.Context, orgID string) ([]string, error)
	Attempts(ctx context.Context, instanceID string, limit int) ([]events.Attempt, error)
	PollState(ctx context.Context, instanceID string) (store.PollState, error)
	PendingDelivery(ctx context.Context, eventID string) (events.Delivery, bool, error)
	Event(ctx context.Context, id string) (*events.Event, error)
	RequeueDelivery(ctx context.Context, ev *events.Event, now time.Time) error
}

// Notifier is told when deliveries were queued.
type Notifier interface {
	Wake()
}

// Poller starts polls on demand.
type Poller interface {
	PollNow(instanceID string) error
}

// Resolver holds the resolvers' dependencies.
type Resolver struct {
	Connectors *connector.Registry
	Connect    *connect.Service
	Instances  *instance.Service
	Store      EventStore
	Broker     *events.Broker
	Poller     Poller
	Notifier   Notifier
	Log        *slog.Logger
}
