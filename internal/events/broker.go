package events

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
)

// ErrSlowSubscriber ends a subscription that fell behind its buffer. The
// error that ends it names the last cursor delivered, so the client resumes
// with `after` and loses nothing.
var ErrSlowSubscriber = errors.New("events: subscriber fell behind")

// SlowError says which cursor a slow subscriber received last.
type SlowError struct {
	InstanceID string // of the last event delivered ("" when none was)
	LastCursor string // "" when none was delivered
}

func (e *SlowError) Error() string {
	if e.LastCursor == "" {
		return "subscriber fell behind before receiving any event; subscribe again"
	}
	return fmt.Sprintf("subscriber fell behind; resubscribe with after: %q to continue without loss", e.LastCursor)
}

// Is makes a *SlowError match ErrSlowSubscriber.
func (e *SlowError) Is(target error) bool { return target == ErrSlowSubscriber }

// Broker fans published events out to live subscriptions. Publishing never
// blocks: a subscriber whose buffer is full is ended instead. Each replica
// feeds its Broker from its one live tail of the event log.
type Broker struct {
	mu         sync.Mutex
	byInstance map[string]map[*Subscription]struct{}
	byOrg      map[string]map[*Subscription]struct{}
	bufSize    int
}

// NewBroker returns a broker whose subscriptions buffer bufSize events.
func NewBroker(bufSize int) *Broker {
	if bufSize < 1 {
		bufSize = 256
	}
	return &Broker{
		byInstance: map[string]map[*Subscription]struct{}{},
		byOrg:      map[string]map[*Subscription]struct{}{},
		bufSize:    bufSize,
	}
}

// Sink takes a subscription's events as they are published: the broker
// calls it under its lock, in publish order, so its methods must not block
// and must not call back into the broker. A websocket transport queues the
// event for the connection's writer; the channel form (Subscribe) puts it
// on a buffered channel. Either way no goroutine waits per subscription.
type Sink interface {
	// Offer takes one event, or reports false when the subscriber has no
	// room: the broker then ends the subscription as slow.
	Offer(e *Event) bool
	// End is called once when the subscription ends: err says why (a
	// *SlowError, or the reason given to EndInstance), nil when its owner
	// closed it.
	End(err error)
}

// Subscription is one live consumer. In the channel form (Subscribe), C
// yields events; a nil value means the subscription ended with Err; a
// closed C means it ended.
type Subscription struct {
	C      <-chan *Event
	sink   Sink
	broker *Broker
	filter Filter
	err    error // set once, under broker.mu, before the sink is told
	closed bool
	// lastSeq/lastInstance are the last event the sink took, for the
	// slow-subscriber error (what was taken is delivered before it shows).
	lastSeq      int64
	lastInstance string
	// While a Replay catches the subscription up from the log, the broker
	// holds its live events in held instead of offering them (catching);
	// more than the buffer size sets overflow and ends it as slow.
	catching bool
	held     []*Event
	replayed int64 // the last event a replay sent, once live
	overflow atomic.Bool
	done     atomic.Bool // ended: a Replay stops
}

// Attach registers sink for the events f chooses. Close the subscription
// when done.
func (b *Broker) Attach(f Filter, sink Sink) *Subscription {
	return b.attach(f, sink, false)
}

func (b *Broker) attach(f Filter, sink Sink, catching bool) *Subscription {
	s := &Subscription{sink: sink, broker: b, filter: f, catching: catching}
	b.mu.Lock()
	m, key := b.byOrg, f.OrgID
	if f.InstanceID != "" {
		m, key = b.byInstance, f.InstanceID
	}
	if m[key] == nil {
		m[key] = map[*Subscription]struct{}{}
	}
	m[key][s] = struct{}{}
	b.mu.Unlock()
	return s
}

// Subscribe registers a subscription whose events arrive on C, at most
// the broker's buffer size ahead of the reader. Close it when done.
func (b *Broker) Subscribe(f Filter) *Subscription {
	sink, ch := b.newChanSink()
	s := b.Attach(f, sink)
	s.C = ch
	return s
}

