package poller_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/leadstream/leadstream/internal/events"
	"github.com/leadstream/leadstream/internal/instance"
	"github.com/leadstream/leadstream/internal/marketo"
	"github.com/leadstream/leadstream/internal/marketo/marketotest"
	"github.com/leadstream/leadstream/internal/poller"
	"github.com/leadstream/leadstream/internal/store"
)

func TestActivitiesBecomeEvents(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	const unknownType = 999 // not in the fake's types.json
	typeIDs := "12,13,37,6,999"
	withTypes := withConfig(instance.KeyActivityTypes, typeIDs)
	a := e.addInstance("inst-a", withTypes, withConfig(instance.KeyCallbackURL, "https://app.example.com/hook"))
	// Another instance of the same subscription, asking for Send Email only.
	b := e.addInstance("inst-b", withConfig(instance.KeyActivityTypes, "6"))

	// 372 activities, 1 in 6 of a type not asked for: 310 events, on a
	// full page of 300, an empty page, and a last one.
	e.fake.SetEmptyPageEvery(2)
	cycle := []int{
		marketotest.TypeNewLead, marketotest.TypeChangeDataValue, marketotest.TypeDeleteLead,
		marketotest.TypeSendEmail, unknownType, marketotest.TypeVisitWebpage,
	}
	var want, wantB []marketotest.Activity
	for i := range 372 {
		typ := cycle[i%len(cycle)]
		var act marketotest.Activity
		if typ == unknownType {
			act = e.fake.AddActivities(marketotest.Activity{LeadID: int64(5000 + i), ActivityTypeID: unknownType, PrimaryAttributeValue: "custom"})[0]
		} else {
			act = e.fake.AddLeadActivity(typ, 5000+i)
		}
		if typ != marketotest.TypeVisitWebpage {
			want = append(want, act)
		}
		if typ == marketotest.TypeSendEmail {
			wantB = append(wantB, act)
		}
	}

	sub := e.broker.Subscribe(events.Filter{OrgID: orgID, InstanceID: a.ID})
	defer sub.Close()
	e.startPoller(poller.Options{})

	live := func(n int) []*events.Event {
		t.Helper()
		var got []*events.Event
		timeout := time.After(patience)
		for len(got) < n {
			select {
			case ev, ok := <-sub.C:
				if !ok || ev == nil {
					t.Fatalf("subscription ended after %d events: %v", len(got), sub.Err())
				}
				got = append(got, ev)
			case <-timeout:
				t.Fatalf("%d live events, want %d", len(got), n)
			}
		}
		return got
	}
	got := live(len(want))

	wantMapping := map[int][2]string{ // type -> objectType, eventType
		marketotest.TypeNewLead:         {"leads", "CREATED"},
		marketotest.TypeChangeDataValue: {"leads", "UPDATED"},
		marketotest.TypeDeleteLead:      {"leads", "DELETED"},
		marketotest.TypeSendEmail:       {"activities", "Send Email"},
		unknownType:                     {"activities", "activity 999"},
	}
	for i, ev := range got {
		act := want[i] // events come in Marketo's order
		m := wantMapping[act.ActivityTypeID]
		switch {
		case ev.DedupeKey != act.MarketoGUID:
			t.Fatalf("event %d: dedupe key %q, want marketoGUID %q", i, ev.DedupeKey, act.MarketoGUID)
		case ev.ObjectType != m[0] || ev.EventType != m[1]:
			t.Errorf("type %d: %s/%s, want %s/%s", act.ActivityTypeID, ev.ObjectType, ev.EventType, m[0], m[1])
		case ev.ObjectID == nil || *ev.ObjectID != itoa(act.LeadID):
			t.Errorf("event %d: objectId %v, want %d", i, ev.ObjectID, act.LeadID)
		case !ev.OccurredAt.Equal(act.ActivityDate):
			t.Errorf("event %d: occurredAt %v, want %v", i, ev.OccurredAt, act.ActivityDate)
		case !bytes.Equal(ev.Payload, wantPayload(t, act)):
			t.Errorf("event %d: payload\n%s\nwant\n%s", i, ev.Payload, wantPayload(t, act))
		case ev.Source != events.SourcePoller || ev.InstanceID != a.ID || ev.OrgID != orgID:
			t.Errorf("event %d: source %s instance %s org %s", i, ev.Source, ev.InstanceID, ev.OrgID)
		case !ev.Notify:
			t.Errorf("event %d of an instance with a callback URL is not for delivery", i)
		}
	}

	// The other instance gets its own types' events, without a callback
	// delivery, and the type names come from the same cache.
	e.waitStored(b.ID, len(wantB), patience)
	for i, ev := range e.stored(b.ID) {
		if ev.Notify || ev.DedupeKey != wantB[i].MarketoGUID || ev.EventType != "Send Email" {
			t.Fatalf("instance b event %d: %+v", i, ev)
		}
	}

	// Later activities arrive live too.
	more := e.fake.AddLeadActivity(marketotest.TypeChangeDataValue, 42)
	last := e.stored(a.ID)[len(want)-1].Seq
	if ev := live(1)[0]; ev.DedupeKey != more.MarketoGUID || ev.EventType != "UPDATED" || ev.Seq <= last {
		t.Fatalf("live event %+v, want the new activity after cursor %d", ev, last)
	}
	checkGapFree(t, e.stored(a.ID), len(want)+1)

	eventually(t, patience, func() (bool, string) {
		ps := e.pollState(a.ID)
		ok := ps.EventsIngested == int64(len(want)+1) && ps.LastError == "" && ps.LastSuccessAt != nil && ps.LastPollAt != nil
		return ok, fmt.Sprintf("poll state %+v, want %d events ingested and success", ps, len(want)+1)
	})
	st := e.fake.Stats()
	if n := st.RESTCallsByPath[typesPath]; n != 1 {
		t.Errorf("types.json called %d times; want 1 (cached per Marketo host)", n)
	}
	// The poller goes on polling: a call may be in flight, counted in
	// RESTCalls and not yet in ByResult.
	if st.ByResult["ok"] != st.RESTCalls-st.InFlight {
		t.Errorf("REST results %v of %d calls (%d in flight), want all ok", st.ByResult, st.RESTCalls, st.InFlight)
	}
}

