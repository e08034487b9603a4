package eventlog_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/leadstream/leadstream/internal/eventlog"
	"github.com/leadstream/leadstream/internal/eventlog/eventlogtest"
	"github.com/leadstream/leadstream/internal/events"
)

func ev(org, inst string, src events.Source, obj, typ string, payload string) *events.Event {
	now := time.Now().UTC().Truncate(time.Millisecond)
	return &events.Event{ID: fmt.Sprint(time.Now().UnixNano()), OrgID: org, InstanceID: inst, Source: src,
		ObjectType: obj, EventType: typ, OccurredAt: now, ReceivedAt: now, Payload: events.JSON(payload)}
}

func seqs(evs []*events.Event) []int64 {
	out := make([]int64, len(evs))
	for i, e := range evs {
		out[i] = e.Seq
	}
	return out
}

// Events come back as appended, byte for byte, filtered by the server on
// organization, instance, source, object type and event type.
func TestAppendReadFilters(t *testing.T) {
	l := eventlogtest.New(t)
	ctx := context.Background()
	all := []*events.Event{
		ev("o1", "i1", events.SourceWebhook, "webhook", "WEBHOOK", `{"a": "<b>",  "sp" : 1}`),
		ev("o1", "i1", events.SourcePoller, "leads", "CREATED", `{"n":1}`),
		ev("o1", "i2", events.SourcePoller, "activities", "Send Email.v2", `{"n":2}`),
		ev("o2", "i3", events.SourcePoller, "leads", "CREATED", `{"n":3}`),
		ev("o1", "i1", events.SourcePoller, "activities", "Visit Web Page", `{"n":4}`),
	}
	for _, e := range all[:2] {
		if _, err := l.Append(ctx, e); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.AppendPage(ctx, all[2:], events.Position{From: "t0", Next: "t1"}); err != nil {
		t.Fatal(err)
	}
	for i := 1; i < len(all); i++ {
		if all[i].Seq <= all[i-1].Seq {
			t.Fatalf("sequences not increasing: %v", seqs(all))
		}
	}
	tests := []struct {
		name string
		f    events.Filter
		want []*events.Event
	}{
		{"instance", events.Filter{OrgID: "o1", InstanceID: "i1"}, []*events.Event{all[0], all[1], all[4]}},
		{"organization", events.Filter{OrgID: "o1"}, []*events.Event{all[0], all[1], all[2], all[4]}},
		{"other organization's instance", events.Filter{OrgID: "o2", InstanceID: "i1"}, nil},
		{"source", events.Filter{OrgID: "o1", Sources: []events.Source{events.SourcePoller}}, []*events.Event{all[1], all[2], all[4]}},
		{"object type", events.Filter{OrgID: "o1", ObjectTypes: []string{"activities"}}, []*events.Event{all[2], all[4]}},
		{"event types with dots and spaces", events.Filter{OrgID: "o1", EventTypes: []string{"Send Email.v2", "CREATED"}}, []*events.Event{all[1], all[2]}},
		{"no such type", events.Filter{OrgID: "o1", EventTypes: []string{"Send Email"}}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := l.Read(ctx, tc.f, 0, 100)
			if err != nil {
				t.Fatal(err)
			}
			if fmt.Sprint(seqs(got)) != fmt.Sprint(seqs(tc.want)) {
				t.Fatalf("got %v, want %v", seqs(got), seqs(tc.want))
			}
			for i, e := range got {
				if string(e.Payload) != string(tc.want[i].Payload) || e.ID != tc.want[i].ID || e.EventType != tc.want[i].EventType ||
					!e.OccurredAt.Equal(tc.want[i].OccurredAt) {
					t.Fatalf("event %d = %+v, want %+v", i, e, tc.want[i])
				}
			}
		})
	}
	// After a cursor, and a page of one.
	got, err := l.Read(ctx, events.Filter{OrgID: "o1"}, all[1].Seq, 1)
	if err != nil || len(got) != 1 || got[0].Seq != all[2].Seq {
		t.Fatalf("after %d: %v %v", all[1].Seq, seqs(got), err)
	}
	pos, ok, err := l.LastPosition(ctx, "o1", "i1")
	if err != nil || !ok || pos != (events.Position{From: "t0", Next: "t1", Seq: all[4].Seq}) {
		t.Fatalf("LastPosition = %+v %v %v", pos, ok, err)
	}
	if _, ok, err := l.LastPosition(ctx, "o1", "nope"); ok || err != nil {
		t.Fatalf("LastPosition of an instance without pages: %v %v", ok, err)
	}
}

