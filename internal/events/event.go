// Package events holds the event model, the ingest path (append to the
// log, answer once it is acknowledged), the in-process broker that fans the
// log's live tail out to subscriptions, and replay then live.
package events

import (
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"time"
)

// Source says where an event came from.
type Source string

// Event sources, as the GraphQL enum EventSource names them.
const (
	SourcePoller  Source = "POLLER"
	SourceWebhook Source = "WEBHOOK"
)

// MarshalGQL writes the enum value.
func (s Source) MarshalGQL(w io.Writer) { _, _ = io.WriteString(w, strconv.Quote(string(s))) }

// UnmarshalGQL reads the enum value.
func (s *Source) UnmarshalGQL(v any) error {
	str, ok := v.(string)
	if !ok || (Source(str) != SourcePoller && Source(str) != SourceWebhook) {
		return fmt.Errorf("events: %v is not a valid EventSource", v)
	}
	*s = Source(str)
	return nil
}

// DeliveryState is where an event's callback delivery stands.
type DeliveryState string

// Delivery states, as the GraphQL enum DeliveryState names them.
const (
	DeliveryPending   DeliveryState = "PENDING"
	DeliveryDelivered DeliveryState = "DELIVERED"
	DeliveryFailed    DeliveryState = "FAILED"
)

// MarshalGQL writes the enum value.
func (s DeliveryState) MarshalGQL(w io.Writer) { _, _ = io.WriteString(w, strconv.Quote(string(s))) }

// UnmarshalGQL reads the enum value.
func (s *DeliveryState) UnmarshalGQL(v any) error {
	str, ok := v.(string)
	switch DeliveryState(str) {
	case DeliveryPending, DeliveryDelivered, DeliveryFailed:
		if ok {
			*s = DeliveryState(str)
			return nil
		}
	}
	return fmt.Errorf("events: %v is not a valid DeliveryState", v)
}

// JSON is a JSON value kept as the exact bytes it arrived as, so a webhook
// body reaches subscribers byte for byte.
type JSON []byte

// MarshalGQL writes the raw bytes.
func (j JSON) MarshalGQL(w io.Writer) {
	if len(j) == 0 {
		_, _ = io.WriteString(w, "null")
		return
	}
	_, _ = w.Write(j)
}

// UnmarshalGQL turns a GraphQL input value back into JSON bytes.
func (j *JSON) UnmarshalGQL(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("events: JSON value: %w", err)
	}
	*j = b
	return nil
}

// MarshalJSON keeps the bytes as they are.
func (j JSON) MarshalJSON() ([]byte, error) {
	if len(j) == 0 {
		return []byte("null"), nil
	}
	return j, nil
}

// Delivery is the callback delivery state of an event. Gen counts the
// redeliveries asked for: a job of an older generation is stale.
type Delivery struct {
	State         DeliveryState `json:"state"`
	Attempts      int           `json:"attempts"`
	NextAttemptAt *time.Time    `json:"nextAttemptAt,omitempty"`
	LastError     *string       `json:"lastError,omitempty"`
	DeliveredAt   *time.Time    `json:"deliveredAt,omitempty"`
	Gen           int           `json:"gen,omitempty"`
	// Revision is the log's revision of the state as read; writing the
	// state back succeeds only while it is still the latest (0: no state
	// yet). Not part of the state itself.
	Revision uint64 `json:"-"`
}

// Attempt records one POST of an event to a callback URL.
type Attempt struct {
	EventID    string    `json:"eventId"`
	InstanceID string    `json:"instanceId"`
	Attempt    int       `json:"attempt"`
	At         time.Time `json:"at"`
	StatusCode *int      `json:"statusCode,omitempty"`
	Error      *string   `json:"error,omitempty"`
	DurationMs int       `json:"durationMs"`
}

// Event is one Marketo event of one instance, as logged and as streamed.
type Event struct {
	ID         string
	InstanceID string
	OrgID      string
	Seq        int64 // the log's sequence number: the cursor
	DedupeKey  string
	Source     Source
	EventType  string
	ObjectType string
	ObjectID   *string
	OccurredAt time.Time
	ReceivedAt time.Time
	Payload    JSON
	// Notify: the instance had a callback URL when the event arrived, so
	// the event is delivered there.
	Notify bool
}

// Cursor is the event's opaque position in the log: ordered within an
// instance and across an organization.
func (e *Event) Cursor() string { return FormatCursor(e.Seq) }

// FormatCursor turns a sequence number into a cursor: zero-padded
// decimal, so cursors sort the same as strings and as numbers.
func FormatCursor(seq int64) string {
	if seq < 0 {
		return fmt.Sprintf("%012d", seq)
	}
	const width = 12
	var b [20]byte
	d := strconv.AppendInt(b[:0], seq, 10)
	if len(d) >= width {
		return string(d)
	}
	var p [width]byte
	n := copy(p[width-len(d):], d)
	for i := range width - n {
		p[i] = '0'
	}
	return string(p[:])
}

// ParseCursor turns a cursor back into a sequence number; "" means the start.
func ParseCursor(c string) (int64, error) {
	if c == "" {
		return 0, nil
	}
	n, err := strconv.ParseInt(c, 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("events: %q is not a cursor", c)
	}
	return n, nil
}

// MarshalJSON renders the event as the GraphQL MarketoEvent type, which is
// what callback URLs receive.
func (e *Event) MarshalJSON() ([]byte, error) {
	return json.Marshal(struct {
		ID         string    `json:"id"`
		Cursor     string    `json:"cursor"`
		InstanceID string    `json:"instanceId"`
		Source     Source    `json:"source"`
		EventType  string    `json:"eventType"`
		ObjectType string    `json:"objectType"`
		ObjectID   *string   `json:"objectId"`
		OccurredAt time.Time `json:"occurredAt"`
		ReceivedAt time.Time `json:"receivedAt"`
		Payload    JSON      `json:"payload"`
	}{e.ID, e.Cursor(), e.InstanceID, e.Source, e.EventType, e.ObjectType, e.ObjectID, e.OccurredAt, e.ReceivedAt, e.Payload})
}