func TestRestartContinuesWhereItStopped(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	in := e.addInstance("inst")
	const total = 310 // pages of 300, empty, 10
	addLeadActivities(e.fake, total)
	e.fake.SetEmptyPageEvery(2)
	e.fake.SetLatency(300 * time.Millisecond) // time to stop A between pages

	_, stopA := e.startPoller(poller.Options{})
	// Stop A once the first page is stored and its token saved: A is then
	// waiting for the next page. (A repeat of the page is the crash test's
	// subject, and slow on the embedded store.)
	eventually(t, patience, func() (bool, string) {
		ps, err := e.st.PollState(t.Context(), in.ID)
		return err == nil && ps.EventsIngested == marketotest.PageSize, "first page not saved"
	})
	stopA()
	if mid := len(e.stored(in.ID)); mid != marketotest.PageSize {
		t.Fatalf("poller A stored %d of %d before it stopped; want the first page", mid, total)
	}
	calls := e.fake.Stats().RESTCallsByPath[activities]

	e.fake.SetLatency(0)
	e.startPoller(poller.Options{})
	e.waitStored(in.ID, total, patience)
	checkGapFree(t, e.stored(in.ID), total)
	eventually(t, patience, func() (bool, string) {
		ps := e.pollState(in.ID)
		return ps.EventsIngested == total, fmt.Sprintf("eventsIngested %d, want %d", ps.EventsIngested, total)
	})
	if n := e.fake.Stats().RESTCallsByPath[activities] - calls; n < 2 {
		t.Fatalf("poller B made %d activities calls, want the empty page and the last one", n)
	}
}

