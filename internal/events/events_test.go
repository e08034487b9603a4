package events_test

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/leadstream/leadstream/internal/eventlog"
	"github.com/leadstream/leadstream/internal/eventlog/eventlogtest"
	"github.com/leadstream/leadstream/internal/events"
)

// pipeline is an ingester on a real embedded log whose live tail feeds b,
// as in the gateway.
func pipeline(t testing.TB, b *events.Broker) (*events.Ingester, *eventlog.Log) {
	t.Helper()
	l := eventlogtest.New(t)
	tail, err := l.StartTail(context.Background(), nil, func(e *events.Event, _ uint64) { b.Publish(e) })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(tail.Stop)
	in := events.NewIngester(l, events.IngesterOptions{})
	t.Cleanup(in.Close)
	return in, l
}

func draft(inst, key string) events.Draft {
	return events.Draft{InstanceID: inst, OrgID: "o1", Source: events.SourceWebhook, DedupeKey: key,
		EventType: "WEBHOOK", ObjectType: "webhook", Payload: events.JSON(`{"k":"` + key + `"}`)}
}

// 200 concurrent events get 200 distinct cursors, increasing in the order
// the log stored them, and each is in the log once.
func TestIngestConcurrent(t *testing.T) {
	in, l := pipeline(t, events.NewBroker(16))
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
			seqs[i] = r.Event.Seq
		}()
	}
	wg.Wait()
	got := append([]int64(nil), seqs...)
	sort.Slice(got, func(a, b int) bool { return got[a] < got[b] })
	for i, s := range got {
		if s != int64(i+1) {
			t.Fatalf("cursors: position %d has %d (all: %v)", i, s, got)
		}
	}
	logged, err := l.Read(ctx, events.Filter{OrgID: "o1", InstanceID: "i1"}, 0, 1000)
	if err != nil || len(logged) != 150 {
		t.Fatalf("logged %d of i1, want 150: %v", len(logged), err)
	}
}

// A page is appended in order, all or none, with contiguous cursors.
func TestIngestPage(t *testing.T) {
	in, l := pipeline(t, events.NewBroker(16))
	ctx := context.Background()
	if _, err := in.Ingest(ctx, draft("i1", "")); err != nil {
		t.Fatal(err)
	}
	page := make([]events.Draft, 300)
	for i := range page {
		page[i] = draft("i1", fmt.Sprint("g", i))
	}
	rs, err := in.IngestPage(ctx, page, events.Position{From: "a", Next: "b"})
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range rs {
		if r.Event.Seq != int64(i+2) || r.Event.DedupeKey != fmt.Sprint("g", i) {
			t.Fatalf("result %d: %+v", i, r.Event)
		}
	}
	logged, err := l.Read(ctx, events.Filter{OrgID: "o1"}, 1, 500)
	if err != nil || len(logged) != 300 || logged[299].ID != rs[299].Event.ID {
		t.Fatalf("logged %d: %v", len(logged), err)
	}
	if _, err := in.IngestPage(ctx, make([]events.Draft, events.MaxPage+1), events.Position{}); err == nil {
		t.Fatal("a page over MaxPage was taken")
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
	b := events.NewBroker(1024)
	in, l := pipeline(t, b)
	ctx := context.Background()
	for i := range 60 { // several replay pages of 25
		if _, err := in.Ingest(ctx, draft("i1", fmt.Sprint("a", i))); err != nil {
			t.Fatal(err)
		}
	}
	sctx, cancel := context.WithCancel(ctx)
	st, err := events.Streamer{Broker: b, History: l, PageSize: 25}.Open(sctx, events.Filter{OrgID: "o1", InstanceID: "i1"}, "10")
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
	for want := int64(11); want <= 100; want++ {
		if e := next(t, st); e.Seq != want {
			t.Fatalf("got seq %d, want %d", e.Seq, want)
		}
	}
	cancel()
	if e, err := st.Next(sctx); e != nil || err != nil {
		t.Fatalf("after cancel: %v, %v", e, err)
	}
	waitCount(t, b, 0)
}

// next waits for st's next event.
func next(t *testing.T, st *events.Stream) *events.Event {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	e, err := st.Next(ctx)
	if e == nil {
		t.Fatalf("no event: %v", err)
	}
	return e
}

// waitCount waits until b has n subscriptions.
func waitCount(t *testing.T, b *events.Broker, n int) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); b.Count() != n; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d subscriptions, want %d", b.Count(), n)
		}
	}
}

// sink records what the broker offers.
type sink struct {
	mu    sync.Mutex
	got   []int64
	ended []error
	room  int // events it takes (0: any)
}

func (s *sink) Offer(e *events.Event) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.room > 0 && len(s.got) >= s.room {
		return false
	}
	s.got = append(s.got, e.Seq)
	return true
}

func (s *sink) End(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ended = append(s.ended, err)
}

func (s *sink) seen() ([]int64, []error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.got), slices.Clone(s.ended)
}