func (b *Broker) newChanSink() (chanSink, chan *Event) {
	// One slot more than the buffer is kept free for the ending nil.
	ch := make(chan *Event, b.bufSize+1)
	return chanSink{ch: ch, size: b.bufSize}, ch
}

// chanSink is the channel form of a subscription.
type chanSink struct {
	ch   chan *Event
	size int
}

func (c chanSink) Offer(e *Event) bool {
	if len(c.ch) >= c.size {
		return false
	}
	c.ch <- e
	return true
}

func (c chanSink) End(err error) {
	if err != nil {
		c.ch <- nil // the reserved slot: never blocks
	}
	close(c.ch)
}

// Err is why the subscription ended, nil while it runs or if it was closed.
func (s *Subscription) Err() error {
	s.broker.mu.Lock()
	defer s.broker.mu.Unlock()
	return s.err
}

// Close ends the subscription and frees it.
func (s *Subscription) Close() {
	s.broker.mu.Lock()
	defer s.broker.mu.Unlock()
	s.endLocked(nil)
}

// end ends the subscription with err.
func (s *Subscription) end(err error) {
	s.broker.mu.Lock()
	defer s.broker.mu.Unlock()
	s.endLocked(err)
}

func (s *Subscription) endLocked(err error) {
	if s.closed {
		return
	}
	s.closed = true
	s.done.Store(true)
	s.held = nil
	m, key := s.broker.byOrg, s.filter.OrgID
	if s.filter.InstanceID != "" {
		m, key = s.broker.byInstance, s.filter.InstanceID
	}
	delete(m[key], s)
	if len(m[key]) == 0 {
		delete(m, key)
	}
	s.err = err
	s.sink.End(err)
}

// Publish hands e to every matching subscription without blocking.
func (b *Broker) Publish(e *Event) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.publishLocked(e)
}

// PublishAll hands several events over under one lock, in order.
func (b *Broker) PublishAll(evs []*Event) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, e := range evs {
		b.publishLocked(e)
	}
}

func (b *Broker) publishLocked(e *Event) {
	for s := range b.byInstance[e.InstanceID] {
		if s.filter.Match(e) {
			b.offer(s, e)
		}
	}
	for s := range b.byOrg[e.OrgID] {
		if s.filter.Match(e) {
			b.offer(s, e)
		}
	}
}

func (b *Broker) offer(s *Subscription, e *Event) {
	if s.catching {
		if len(s.held) >= b.bufSize {
			s.overflow.Store(true)
			s.held = nil // the Replay ends it: nothing held is delivered
		} else if !s.overflow.Load() {
			s.held = append(s.held, e)
		}
		return
	}
	if e.Seq <= s.replayed {
		// The replay sent it: the live tail publishes in the log's order
		// and may still be publishing what the replay read.
		return
	}
	if !s.sink.Offer(e) {
		cur := ""
		if s.lastSeq > 0 {
			cur = FormatCursor(s.lastSeq)
		}
		s.endLocked(&SlowError{InstanceID: s.lastInstance, LastCursor: cur})
		return
	}
	s.lastSeq, s.lastInstance = e.Seq, e.InstanceID
}

// EndInstance ends every subscription of one instance with err (deleted or
// disabled instances).
func (b *Broker) EndInstance(instanceID string, err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for s := range b.byInstance[instanceID] {
		s.endLocked(err)
	}
}

// EndRevoked ends the subscriptions of an instance that were opened with an
// Element token other than its current one (tokenHash), with err.
func (b *Broker) EndRevoked(instanceID, tokenHash string, err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for s := range b.byInstance[instanceID] {
		if s.filter.TokenHash != "" && s.filter.TokenHash != tokenHash {
			s.endLocked(err)
		}
	}
}

// Wants reports whether a live subscription may take events of this
// instance (one on the instance or on its organization). The live tail
// asks before it decodes an event; a subscription attached right after
// the answer starts after that event, as if it had been attached later.
func (b *Broker) Wants(orgID, instanceID string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.byInstance[instanceID]) > 0 || len(b.byOrg[orgID]) > 0
}

// Count returns the number of live subscriptions.
func (b *Broker) Count() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	n := 0
	for _, m := range b.byInstance {
		n += len(m)
	}
	for _, m := range b.byOrg {
		n += len(m)
	}
	return n
}