// TestCrashBetweenIngestAndSaveStoresNoDuplicates simulates a crash after
// pages were appended but before their state was saved: the saved state is
// set back to an earlier one, the gateway stays down longer than the log's
// de-duplication window (one second here), and a new poller must neither
// append the logged pages again nor skip what came after them.
func TestCrashBetweenIngestAndSaveStoresNoDuplicates(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		rewind func(first store.PollState) store.PollState // the state to leave, given the one after the first batch
	}{
		{"no state saved yet", func(first store.PollState) store.PollState { return store.PollState{InstanceID: first.InstanceID} }},
		{"state of the batch before", func(first store.PollState) store.PollState { return first }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			in := e.addInstance("inst")
			const batch = 20
			addLeadActivities(e.fake, batch)
			_, stopA := e.startPoller(poller.Options{})
			e.waitStored(in.ID, batch, patience)
			var first store.PollState
			eventually(t, patience, func() (bool, string) {
				first = e.pollState(in.ID)
				return first.EventsIngested == batch, "first batch not recorded"
			})
			addLeadActivities(e.fake, batch)
			e.waitStored(in.ID, 2*batch, patience)
			// The log has the events before the poll saves its state: stop
			// only once the state counts them, or the stop cancels the save.
			eventually(t, patience, func() (bool, string) {
				ps := e.pollState(in.ID)
				return ps.EventsIngested == 2*batch, fmt.Sprintf("eventsIngested %d, want %d", ps.EventsIngested, 2*batch)
			})
			stopA()
			if err := e.st.SavePollState(t.Context(), tt.rewind(first)); err != nil {
				t.Fatal(err)
			}
			// Down for longer than the de-duplication window: a repeat
			// appended now would be taken as new.
			down := time.Now()
			eventually(t, patience, func() (bool, string) {
				return time.Since(down) > 1500*time.Millisecond, "downtime"
			})
			addLeadActivities(e.fake, 5)
			e.fake.ResetStats()

			e.startPoller(poller.Options{})
			e.waitStored(in.ID, 2*batch+5, patience)
			eventually(t, patience, func() (bool, string) {
				ps := e.pollState(in.ID)
				return ps.EventsIngested == 2*batch+5, "eventsIngested " + itoa(ps.EventsIngested) + ", want every activity counted once"
			})
			checkGapFree(t, e.stored(in.ID), 2*batch+5)
			if n := e.fake.Stats().ByResult["ok"]; n == 0 {
				t.Fatal("poller B made no calls")
			}
		})
	}
}

