package events

import (
	"context"
	"sync"
)

// History reads stored events for replay.
type History interface {
	EventsAfter(ctx context.Context, orgID, instanceID string, after int64, limit int) ([]*Event, error)
	// InstanceIDs lists an organization's instances, for org-wide replays.
	InstanceIDs(ctx context.Context, orgID string) ([]string, error)
}

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
//
// Cursors are ordered within one instance. Without an instance, after
// applies to each instance of the organization in turn: each one's stored
// events above it are replayed, then live events follow, none twice.
func (sr Streamer) Open(ctx context.Context, f Filter, after string) (*Stream, error) {
	b, h, page := sr.Broker, sr.History, sr.PageSize
	if page <= 0 {
		page = 500
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
		send := func(e *Event) bool {
			select {
			case out <- e:
				return true
			case <-ctx.Done():
				return false
			}
		}
		fail := func(err error) {
			if ctx.Err() == nil {
				st.mu.Lock()
				st.err = err
				st.mu.Unlock()
				send(nil)
			}
		}
		instances := []string{f.InstanceID}
		if f.InstanceID == "" {
			var err error
			if instances, err = h.InstanceIDs(ctx, f.OrgID); err != nil {
				fail(err)
				return
			}
		}
		last := map[string]int64{} // per instance, the last sequence sent
		for _, inst := range instances {
			last[inst] = afterSeq
			for {
				evs, err := h.EventsAfter(ctx, f.OrgID, inst, last[inst], page)
				if err != nil {
					fail(err)
					return
				}
				for _, e := range evs {
					if !send(e) {
						return
					}
					last[inst] = e.Seq
				}
				if len(evs) < page {
					break
				}
			}
		}
		for {
			select {
			case e, ok := <-sub.C:
				if !ok {
					return
				}
				if e != nil {
					if seen, ok := last[e.InstanceID]; ok && e.Seq <= seen {
						continue
					}
				}
				if !send(e) || e == nil {
					return
				}
				last[e.InstanceID] = e.Seq
			case <-ctx.Done():
				return
			}
		}
	}()
	return st, nil
}