// A filter with more combinations than the server takes still returns
// exactly the matching events.
func TestWideFilter(t *testing.T) {
	l := eventlogtest.New(t)
	ctx := context.Background()
	var types []string
	for i := range 100 {
		types = append(types, fmt.Sprint("type ", i))
	}
	var page []*events.Event
	for i := range 300 {
		page = append(page, ev("o", "i", events.SourcePoller, "activities", fmt.Sprint("type ", i%150), "{}"))
	}
	if err := l.AppendPage(ctx, page, events.Position{}); err != nil {
		t.Fatal(err)
	}
	got, err := l.Read(ctx, events.Filter{OrgID: "o", EventTypes: types, ObjectTypes: []string{"activities", "x"}, Sources: []events.Source{events.SourcePoller}}, 0, 150)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 150 {
		t.Fatalf("got %d events, want 150", len(got))
	}
	for _, e := range got {
		var n int
		fmt.Sscanf(e.EventType, "type %d", &n)
		if n >= 100 {
			t.Fatalf("event of %q passed the filter", e.EventType)
		}
	}
}

// The tail sees every event appended after it started, in order, whoever
// appended it; a purge removes one instance's events only.
func TestTailAndPurge(t *testing.T) {
	l := eventlogtest.New(t)
	ctx := context.Background()
	var mu sync.Mutex
	var seen []int64
	tail, err := l.StartTail(ctx, nil, func(e *events.Event, _ uint64) {
		mu.Lock()
		seen = append(seen, e.Seq)
		mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	defer tail.Stop()
	var wg sync.WaitGroup
	for i := range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := l.Append(ctx, ev("o", fmt.Sprint("i", i%2), events.SourceWebhook, "webhook", "WEBHOOK", "{}")); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	deadline := time.Now().Add(10 * time.Second)
	for {
		mu.Lock()
		n := len(seen)
		mu.Unlock()
		if n == 50 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("tail saw %d of 50 events", n)
		}
		time.Sleep(5 * time.Millisecond)
	}
	for i := 1; i < len(seen); i++ {
		if seen[i] <= seen[i-1] {
			t.Fatalf("tail out of order: %v", seen)
		}
	}
	if err := l.PurgeInstance(ctx, "i0"); err != nil {
		t.Fatal(err)
	}
	left, err := l.Read(ctx, events.Filter{OrgID: "o"}, 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	if len(left) != 25 {
		t.Fatalf("%d events left after the purge, want 25", len(left))
	}
	for _, e := range left {
		if e.InstanceID != "i1" {
			t.Fatalf("purged instance's event left: %+v", e)
		}
	}
}

// An after older than what the log keeps is CURSOR_EXPIRED, naming where
// history now starts; a current cursor is not.
// A purge of a deleted instance at the start of the log does not make it so.
func TestCursorExpired(t *testing.T) {
	l := eventlogtest.Open(t, eventlog.Options{DataDir: t.TempDir(), MaxAge: time.Second})
	ctx := context.Background()
	deleted := ev("o", "gone", events.SourceWebhook, "webhook", "WEBHOOK", "{}")
	old := ev("o", "i", events.SourceWebhook, "webhook", "WEBHOOK", "{}")
	old2 := ev("o", "i", events.SourceWebhook, "webhook", "WEBHOOK", "{}")
	for _, e := range []*events.Event{deleted, old, old2} {
		if _, err := l.Append(ctx, e); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.PurgeInstance(ctx, "gone"); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		got, err := l.Read(ctx, events.Filter{OrgID: "o"}, 0, 10)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("events older than MaxAge are still kept")
		}
		time.Sleep(50 * time.Millisecond)
	}
	fresh := ev("o", "i", events.SourceWebhook, "webhook", "WEBHOOK", "{}")
	if _, err := l.Append(ctx, fresh); err != nil {
		t.Fatal(err)
	}
	for _, after := range []int64{deleted.Seq, old.Seq} {
		_, err := l.Read(ctx, events.Filter{OrgID: "o"}, after, 10)
		var ce *events.CursorExpiredError
		if !errors.As(err, &ce) || ce.Oldest != events.FormatCursor(fresh.Seq-1) {
			t.Fatalf("read after expired cursor %d: %v", after, err)
		}
	}
	got, err := l.Read(ctx, events.Filter{OrgID: "o"}, old2.Seq, 10)
	if err != nil || len(got) != 1 || got[0].Seq != fresh.Seq {
		t.Fatalf("read after the last expired cursor: %v %v", seqs(got), err)
	}
}

// A tail with wants decodes only the events it wants, reading organization
// and instance off the subject (ids with spaces and dots included); the
// others reach fn as nil.
func TestTailWants(t *testing.T) {
	l := eventlogtest.New(t)
	ctx := context.Background()
	const org, want, skip = "o.rg 1", "in st/2", "skip me"
	var mu sync.Mutex
	var got []*events.Event
	skipped := 0
	asked := map[string]bool{}
	tail, err := l.StartTail(ctx, func(o, i string) bool {
		mu.Lock()
		asked[o+"|"+i] = true
		mu.Unlock()
		return i == want
	}, func(e *events.Event, _ uint64) {
		mu.Lock()
		defer mu.Unlock()
		if e == nil {
			skipped++
			return
		}
		got = append(got, e)
	})
	if err != nil {
		t.Fatal(err)
	}
	defer tail.Stop()
	for i := range 20 {
		inst := want
		if i%2 == 1 {
			inst = skip
		}
		if _, err := l.Append(ctx, ev(org, inst, events.SourceWebhook, "webhook", "WEBHOOK", fmt.Sprintf(`{"n":%d}`, i))); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		mu.Lock()
		n := len(got) + skipped
		mu.Unlock()
		if n == 20 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("tail saw %d of 20 events", n)
		}
		time.Sleep(5 * time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	if skipped != 10 || len(got) != 10 {
		t.Fatalf("decoded %d, skipped %d; want 10 and 10", len(got), skipped)
	}
	for i, e := range got {
		if e.InstanceID != want || e.OrgID != org || string(e.Payload) != fmt.Sprintf(`{"n":%d}`, 2*i) {
			t.Errorf("event %d: %+v", i, e)
		}
	}
	if len(asked) != 2 || !asked[org+"|"+want] || !asked[org+"|"+skip] {
		t.Errorf("wants was asked %v", asked)
	}
}

// Purges of deleted instances that move the start of the log leave every
// other reader's cursor valid, however far back, several purges in a row
// too (TestCursorExpired: retention still expires cursors after a purge).
func TestCursorAfterPurge(t *testing.T) {
	l := eventlogtest.New(t)
	ctx := context.Background()
	appendAll := func(evs ...*events.Event) {
		t.Helper()
		for _, e := range evs {
			if _, err := l.Append(ctx, e); err != nil {
				t.Fatal(err)
			}
		}
	}
	a1 := ev("o", "a", events.SourceWebhook, "webhook", "WEBHOOK", "{}")
	a2 := ev("o", "a", events.SourceWebhook, "webhook", "WEBHOOK", "{}")
	c1 := ev("o", "c", events.SourceWebhook, "webhook", "WEBHOOK", "{}")
	b1 := ev("o", "b", events.SourceWebhook, "webhook", "WEBHOOK", "{}")
	c2 := ev("o", "c", events.SourceWebhook, "webhook", "WEBHOOK", "{}")
	b2 := ev("o", "b", events.SourceWebhook, "webhook", "WEBHOOK", "{}")
	appendAll(a1, a2, c1, b1, c2, b2)

	tests := []struct {
		name   string
		purge  string
		filter events.Filter
		after  int64
		want   []*events.Event
	}{
		{"instance after the purged start", "a", events.Filter{OrgID: "o", InstanceID: "b"}, a1.Seq, []*events.Event{b1, b2}},
		{"organization after the purged start", "", events.Filter{OrgID: "o"}, a1.Seq, []*events.Event{c1, b1, c2, b2}},
		{"after a second purge", "c", events.Filter{OrgID: "o", InstanceID: "b"}, a1.Seq, []*events.Event{b1, b2}},
		{"organization after both", "", events.Filter{OrgID: "o"}, a2.Seq, []*events.Event{b1, b2}},
	}
	for _, tc := range tests {
		if tc.purge != "" {
			if err := l.PurgeInstance(ctx, tc.purge); err != nil {
				t.Fatal(err)
			}
		}
		got, err := l.Read(ctx, tc.filter, tc.after, 10)
		if err != nil || fmt.Sprint(seqs(got)) != fmt.Sprint(seqs(tc.want)) {
			t.Fatalf("%s: read after %d: %v %v, want %v", tc.name, tc.after, seqs(got), err, seqs(tc.want))
		}
	}
}