func TestRevokedCredentialsStopPollingUntilFixed(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	in := e.addInstance("inst")
	addLeadActivities(e.fake, 10)
	p, _ := e.startPoller(poller.Options{RescanEvery: time.Hour})
	e.waitStored(in.ID, 10, patience)

	e.fake.RevokeClient("client-" + in.ID)
	addLeadActivities(e.fake, 5)
	var got store.Instance
	eventually(t, patience, func() (bool, string) {
		var err error
		got, err = e.st.InstanceByID(t.Context(), in.ID)
		return err == nil && !got.Valid, "instance still valid"
	})
	if !strings.HasPrefix(got.InvalidReason, "Marketo refused the API credentials (") ||
		strings.Contains(got.InvalidReason, secretOf(in.ID)) {
		t.Fatalf("invalid reason %q", got.InvalidReason)
	}
	t.Logf("invalid reason: %s", got.InvalidReason)

	// No more calls for it, not even token requests.
	time.Sleep(3 * testInterval)
	before := e.fake.Stats()
	time.Sleep(8 * testInterval)
	if after := e.fake.Stats(); after.RESTCalls != before.RESTCalls || after.TokenRequests != before.TokenRequests {
		t.Fatalf("calls went on after the credentials were refused: REST %d→%d, tokens %d→%d",
			before.RESTCalls, after.RESTCalls, before.TokenRequests, after.TokenRequests)
	}
	if err := p.PollNow(in.ID); !errors.Is(err, poller.ErrNotPollable) {
		t.Fatalf("PollNow of an invalid instance: %v, want ErrNotPollable", err)
	}

	// The user reconnects with new credentials (what updateInstance does).
	e.fake.AddClient("client-2", "new-secret")
	_, err := e.st.UpdateInstance(t.Context(), "", in.ID, func(in *store.Instance) error {
		withConfig(instance.KeyAPIKey, "client-2")(in)
		withConfig(instance.KeyAPISecret, e.box.Seal("new-secret"))(in)
		in.Valid, in.InvalidReason = true, ""
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	p.Refresh()
	e.waitStored(in.ID, 15, patience)
	checkGapFree(t, e.stored(in.ID), 15)
	eventually(t, patience, func() (bool, string) {
		ps := e.pollState(in.ID)
		return ps.EventsIngested == 15 && ps.LastError == "", "poll state: " + ps.LastError
	})
}

// TestSharedLimitsAcrossInstances polls 20 instances of one Marketo
// subscription every 50 ms, many times the calls its limits allow, and
// checks that the shared limits hold while every event still arrives.
// (Few activities: the embedded store under -race is slow with many events.)
func TestSharedLimitsAcrossInstances(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	const instances, perInstance = 20, 3
	ids := make([]string, instances)
	for i := range ids {
		ids[i] = "inst-" + itoa(int64(i))
		e.addInstance(ids[i])
	}
	addLeadActivities(e.fake, perInstance)
	e.fake.SetLatency(5 * time.Millisecond)

	// Marketo's 20 s window scaled down for test speed.
	const window, maxCalls, maxInFlight = 2 * time.Second, 50, 5
	log := &pollLog{st: e.st}
	e.startPoller(poller.Options{
		MaxConcurrent: 10, // more polls at once than calls the limits allow
		Limits:        marketo.NewLimits(maxCalls, window, maxInFlight),
		ObservePoll:   log.observe,
	})
	for _, id := range ids {
		e.waitStored(id, perInstance, patience)
	}
	// Keep the pressure on for more than two windows, with new activities.
	more := addLeadActivities(e.fake, 2)
	eventually(t, patience, func() (bool, string) {
		n := e.fake.Stats().RESTCalls
		return n >= 2*maxCalls+instances, fmt.Sprintf("%d REST calls so far", n)
	})
	for _, id := range ids {
		e.waitStored(id, perInstance+len(more), patience)
		checkGapFree(t, e.stored(id), perInstance+len(more))
	}
	st := e.fake.Stats()
	if n := st.MaxInWindow(window); n > maxCalls {
		t.Errorf("%d calls within %v; the limit is %d", n, window, maxCalls)
	}
	if st.MaxInFlight > maxInFlight {
		t.Errorf("%d calls in flight at once; the limit is %d", st.MaxInFlight, maxInFlight)
	}
	if polls, errs, _ := log.snapshot(); len(errs) > 0 {
		t.Errorf("%d of %d polls failed, first: %v", len(errs), polls, errs[0])
	}
	t.Logf("REST calls %d, most in %v: %d, most in flight: %d", st.RESTCalls, window, st.MaxInWindow(window), st.MaxInFlight)
}

func TestPollNow(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	hourly := withConfig(instance.KeyRefreshInterval, "1h")
	in := e.addInstance("inst", hourly)
	tests := []struct {
		id      string
		mod     func(*store.Instance)
		wantErr bool
	}{
		{id: in.ID},
		{id: "unknown", wantErr: true},
		{id: "disabled", mod: func(in *store.Instance) { in.Disabled = true }, wantErr: true},
		{id: "invalid", mod: func(in *store.Instance) { in.Valid = false; in.InvalidReason = "x" }, wantErr: true},
		{id: "events-off", mod: withConfig(instance.KeyEventsEnabled, "false"), wantErr: true},
		{id: "no-events-key", mod: func(in *store.Instance) {
			in.Config = in.Config[:4] // credentials and URLs only
		}, wantErr: true},
	}
	for _, tt := range tests {
		if tt.mod != nil {
			e.addInstance(tt.id, hourly, tt.mod)
		}
	}
	addLeadActivities(e.fake, 3)
	p, _ := e.startPoller(poller.Options{RescanEvery: time.Hour})
	e.waitStored(in.ID, 3, patience)

	// Hourly: without PollNow nothing more would be polled.
	addLeadActivities(e.fake, 2)
	time.Sleep(5 * testInterval)
	if n := len(e.stored(in.ID)); n != 3 {
		t.Fatalf("%d events before PollNow, want 3", n)
	}
	for _, tt := range tests {
		err := p.PollNow(tt.id)
		if tt.wantErr != (err != nil) || (err != nil && !errors.Is(err, poller.ErrNotPollable)) {
			t.Errorf("PollNow(%s) = %v, want error %v (ErrNotPollable)", tt.id, err, tt.wantErr)
		}
	}
	start := time.Now()
	e.waitStored(in.ID, 5, 5*time.Second)
	t.Logf("PollNow: events stored %v later", time.Since(start).Round(time.Millisecond))

	// A new instance is polled at once by PollNow, before any rescan.
	late := e.addInstance("late", hourly)
	if err := p.PollNow(late.ID); err != nil {
		t.Fatal(err)
	}
	e.waitStored(late.ID, 5, 5*time.Second)
}

func TestPicksUpNewInstances(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name        string
		rescanEvery time.Duration
		refresh     bool
	}{
		{"on Refresh", time.Hour, true},
		{"on rescan", 100 * time.Millisecond, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			p, _ := e.startPoller(poller.Options{RescanEvery: tt.rescanEvery})
			time.Sleep(2 * testInterval) // running, with nothing to poll
			in := e.addInstance("inst")
			addLeadActivities(e.fake, 4)
			if tt.refresh {
				time.Sleep(4 * testInterval)
				if n := e.fake.Stats().RESTCalls; n != 0 {
					t.Fatalf("%d REST calls before Refresh", n)
				}
				p.Refresh()
			}
			e.waitStored(in.ID, 4, patience)
		})
	}
}

