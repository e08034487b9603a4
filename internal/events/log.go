package events

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"
)

// Position is where a poller stood in its source when it appended a page:
// the page's token (From), the one after it (Next), and how many events it
// had appended in all with this page (Ingested). The log keeps it with the
// page, so a poller that crashed before saving learns it from the log.
type Position struct {
	From, Next string
	Ingested   int64
	Seq        int64 // set by the log: the sequence of the page's last event
}

// ErrDeliveryStateChanged refuses writing a delivery state that someone
// else wrote or removed since it was read.
var ErrDeliveryStateChanged = errors.New("events: the delivery state changed meanwhile")

// ErrDeliveryPending refuses a redelivery of an event whose delivery is pending.
var ErrDeliveryPending = errors.New("events: the delivery is already pending")

// ErrNoDelivery: the event has no delivery to repeat (none attempted yet,
// or it is gone from the log).
var ErrNoDelivery = errors.New("events: no delivery of this event")

// CursorExpiredError says an `after` is older than what the log keeps.
type CursorExpiredError struct {
	Oldest string // the cursor just before the oldest event kept
}

func (e *CursorExpiredError) Error() string {
	return fmt.Sprintf("the cursor is older than the event log keeps; history now starts after cursor %q", e.Oldest)
}

// Filter chooses events: one instance of an organization, or every
// instance of it when InstanceID is empty; each list, when not empty, keeps
// the events whose field is one of its values.
type Filter struct {
	OrgID       string
	InstanceID  string
	EventTypes  []string
	ObjectTypes []string
	Sources     []Source
	// TokenHash is set when the subscriber authenticated with the
	// instance's Element token; EndRevoked ends it once that token is replaced.
	TokenHash string
}

// Match reports whether e passes f.
func (f Filter) Match(e *Event) bool {
	if e.OrgID != f.OrgID || (f.InstanceID != "" && e.InstanceID != f.InstanceID) {
		return false
	}
	return (len(f.EventTypes) == 0 || slices.Contains(f.EventTypes, e.EventType)) &&
		(len(f.ObjectTypes) == 0 || slices.Contains(f.ObjectTypes, e.ObjectType)) &&
		(len(f.Sources) == 0 || slices.Contains(f.Sources, e.Source))
}

// DeliveryJob is one callback delivery handed out by the log's shared
// delivery queue: an event (of a generation of redeliveries) to POST.
type DeliveryJob interface {
	Event() *Event
	Gen() int
	// InProgress tells the queue the job is still being worked on.
	InProgress() error
	// Done removes the job from the queue.
	Done() error
	// Retry hands the job out again after d.
	Retry(d time.Duration) error
	// Release hands the job out again at once (shutdown before it started).
	Release() error
}

// History reads the log for replay and history queries.
type History interface {
	// Read returns up to limit events passing f with a sequence above
	// after, oldest first, or a *CursorExpiredError.
	Read(ctx context.Context, f Filter, after int64, limit int) ([]*Event, error)
}