// ingestSeen ingests n events, each once a plain live subscription
// (witness) got the one before: the broker offered them to every
// subscription when it returns (the witness may get an event while the
// broker still offers it to the others under its lock: Count waits for that).
func ingestSeen(t *testing.T, in *events.Ingester, b *events.Broker, witness *events.Subscription, n int) {
	defer b.Count()
	t.Helper()
	for range n {
		r, err := in.Ingest(context.Background(), draft("i1", ""))
		if err != nil {
			t.Fatal(err)
		}
		select {
		case e := <-witness.C:
			if e == nil || e.Seq != r.Event.Seq {
				t.Fatalf("witness got %v, want %d", e, r.Event.Seq)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("event %d never published", r.Event.Seq)
		}
	}
}

// A replaying subscription holds the live events published while it reads
// the log: the ones the log had too are dropped, the others delivered in
// order after the log's, then it is a plain sink the broker offers to.
func TestReplayHeldEvents(t *testing.T) {
	b := events.NewBroker(64)
	in, l := pipeline(t, b)
	f := events.Filter{OrgID: "o1", InstanceID: "i1"}
	witness := b.Subscribe(f)
	ingestSeen(t, in, b, witness, 60)
	ctx := context.Background()
	sk := &sink{}
	sub, rp, err := events.Streamer{Broker: b, History: l, PageSize: 25}.Attach(ctx, f, events.FormatCursor(10), sk)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	var replayed []int64
	for {
		e := rp.Next(ctx)
		if e == nil {
			if !rp.Live() {
				continue
			}
			break
		}
		replayed = append(replayed, e.Seq)
		switch e.Seq {
		case 11: // the log is read up to 35: 61-65 will be both read and held
			ingestSeen(t, in, b, witness, 5)
		case 65: // read last: 66-68 are only held
			ingestSeen(t, in, b, witness, 3)
		}
	}
	if got, ended := sk.seen(); len(got) != 0 || len(ended) != 0 {
		t.Fatalf("offered %v (ended %v) before it was live", got, ended)
	}
	ingestSeen(t, in, b, witness, 2)
	var want []int64
	for i := int64(11); i <= 68; i++ {
		want = append(want, i)
	}
	if !slices.Equal(replayed, want) {
		t.Fatalf("replayed %v, want 11-68 once each in order", replayed)
	}
	if got, ended := sk.seen(); !slices.Equal(got, []int64{69, 70}) || len(ended) != 0 {
		t.Fatalf("live %v (ended %v), want [69 70]", got, ended)
	}
}

// More live events than the broker's buffer while replaying end the
// subscription as slow, naming the last event the replay handed out.
func TestReplayOverflow(t *testing.T) {
	b := events.NewBroker(4)
	in, l := pipeline(t, b)
	f := events.Filter{OrgID: "o1", InstanceID: "i1"}
	witness := b.Subscribe(f)
	ingestSeen(t, in, b, witness, 3)
	ctx := context.Background()
	sk := &sink{}
	sub, rp, err := events.Streamer{Broker: b, History: l}.Attach(ctx, f, events.FormatCursor(1), sk)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	if e := rp.Next(ctx); e == nil || e.Seq != 2 {
		t.Fatalf("first replayed %v", e)
	}
	ingestSeen(t, in, b, witness, 5)
	if e := rp.Next(ctx); e != nil {
		t.Fatalf("replayed %d after the overflow", e.Seq)
	}
	if !rp.Live() {
		t.Fatal("an ended replay is not done")
	}
	_, ended := sk.seen()
	var se *events.SlowError
	if len(ended) != 1 || !errors.As(ended[0], &se) || se.LastCursor != events.FormatCursor(2) || se.InstanceID != "i1" {
		t.Fatalf("ended with %v, want a slow error at cursor 2", ended)
	}
	waitCount(t, b, 1) // the witness
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

// Without an instance, after resumes the whole organization exactly:
// every instance's events above the cursor, then live ones, none twice.
func TestStreamOrgWideReplay(t *testing.T) {
	b := events.NewBroker(64)
	in, l := pipeline(t, b)
	ctx := context.Background()
	for i := range 3 {
		for _, id := range []string{"i1", "i2"} {
			if _, err := in.Ingest(ctx, draft(id, fmt.Sprint(id, i))); err != nil {
				t.Fatal(err)
			}
		}
	}
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st, err := (events.Streamer{Broker: b, History: l}).Open(sctx, events.Filter{OrgID: "o1"}, events.FormatCursor(3))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := in.Ingest(ctx, draft("i2", "live")); err != nil {
		t.Fatal(err)
	}
	var got []string
	for len(got) < 4 {
		e := next(t, st)
		got = append(got, fmt.Sprint(e.InstanceID, ":", e.Seq))
	}
	want := []string{"i2:4", "i1:5", "i2:6", "i2:7"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
}

// Filters apply to replay and live alike.
func TestStreamFilters(t *testing.T) {
	b := events.NewBroker(64)
	in, l := pipeline(t, b)
	ctx := context.Background()
	typed := func(typ string) events.Draft {
		d := draft("i1", "")
		d.EventType, d.Source, d.ObjectType = typ, events.SourcePoller, "activities"
		return d
	}
	for _, d := range []events.Draft{typed("Open Email"), typed("Click Link"), draft("i1", ""), typed("Open Email")} {
		if _, err := in.Ingest(ctx, d); err != nil {
			t.Fatal(err)
		}
	}
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	f := events.Filter{OrgID: "o1", EventTypes: []string{"Open Email"}, Sources: []events.Source{events.SourcePoller}}
	st, err := (events.Streamer{Broker: b, History: l}).Open(sctx, f, events.FormatCursor(0))
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range []events.Draft{draft("i1", ""), typed("Click Link"), typed("Open Email")} {
		if _, err := in.Ingest(ctx, d); err != nil {
			t.Fatal(err)
		}
	}
	var got []int64
	for len(got) < 3 {
		got = append(got, next(t, st).Seq)
	}
	if fmt.Sprint(got) != "[1 4 7]" {
		t.Fatalf("got %v, want [1 4 7]", got)
	}
}

// An after older than the log keeps ends the subscription before it starts.
func TestStreamCursorExpired(t *testing.T) {
	b := events.NewBroker(64)
	l := eventlogtest.Open(t, eventlog.Options{DataDir: t.TempDir(), MaxAge: time.Second})
	in := events.NewIngester(l, events.IngesterOptions{})
	defer in.Close()
	ctx := context.Background()
	for range 2 {
		if _, err := in.Ingest(ctx, draft("i1", "")); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		evs, err := l.Read(ctx, events.Filter{OrgID: "o1"}, 0, 10)
		if err != nil {
			t.Fatal(err)
		}
		if len(evs) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("events did not expire")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, err := in.Ingest(ctx, draft("i1", "")); err != nil {
		t.Fatal(err)
	}
	_, err := (events.Streamer{Broker: b, History: l}).Open(ctx, events.Filter{OrgID: "o1"}, events.FormatCursor(1))
	var ce *events.CursorExpiredError
	if !errors.As(err, &ce) || ce.Oldest != events.FormatCursor(2) {
		t.Fatalf("Open after an expired cursor: %v", err)
	}
	if b.Count() != 0 {
		t.Fatal("the refused stream left a subscription")
	}
}

func TestFormatCursor(t *testing.T) {
	for _, c := range []struct {
		seq  int64
		want string
	}{
		{0, "000000000000"}, {7, "000000000007"}, {123456789012, "123456789012"},
		{1234567890123, "1234567890123"}, {-5, "-00000000005"},
	} {
		if got := events.FormatCursor(c.seq); got != c.want {
			t.Errorf("FormatCursor(%d) = %q, want %q", c.seq, got, c.want)
		}
		if c.seq >= 0 {
			if back, err := events.ParseCursor(c.want); err != nil || back != c.seq {
				t.Errorf("ParseCursor(%q) = %d, %v", c.want, back, err)
			}
		}
	}
}

func TestBrokerWants(t *testing.T) {
	b := events.NewBroker(4)
	if b.Wants("o1", "i1") {
		t.Fatal("an empty broker wants events")
	}
	si := b.Subscribe(events.Filter{OrgID: "o1", InstanceID: "i1"})
	so := b.Subscribe(events.Filter{OrgID: "o2"})
	for _, c := range []struct {
		org, inst string
		want      bool
	}{{"o1", "i1", true}, {"o1", "i2", false}, {"o2", "i9", true}, {"o3", "i1", true}, {"o3", "i3", false}} {
		if got := b.Wants(c.org, c.inst); got != c.want {
			t.Errorf("Wants(%s, %s) = %v, want %v", c.org, c.inst, got, c.want)
		}
	}
	si.Close()
	so.Close()
	if b.Wants("o1", "i1") || b.Wants("o2", "i9") {
		t.Error("closed subscriptions still want events")
	}
}

// The live tail may publish an event after a replay read it from the log:
// once live, the subscription drops what the replay sent.
func TestReplayThenLateTail(t *testing.T) {
	b := events.NewBroker(64)
	l := eventlogtest.New(t)
	in := events.NewIngester(l, events.IngesterOptions{}) // no tail: published by hand, late
	t.Cleanup(in.Close)
	ctx := context.Background()
	var evs []*events.Event
	ingest := func() {
		r, err := in.Ingest(ctx, draft("i1", ""))
		if err != nil {
			t.Fatal(err)
		}
		evs = append(evs, r.Event)
	}
	for range 3 {
		ingest()
	}
	sk := &sink{}
	sub, rp, err := events.Streamer{Broker: b, History: l}.Attach(ctx, events.Filter{OrgID: "o1"}, events.FormatCursor(0), sk)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	var replayed []int64
	for e := rp.Next(ctx); e != nil; e = rp.Next(ctx) {
		replayed = append(replayed, e.Seq)
	}
	if !rp.Live() || !slices.Equal(replayed, []int64{1, 2, 3}) {
		t.Fatalf("replayed %v", replayed)
	}
	ingest()
	b.PublishAll(evs)
	if got, _ := sk.seen(); !slices.Equal(got, []int64{4}) {
		t.Fatalf("live got %v, want [4]", got)
	}
}