func TestDisabledAndDeletedInstancesStop(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	in := e.addInstance("inst")
	addLeadActivities(e.fake, 3)
	p, _ := e.startPoller(poller.Options{RescanEvery: time.Hour})
	e.waitStored(in.ID, 3, patience)

	quiet := func(what string) {
		t.Helper()
		time.Sleep(3 * testInterval) // a poll started before may still end
		before := e.fake.Stats().RESTCalls
		time.Sleep(6 * testInterval)
		if after := e.fake.Stats().RESTCalls; after != before {
			t.Fatalf("%s: REST calls went on (%d→%d)", what, before, after)
		}
	}
	setDisabled := func(d bool) {
		t.Helper()
		if _, err := e.st.UpdateInstance(t.Context(), "", in.ID, func(in *store.Instance) error {
			in.Disabled = d
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		p.Refresh()
	}

	setDisabled(true)
	quiet("disabled")
	addLeadActivities(e.fake, 2)
	setDisabled(false)
	e.waitStored(in.ID, 5, patience)

	// Deleted while a poll waits for Marketo: the poll is cancelled and
	// writes nothing more for it.
	e.fake.SetLatency(10 * time.Second)
	eventually(t, patience, func() (bool, string) {
		return e.fake.Stats().InFlight > 0, "no call in flight"
	})
	if err := e.st.DeleteInstance(t.Context(), orgID, in.ID); err != nil {
		t.Fatal(err)
	}
	p.Refresh()
	eventually(t, 5*time.Second, func() (bool, string) { // well before the answer
		st := e.fake.Stats()
		return st.InFlight == 0 && st.ByResult["canceled"] > 0, "the in-flight call of the deleted instance was not cancelled"
	})
	quiet("deleted")
	if _, err := e.st.PollState(t.Context(), in.ID); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("poll state of the deleted instance: %v, want not found", err)
	}
	if n := len(e.stored(in.ID)); n != 5 {
		t.Fatalf("%d events of the deleted instance, want the 5 from before", n)
	}
}

func TestRunTwiceAndStop(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.addInstance("inst")
	p := poller.New(e.st, e.ing, e.log, e.box, marketotest.HTTPClient(), poller.Options{MinInterval: testInterval})
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	time.Sleep(testInterval)
	if err := p.Run(ctx); err == nil {
		t.Fatal("a second Run of a running poller returned nil")
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return")
	}
}
