package poller_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/leadstream/leadstream/internal/eventlog"
	"github.com/leadstream/leadstream/internal/eventlog/eventlogtest"
	"github.com/leadstream/leadstream/internal/events"
	"github.com/leadstream/leadstream/internal/marketo"
	"github.com/leadstream/leadstream/internal/marketo/marketotest"
	"github.com/leadstream/leadstream/internal/poller"
)

// switchedLog reads positions from one of two real logs: the test's, or
// one that is closed (a log that does not answer).
type switchedLog struct{ cur atomic.Pointer[eventlog.Log] }

func (s *switchedLog) LastPosition(ctx context.Context, orgID, instanceID string) (events.Position, bool, error) {
	return s.cur.Load().LastPosition(ctx, orgID, instanceID)
}

// Polls that fail because the event log does not answer back off
// exponentially, up to a bound, on the poller's clock; a poll that fails
// at Marketo (a rate limit) comes at the instance's interval as ever, and
// once the log answers again so do the polls.
func TestLogFailuresBackOff(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	in := e.addInstance("inst")
	addLeadActivities(e.fake, 5)
	down := eventlogtest.New(t)
	down.Close()
	pos := &switchedLog{}
	pos.cur.Store(e.log)
	clock := newFakeClock()
	var polls, failures atomic.Int32
	const base, bound = time.Second, 20 * time.Second
	e.pos = pos
	e.startPoller(poller.Options{
		Clock: clock, LogRetryBase: base, LogRetryMax: bound,
		ClientOptions: marketo.Options{MaxRetries: 1},
		ObservePoll: func(_ string, _ time.Duration, err error) {
			if err != nil {
				failures.Add(1)
			}
			polls.Add(1)
		},
	})
	// nextPoll waits for poll number n to be over and the next one to be
	// scheduled, and returns how far ahead on the clock that is.
	nextPoll := func(n int32, min, max time.Duration) time.Duration {
		t.Helper()
		var d time.Duration
		eventually(t, patience, func() (bool, string) {
			var ok bool
			d, ok = clock.next()
			return polls.Load() == n && ok && d >= min && d <= max,
				fmt.Sprintf("%d polls, next in %v (%v), want poll %d and the next within [%v, %v]", polls.Load(), d, ok, n, min, max)
		})
		return d
	}
	// The interval is testInterval, ±10%.
	lo, hi := testInterval*9/10, testInterval*11/10
	d := nextPoll(1, lo, hi)
	e.waitStored(in.ID, 5, patience)

	// Marketo refuses (606, and its one retry): no backoff of the log's.
	e.fake.SetFault(marketotest.Fault{Code: "606", Times: 2, Path: activities})
	clock.Advance(d)
	d = nextPoll(2, lo, hi)
	if failures.Load() != 1 {
		t.Fatalf("%d failed polls, want 1 (the rate limit)", failures.Load())
	}

	pos.cur.Store(down)
	want := base
	for n := int32(3); n < 10; n++ {
		clock.Advance(d)
		d = nextPoll(n, want, want)
		want = min(2*want, bound)
	}
	if d != bound {
		t.Fatalf("backoff after 7 log failures in a row %v, want the bound %v", d, bound)
	}

	pos.cur.Store(e.log)
	addLeadActivities(e.fake, 5)
	clock.Advance(d)
	nextPoll(10, lo, hi)
	e.waitStored(in.ID, 10, patience)
}
