package poller_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/leadstream/leadstream/internal/marketo"
	"github.com/leadstream/leadstream/internal/marketo/marketotest"
	"github.com/leadstream/leadstream/internal/poller"
)

// TestFaultsAreSurvived makes Marketo misbehave for a few calls, longer
// than the client's retries last, and checks that the failure is recorded
// and that polling carries on afterwards without losing or repeating.
func TestFaultsAreSurvived(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		fault   marketotest.Fault
		wantErr error
	}{
		{"606 rate limit", marketotest.Fault{Code: "606"}, marketo.ErrRateLimited},
		{"615 concurrency limit", marketotest.Fault{Code: "615"}, marketo.ErrRateLimited},
		{"601 token invalid", marketotest.Fault{Code: "601"}, marketo.ErrTransient},
		{"602 token expired", marketotest.Fault{Code: "602"}, marketo.ErrTransient},
		{"604 timed out", marketotest.Fault{Code: "604"}, marketo.ErrTransient},
		{"HTTP 503", marketotest.Fault{HTTPStatus: 503}, marketo.ErrTransient},
		{"slow answer", marketotest.Fault{Delay: 2 * time.Second}, marketo.ErrUnreachable},
		{"malformed JSON", marketotest.Fault{Malformed: true}, marketo.ErrUnreachable},
		{"1003 bad request", marketotest.Fault{Code: "1003"}, marketo.ErrBadRequest},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			in := e.addInstance("inst")
			addLeadActivities(e.fake, 10)
			log := &pollLog{st: e.st}
			e.startPoller(poller.Options{
				ObservePoll: log.observe,
				ClientOptions: marketo.Options{
					MaxRetries:  1,
					CallTimeout: 500 * time.Millisecond,
					BackoffBase: time.Millisecond,
				},
			})
			e.waitStored(in.ID, 10, patience)

			// One call and its retry fail (one poll), then one more call.
			f := tt.fault
			f.Times, f.Path = 3, activities
			e.fake.SetFault(f)
			addLeadActivities(e.fake, 10)
			e.waitStored(in.ID, 20, patience)
			checkGapFree(t, e.stored(in.ID), 20)

			_, errs, lastErrors := log.snapshot()
			if !log.sawError(tt.wantErr) {
				t.Fatalf("poll errors %v, want one matching %v", errs, tt.wantErr)
			}
			for _, le := range lastErrors {
				if le == "" || strings.Contains(le, secretOf(in.ID)) || strings.Contains(le, "\n") {
					t.Fatalf("LastError %q: want a short line without secrets", le)
				}
			}
			t.Logf("LastError: %s", lastErrors[0])
			eventually(t, patience, func() (bool, string) {
				ps := e.pollState(in.ID)
				return ps.LastError == "" && ps.EventsIngested == 20 && ps.PausedUntil == nil,
					"poll state after recovery: " + ps.LastError
			})
		})
	}
}

func TestQuotaExceededPausesInstance(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	in := e.addInstance("inst")
	other := e.addInstance("other") // same Marketo subscription
	addLeadActivities(e.fake, 5)
	p, stop := e.startPoller(poller.Options{})
	e.waitStored(in.ID, 5, patience)
	e.waitStored(other.ID, 5, patience)

	// Every activities call answers 607 from now on: both instances pause.
	e.fake.SetFault(marketotest.Fault{Code: "607", Path: activities})
	var paused time.Time
	eventually(t, patience, func() (bool, string) {
		ps := e.pollState(in.ID)
		if ps.PausedUntil != nil {
			paused = *ps.PausedUntil
		}
		return ps.PausedUntil != nil && strings.Contains(ps.LastError, "quota"), "not paused; last error " + ps.LastError
	})
	if d := time.Until(paused); d <= 0 || d > 25*time.Hour {
		t.Fatalf("paused until %v, want the next quota reset (midnight US Central)", paused)
	}
	eventually(t, patience, func() (bool, string) {
		ps := e.pollState(other.ID)
		return ps.PausedUntil != nil, "other instance not paused"
	})
	e.fake.ClearFaults()

	// Paused: no calls, PollNow refused, also for a poller started afresh.
	addLeadActivities(e.fake, 3)
	if err := p.PollNow(in.ID); !errors.Is(err, poller.ErrNotPollable) {
		t.Fatalf("PollNow of a paused instance: %v, want ErrNotPollable", err)
	}
	stop()
	before := e.fake.Stats().RESTCalls
	e.startPoller(poller.Options{})
	time.Sleep(8 * testInterval)
	if after := e.fake.Stats().RESTCalls; after != before {
		t.Fatalf("%d REST calls while paused", after-before)
	}
	if n := len(e.stored(in.ID)); n != 5 {
		t.Fatalf("%d events while paused, want 5", n)
	}
}
