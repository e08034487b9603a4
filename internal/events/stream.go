package events

import (
	"context"
)

// Streamer attaches subscriptions that may start in the log: with an
// `after` cursor, logged events after it, then live ones, with no gap and no
// duplicate.
//
// The mechanism lives here, beside the broker, because its switch from the
// log to live events must happen under the broker's lock, and both
// transports use it: the websocket one with its own sinks, SSE with the
// channel form (Open).
type Streamer struct {
	Broker   *Broker
	History  History
	PageSize int // events per log read during replay (default 500)
}

// Attach registers sink for the events f chooses. Without after the
// subscription is live at once and rp is nil. With after, the subscription
// is registered before the log is read, in a mode where the broker holds
// its live events back (at most its buffer size; past that the replay ends
// it as slow); the caller drains rp on a goroutine of its own, then calls
// rp.Live until it returns true: from then on the broker offers events to
// sink directly and the goroutine is no longer needed. An after older than
// the log keeps is a *CursorExpiredError, returned here. Close sub when
// done.
func (sr Streamer) Attach(ctx context.Context, f Filter, after string, sink Sink) (sub *Subscription, rp *Replay, err error) {
	afterSeq, err := ParseCursor(after)
	if err != nil {
		return nil, nil, err
	}
	if after == "" {
		return sr.Broker.Attach(f, sink), nil, nil
	}
	page := sr.PageSize
	if page <= 0 {
		page = 500
	}
	sub = sr.Broker.attach(f, sink, true)
	// The first page is read here, so that an expired cursor is the
	// subscription's error rather than a stream that ends at once.
	first, err := sr.History.Read(ctx, f, afterSeq, page)
	if err != nil {
		sub.Close()
		return nil, nil, err
	}
	return sub, &Replay{sub: sub, h: sr.History, page: page, evs: first, logDone: len(first) < page,
		last: afterSeq, lastInstance: f.InstanceID}, nil
}

// Replay is a subscription catching up: the log's events after its cursor,
// then the live events the broker held back meanwhile. Use it from one
// goroutine.
type Replay struct {
	sub     *Subscription
	h       History
	page    int
	evs     []*Event // read, not handed out yet: from i on
	i       int
	logDone bool // the log had no more; evs (if any) are held live events
	// last is the last event handed out (the cursor it started from
	// before): what Next returns is delivered by the time Next is called
	// again, so a slow error names it.
	last         int64
	lastInstance string
}

// Next returns the next event to deliver, or nil when there is none now:
// the subscription ended (its sink was told why), ctx ended, or it caught
// up; then call Live.
func (r *Replay) Next(ctx context.Context) *Event {
	for {
		if r.sub.done.Load() || ctx.Err() != nil {
			return nil
		}
		if r.sub.overflow.Load() {
			r.endSlow()
			return nil
		}
		if r.i < len(r.evs) {
			e := r.evs[r.i]
			r.evs[r.i] = nil
			r.i++
			if e.Seq <= r.last {
				continue // held live, and the log had it too
			}
			r.last, r.lastInstance = e.Seq, e.InstanceID
			return e
		}
		if r.logDone {
			b := r.sub.broker
			b.mu.Lock()
			r.evs, r.i, r.sub.held = r.sub.held, 0, nil
			b.mu.Unlock()
			if len(r.evs) == 0 {
				return nil
			}
			continue
		}
		evs, err := r.h.Read(ctx, r.sub.filter, r.last, r.page)
		if err != nil {
			if ctx.Err() == nil {
				r.sub.end(err)
			}
			return nil
		}
		r.evs, r.i, r.logDone = evs, 0, len(evs) < r.page
	}
}

// Live switches the subscription to live delivery once nothing is left
// to replay and reports true; false means Next has more. It is true too
// when the subscription ended.
func (r *Replay) Live() bool {
	b, s := r.sub.broker, r.sub
	b.mu.Lock()
	defer b.mu.Unlock()
	switch {
	case s.closed:
		return true
	case s.overflow.Load():
		s.endLocked(r.slowError())
		return true
	case r.i < len(r.evs) || !r.logDone || len(s.held) > 0:
		return false
	}
	s.catching, s.held = false, nil
	s.lastSeq, s.lastInstance, s.replayed = r.last, r.lastInstance, r.last
	return true
}

func (r *Replay) endSlow() {
	b := r.sub.broker
	b.mu.Lock()
	defer b.mu.Unlock()
	r.sub.endLocked(r.slowError())
}

func (r *Replay) slowError() *SlowError {
	e := &SlowError{InstanceID: r.lastInstance}
	if r.last > 0 {
		e.LastCursor = FormatCursor(r.last)
	}
	return e
}

// Stream is the channel form of a subscription that may start in the log,
// for a transport that has a goroutine per stream anyway (SSE).
type Stream struct {
	sub *Subscription
	c   <-chan *Event
	rp  *Replay // until caught up
}

// Open is Attach with the broker's channel sink: Next yields the events.
// The stream is closed when ctx ends.
func (sr Streamer) Open(ctx context.Context, f Filter, after string) (*Stream, error) {
	sink, ch := sr.Broker.newChanSink()
	sub, rp, err := sr.Attach(ctx, f, after, sink)
	if err != nil {
		return nil, err
	}
	context.AfterFunc(ctx, sub.Close)
	return &Stream{sub: sub, c: ch, rp: rp}, nil
}

// Next waits for the next event. It returns nil and the reason when the
// stream ended with an error, nil and nil when it was closed or ctx ended.
func (st *Stream) Next(ctx context.Context) (*Event, error) {
	for st.rp != nil {
		if e := st.rp.Next(ctx); e != nil {
			return e, nil
		}
		if ctx.Err() != nil {
			return nil, nil
		}
		// The channel is empty while replaying: the held events fit.
		if st.rp.Live() {
			st.rp = nil
		}
	}
	select {
	case e, ok := <-st.c:
		if !ok {
			return nil, nil
		}
		if e == nil {
			return nil, st.sub.Err()
		}
		return e, nil
	case <-ctx.Done():
		return nil, nil
	}
}
