package events_test

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/leadstream/leadstream/internal/events"
	"github.com/leadstream/leadstream/internal/store"
	"github.com/leadstream/leadstream/internal/store/storetest"
)

func newIngester(t testing.TB, s *store.Store, b *events.Broker) *events.Ingester {
	t.Helper()
	in := events.NewIngester(s, b, events.IngesterOptions{})
	t.Cleanup(in.Close)
	return in
}

func draft(inst, key string) events.Draft {
	return events.Draft{InstanceID: inst, OrgID: "o1", Source: events.SourceWebhook, DedupeKey: key,
		EventType: "WEBHOOK", ObjectType: "webhook", Payload: events.JSON(`{"k":"` + key + `"}`)}
}

// 200 concurrent events of one instance get 200 distinct, gap-free cursors,
// on the embedded store that loses concurrent counter updates.
func TestIngestConcurrentCursorsGapFree(t *testing.T) {
	s := storetest.New(t)
	in := newIngester(t, s, events.NewBroker(16))
	ctx := context.Background()
	const n = 200
	seqs := make([]int64, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			inst := "i1"
			if i%4 == 0 {
				inst = "i2" // another instance interleaved
			}
			r, err := in.Ingest(ctx, draft(inst, ""))
			if err != nil {
				t.Error(err)
				return
			}
			if inst == "i1" {
				seqs[i] = r.Event.Seq
			}
		}()
	}
	wg.Wait()
	var got []int64
	for _, s := range seqs {
		if s != 0 {
			got = append(got, s)
		}
	}
	sort.Slice(got, func(a, b int) bool { return got[a] < got[b] })
	for i, s := range got {
		if s != int64(i+1) {
			t.Fatalf("cursors not gap-free: position %d has %d (all: %v)", i, s, got)
		}
	}
	stored, err := s.EventsAfter(ctx, "o1", "i1", 0, 1000)
	if err != nil || len(stored) != len(got) || len(got) != 150 {
		t.Fatalf("stored %d, acknowledged %d, want 150: %v", len(stored), len(got), err)
	}
}

