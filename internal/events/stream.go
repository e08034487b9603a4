package events

import (
	"context"
	"errors"
	"sync"
)

// History reads stored events for replay.
type History interface {
	EventsAfter(ctx context.Context, orgID, instanceID string, after int64, limit int) ([]*Event, error)
}

// ErrAfterNeedsInstance refuses a replay across instances: cursors are
// ordered within one instance only.
var ErrAfterNeedsInstance = errors.New("events: after needs instanceId, because cursors are ordered within one instance")

// Stream is one subscriber's events: stored ones after a cursor, then live
// ones, with no gap and no duplicate. A nil value on C means the stream ended
// with Err.
type Stream struct {
	C   <-chan *Event
	sub *Subscription

	mu  sync.Mutex
	err error
}

// Err is why the stream ended, once C yielded nil.
func (s *Stream) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return s.err
	}
	return s.sub.Err()
}

// Streamer opens subscriber streams over a broker and the stored history.
type Streamer struct {
	Broker   *Broker
	History  History
	PageSize int // events per history read during replay (default 500)
}

// Open subscribes before it reads history, so an event stored while
// the replay runs arrives live and is dropped there if the replay had it.
// Without after, the broker's channel is handed out as it is: no goroutine
// per idle subscription. The stream is closed when ctx ends.
func (sr Streamer) Open(ctx context.Context, f Filter, after string) (*Stream, error) {
	b, h, page := sr.Broker, sr.History, sr.PageSize
	if page <= 0 {
		page = 500
	}
	if after != "" && f.InstanceID == "" {
		return nil, ErrAfterNeedsInstance
	}
	afterSeq, err := ParseCursor(after)
	if err != nil {
		return nil, err
	}
	sub := b.Subscribe(f)
	st := &Stream{C: sub.C, sub: sub}
	if after == "" {
		context.AfterFunc(ctx, sub.Close)
		return st, nil
	}
	out := make(chan *Event)
	st.C = out
	go func() {
		defer close(out)
		defer sub.Close()
		last := afterSeq
		send := func(e *Event) bool {
			select {
			case out <- e:
				return true
			case <-ctx.Done():
				return false
			}
		}
		for {
			evs, err := h.EventsAfter(ctx, f.OrgID, f.InstanceID, last, page)
			if err != nil {
				if ctx.Err() == nil {
					st.mu.Lock()
					st.err = err
					st.mu.Unlock()
					send(nil)
				}
				return
			}
			for _, e := range evs {
				if !send(e) {
					return
				}
				last = e.Seq
			}
			if len(evs) < page {
				break
			}
		}
		for {
			select {
			case e, ok := <-sub.C:
				if !ok {
					return
				}
				if e != nil && e.Seq <= last {
					continue
				}
				if !send(e) {
					return
				}
				if e == nil {
					return
				}
				last = e.Seq
			case <-ctx.Done():
				return
			}
		}
	}()
	return st, nil
}
