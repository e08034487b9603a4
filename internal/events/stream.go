package events

import (
	"context"
	"sync"
)

// Stream is one subscriber's events: logged ones after a cursor, then live
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

// Streamer opens subscriber streams over a broker and the log.
type Streamer struct {
	Broker   *Broker
	History  History
	PageSize int // events per log read during replay (default 500)
}

// Open subscribes before it reads the log, so an event appended while the
// replay runs arrives live and is dropped there if the replay had it: the
// log's sequence orders every event, whatever its instance. Without after,
// the broker's channel is handed out as it is: no goroutine per idle
// subscription. The stream is closed when ctx ends. An after older than the
// log keeps is a *CursorExpiredError, returned here.
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
	// The first page is read here, so that an expired cursor is the
	// subscription's error rather than a stream that ends at once.
	first, err := h.Read(ctx, f, afterSeq, page)
	if err != nil {
		sub.Close()
		return nil, err
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
		last := afterSeq
		evs := first
		for {
			for _, e := range evs {
				if !send(e) {
					return
				}
				last = e.Seq
			}
			if len(evs) < page {
				break
			}
			if evs, err = h.Read(ctx, f, last, page); err != nil {
				fail(err)
				return
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
				if !send(e) || e == nil {
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