// A repeated dedupe key stores one event, in one batch or across batches.
func TestIngestDedupe(t *testing.T) {
	s := storetest.New(t)
	in := newIngester(t, s, events.NewBroker(16))
	ctx := context.Background()
	rs, err := in.IngestAll(ctx, []events.Draft{draft("i1", "g1"), draft("i1", "g2"), draft("i1", "g1")})
	if err != nil {
		t.Fatal(err)
	}
	if rs[0].Duplicate || rs[1].Duplicate || !rs[2].Duplicate || rs[2].Event.ID != rs[0].Event.ID {
		t.Fatalf("in-batch: %+v", rs)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	fresh := 0
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, err := in.Ingest(ctx, draft("i1", "g3"))
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			if !r.Duplicate {
				fresh++
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	all, _ := s.EventsAfter(ctx, "o1", "i1", 0, 100)
	if fresh != 1 || len(all) != 3 || all[2].Seq != 3 {
		t.Fatalf("fresh=%d stored=%d", fresh, len(all))
	}
}

// A subscriber that stops reading is ended, never blocks the publisher, and
// learns the last cursor it was given.
func TestBrokerSlowSubscriber(t *testing.T) {
	b := events.NewBroker(4)
	slow := b.Subscribe(events.Filter{OrgID: "o1", InstanceID: "i1"})
	fast := b.Subscribe(events.Filter{OrgID: "o1"})
	done := make(chan struct{})
	var fastGot []int64
	go func() {
		defer close(done)
		for e := range fast.C {
			fastGot = append(fastGot, e.Seq)
		}
	}()
	for i := 1; i <= 10; i++ {
		b.Publish(&events.Event{InstanceID: "i1", OrgID: "o1", Seq: int64(i)})
		time.Sleep(time.Millisecond) // let the fast reader keep up
	}
	var got []int64
	for e := range slow.C {
		if e == nil {
			break
		}
		got = append(got, e.Seq)
	}
	var se *events.SlowError
	if !errors.As(slow.Err(), &se) || se.LastCursor != events.FormatCursor(4) || len(got) != 4 || !errors.Is(slow.Err(), events.ErrSlowSubscriber) {
		t.Fatalf("slow got %v, err %v", got, slow.Err())
	}
	fast.Close()
	<-done
	if len(fastGot) != 10 {
		t.Fatalf("fast subscriber got %v", fastGot)
	}
	if b.Count() != 0 {
		t.Fatalf("%d subscriptions left", b.Count())
	}
	// Other organizations' and instances' events never reach a subscription.
	other := b.Subscribe(events.Filter{OrgID: "o2"})
	b.Publish(&events.Event{InstanceID: "i1", OrgID: "o1", Seq: 11})
	if len(other.C) != 0 {
		t.Fatal("an event of another organization leaked")
	}
	other.Close()
}

// Replay after a cursor continues live with no gap and no duplicate while
// events keep arriving, and no goroutine outlives the stream.
func TestStreamReplayThenLive(t *testing.T) {
	s := storetest.New(t)
	b := events.NewBroker(1024)
	in := newIngester(t, s, b)
	ctx := context.Background()
	for i := range 60 { // several replay pages of 25
		if _, err := in.Ingest(ctx, draft("i1", fmt.Sprint("a", i))); err != nil {
			t.Fatal(err)
		}
	}
	sctx, cancel := context.WithCancel(ctx)
	st, err := events.Streamer{Broker: b, History: s, PageSize: 25}.Open(sctx, events.Filter{OrgID: "o1", InstanceID: "i1"}, "10")
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for i := range 40 {
			if _, err := in.Ingest(ctx, draft("i1", fmt.Sprint("b", i))); err != nil {
				t.Error(err)
			}
		}
	}()
	want := int64(11)
	for want <= 100 {
		select {
		case e := <-st.C:
			if e == nil || e.Seq != want {
				t.Fatalf("got %+v, want seq %d (err %v)", e, want, st.Err())
			}
			want++
		case <-time.After(10 * time.Second):
			t.Fatalf("stuck waiting for seq %d", want)
		}
	}
	cancel()
	for range st.C { // drains, then closes
	}
	waitNoStreamGoroutines(t)
	if b.Count() != 0 {
		t.Fatalf("%d broker subscriptions left", b.Count())
	}
}

// A live-only stream needs no goroutine of its own and is freed when its
// context ends.
func TestLiveStreamFreedOnCancel(t *testing.T) {
	b := events.NewBroker(8)
	before := runtime.NumGoroutine()
	var cancels []context.CancelFunc
	for range 100 {
		ctx, cancel := context.WithCancel(context.Background())
		cancels = append(cancels, cancel)
		if _, err := (events.Streamer{Broker: b}).Open(ctx, events.Filter{OrgID: "o1", InstanceID: "i1"}, ""); err != nil {
			t.Fatal(err)
		}
	}
	if n := runtime.NumGoroutine(); n > before+2 {
		t.Fatalf("100 idle streams started %d goroutines", n-before)
	}
	for _, c := range cancels {
		c()
	}
	deadline := time.Now().Add(2 * time.Second)
	for b.Count() != 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if b.Count() != 0 {
		t.Fatalf("%d subscriptions outlived their context", b.Count())
	}
}

// waitNoStreamGoroutines waits until no goroutine started by Streamer.Open is
// left (the store's own connection goroutines come and go on their own).
func waitNoStreamGoroutines(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for {
		buf := make([]byte, 1<<20)
		stacks := string(buf[:runtime.Stack(buf, true)])
		if !strings.Contains(stacks, "events.Streamer") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("a stream goroutine outlived its subscription:\n%s", stacks)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Without an instance, after applies to each instance of the organization:
// every one's stored events above it, then live ones, none twice.
func TestStreamOrgWideReplay(t *testing.T) {
	s := storetest.New(t)
	b := events.NewBroker(64)
	in := newIngester(t, s, b)
	ctx := context.Background()
	now := time.Now().UTC()
	for _, id := range []string{"i1", "i2"} {
		if err := s.InsertInstance(ctx, store.Instance{ID: id, OrgID: "o1", CreatedAt: now, UpdatedAt: now}); err != nil {
			t.Fatal(err)
		}
		for i := range 3 {
			if _, err := in.Ingest(ctx, draft(id, fmt.Sprint(id, i))); err != nil {
				t.Fatal(err)
			}
		}
	}
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st, err := (events.Streamer{Broker: b, History: s}).Open(sctx, events.Filter{OrgID: "o1"}, events.FormatCursor(1))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := in.Ingest(ctx, draft("i2", "live")); err != nil {
		t.Fatal(err)
	}
	var got []string
	for len(got) < 5 {
		select {
		case e := <-st.C:
			got = append(got, fmt.Sprint(e.InstanceID, ":", e.Seq))
		case <-time.After(5 * time.Second):
			t.Fatalf("got only %v", got)
		}
	}
	want := []string{"i1:2", "i1:3", "i2:2", "i2:3", "i2:4"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
}

// A repeat inside a batch of new events is answered with the stored event,
// and the new events around it still get gap-free cursors; a repeat of an
// event whose callback was delivered does not queue it again.
func TestIngestRepeatAmongNewEvents(t *testing.T) {
	s := storetest.New(t)
	in := newIngester(t, s, events.NewBroker(16))
	ctx := context.Background()
	notify := func(key string) events.Draft { d := draft("i1", key); d.Notify = true; return d }
	first, err := in.Ingest(ctx, notify("x"))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.SetDelivery(ctx, first.Event.ID, events.Delivery{State: events.DeliveryDelivered, Attempts: 1}); err != nil {
		t.Fatal(err)
	}
	rs, err := in.IngestAll(ctx, []events.Draft{notify("a"), notify("x"), notify("b"), notify("c")})
	if err != nil {
		t.Fatal(err)
	}
	if !rs[1].Duplicate || rs[1].Event.ID != first.Event.ID || rs[1].Event.Seq != 1 {
		t.Fatalf("repeat answered %+v", rs[1])
	}
	for i, want := range map[int]int64{0: 2, 2: 3, 3: 4} {
		if rs[i].Err != nil || rs[i].Duplicate || rs[i].Event.Seq != want {
			t.Fatalf("draft %d: %+v, want seq %d", i, rs[i], want)
		}
	}
	stored, _ := s.EventsAfter(ctx, "o1", "i1", 0, 10)
	if len(stored) != 4 {
		t.Fatalf("%d events stored, want 4", len(stored))
	}
	due, err := s.DueDeliveries(ctx, time.Now().Add(time.Minute), 100)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range due {
		if e.ID == first.Event.ID {
			t.Fatal("the delivered event was queued again by its repeat")
		}
	}
	if len(due) != 3 {
		t.Fatalf("%d deliveries due, want the 3 new events", len(due))
	}
}
