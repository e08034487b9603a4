package poller_test

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/leadstream/leadstream/internal/eventlog"
	"github.com/leadstream/leadstream/internal/eventlog/eventlogtest"
	"github.com/leadstream/leadstream/internal/events"
	"github.com/leadstream/leadstream/internal/instance"
	"github.com/leadstream/leadstream/internal/marketo"
	"github.com/leadstream/leadstream/internal/marketo/marketotest"
	"github.com/leadstream/leadstream/internal/poller"
	"github.com/leadstream/leadstream/internal/secrets"
	"github.com/leadstream/leadstream/internal/store"
	"github.com/leadstream/leadstream/internal/store/storetest"
)

const (
	// patience bounds waits for what must happen; a passing run needs a
	// fraction of it, but the embedded store under -race on a busy machine
	// can be slow.
	patience = 60 * time.Second

	orgID        = "org-1"
	testInterval = 50 * time.Millisecond
	activities   = "/rest/v1/activities.json"
	typesPath    = "/rest/v1/activities/types.json"
)

// env is one test's world: a fake Marketo, an embedded store, an embedded
// event log and the real ingest path. The log's de-duplication window is
// one second: exactly-once must not rest on it.
type env struct {
	t      *testing.T
	fake   *marketotest.Server
	st     *store.Store
	log    *eventlog.Log
	box    *secrets.Box
	ing    *events.Ingester
	broker *events.Broker // fed by the log's tail
	// pos is where pollers read their last positions: the log unless a
	// test sets another.
	pos poller.Positions

	mu     sync.Mutex
	counts map[string]int // events logged per instance, from the log's tail
}

func newEnv(t *testing.T) *env {
	t.Helper()
	fake := marketotest.New()
	t.Cleanup(fake.Close)
	st := storetest.New(t)
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	box, err := secrets.NewBox(key)
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, fake: fake, st: st, box: box, broker: events.NewBroker(100_000), counts: map[string]int{}}
	e.log = eventlogtest.Open(t, eventlog.Options{DataDir: t.TempDir(), DuplicateWindow: time.Second})
	tail, err := e.log.StartTail(context.Background(), nil, func(ev *events.Event, _ uint64) {
		e.mu.Lock()
		e.counts[ev.InstanceID]++
		e.mu.Unlock()
		e.broker.Publish(ev)
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(tail.Stop)
	e.ing = events.NewIngester(e.log, events.IngesterOptions{})
	t.Cleanup(e.ing.Close)
	return e
}

func (e *env) count(instanceID string) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.counts[instanceID]
}

func secretOf(id string) string { return "s3cret-of-" + id }

// addInstance stores a valid instance with events enabled, polled every
// testInterval, whose credentials the fake accepts. mods adjust it.
func (e *env) addInstance(id string, mods ...func(*store.Instance)) store.Instance {
	e.t.Helper()
	clientID := "client-" + id
	e.fake.AddClient(clientID, secretOf(id))
	now := time.Now().UTC().Truncate(time.Millisecond)
	in := store.Instance{
		ID: id, OrgID: orgID, Name: id, ConnectorKey: "marketo", Tags: []string{},
		Valid:     true,
		CreatedAt: now.Add(-time.Hour), // before every activity of the test
		UpdatedAt: now,
		Config: []store.ConfigEntry{
			{Key: instance.KeyAPIKey, Value: clientID},
			{Key: instance.KeyAPISecret, Value: e.box.Seal(secretOf(id)), Sealed: true},
			{Key: instance.KeyIdentityURL, Value: e.fake.IdentityURL()},
			{Key: instance.KeyRESTURL, Value: e.fake.RESTURL()},
			{Key: instance.KeyEventsEnabled, Value: "true"},
			{Key: instance.KeyRefreshInterval, Value: testInterval.String()},
		},
	}
	for _, m := range mods {
		m(&in)
	}
	if err := e.st.InsertInstance(context.Background(), in); err != nil {
		e.t.Fatal(err)
	}
	return in
}

// withConfig sets (or adds) a configuration key.
func withConfig(key, value string) func(*store.Instance) {
	return func(in *store.Instance) {
		for i := range in.Config {
			if in.Config[i].Key == key {
				in.Config[i].Value = value
				return
			}
		}
		in.Config = append(in.Config, store.ConfigEntry{Key: key, Value: value})
	}
}

// startPoller runs a poller with test speeds (50 ms floor, millisecond
// backoff, no rate limits unless o says otherwise) until the returned stop
// is called or the test ends.
func (e *env) startPoller(o poller.Options) (*poller.Poller, func()) {
	e.t.Helper()
	if o.MinInterval == 0 {
		o.MinInterval = testInterval
	}
	if o.Limits == nil {
		o.Limits = marketo.NewLimits(0, 0, 0)
	}
	if o.ClientOptions.BackoffBase == 0 {
		o.ClientOptions.BackoffBase = time.Millisecond
	}
	if o.ClientOptions.CallTimeout == 0 {
		o.ClientOptions.CallTimeout = 5 * time.Second
	}
	var pos poller.Positions = e.log
	if e.pos != nil {
		pos = e.pos
	}
	p := poller.New(e.st, e.ing, pos, e.box, marketotest.HTTPClient(), o)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					e.t.Errorf("Run: %v", err)
				}
			case <-time.After(30 * time.Second):
				e.t.Errorf("Run did not return 30 s after its context ended")
			}
		})
	}
	e.t.Cleanup(stop)
	return p, stop
}

// stored returns every logged event of an instance, oldest first.
func (e *env) stored(instanceID string) []*events.Event {
	e.t.Helper()
	evs, err := e.log.Read(context.Background(), events.Filter{OrgID: orgID, InstanceID: instanceID}, 0, 1_000_000)
	if err != nil {
		e.t.Fatal(err)
	}
	return evs
}

func (e *env) pollState(instanceID string) store.PollState {
	e.t.Helper()
	ps, err := e.st.PollState(context.Background(), instanceID)
	if errors.Is(err, store.ErrNotFound) {
		return store.PollState{InstanceID: instanceID} // not saved yet: the log's tail may be ahead of it
	}
	if err != nil {
		e.t.Fatalf("poll state of %s: %v", instanceID, err)
	}
	return ps
}

// waitStored waits until n events of an instance were stored, then checks
// the store holds exactly n.
func (e *env) waitStored(instanceID string, n int, timeout time.Duration) {
	e.t.Helper()
	eventually(e.t, timeout, func() (bool, string) {
		got := e.count(instanceID)
		if got > n {
			e.t.Fatalf("%d events of %s stored, want %d", got, instanceID, n)
		}
		return got == n, fmt.Sprintf("%d events of %s stored, want %d", got, instanceID, n)
	})
	if got := len(e.stored(instanceID)); got != n {
		e.t.Fatalf("the store holds %d events of %s, want %d", got, instanceID, n)
	}
}

// eventually retries cond every 10 ms until it holds or timeout passes.
func eventually(t *testing.T, timeout time.Duration, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, msg := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %s", timeout, msg)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// checkGapFree checks that evs are n events in increasing cursor order
// with distinct dedupe keys: nothing lost, nothing logged twice.
func checkGapFree(t *testing.T, evs []*events.Event, n int) {
	t.Helper()
	if len(evs) != n {
		t.Fatalf("%d logged events, want %d", len(evs), n)
	}
	keys := map[string]bool{}
	for i, ev := range evs {
		if i > 0 && ev.Seq <= evs[i-1].Seq {
			t.Fatalf("event %d has cursor %d after %d", i, ev.Seq, evs[i-1].Seq)
		}
		if keys[ev.DedupeKey] {
			t.Fatalf("dedupe key %s stored twice", ev.DedupeKey)
		}
		keys[ev.DedupeKey] = true
	}
}

// addLeadActivities appends n lead activities (New Lead, Change Data
// Value, Delete Lead in turn).
func addLeadActivities(fake *marketotest.Server, n int) []marketotest.Activity {
	types := []int{marketotest.TypeNewLead, marketotest.TypeChangeDataValue, marketotest.TypeDeleteLead}
	out := make([]marketotest.Activity, n)
	for i := range n {
		out[i] = fake.AddLeadActivity(types[i%len(types)], 1000+i)
	}
	return out
}

// pollLog records what ObservePoll reports, and the LastError stored by
// each failed poll.
type pollLog struct {
	st *store.Store

	mu         sync.Mutex
	errs       []error
	lastErrors []string
	polls      int
}

func (l *pollLog) observe(id string, _ time.Duration, err error) {
	var lastErr string
	if err != nil {
		ps, _ := l.st.PollState(context.Background(), id)
		lastErr = ps.LastError
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.polls++
	if err != nil {
		l.errs = append(l.errs, err)
		l.lastErrors = append(l.lastErrors, lastErr)
	}
}

func (l *pollLog) snapshot() (polls int, errs []error, lastErrors []string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.polls, append([]error(nil), l.errs...), append([]string(nil), l.lastErrors...)
}

func (l *pollLog) sawError(target error) bool {
	_, errs, _ := l.snapshot()
	for _, err := range errs {
		if errors.Is(err, target) {
			return true
		}
	}
	return false
}

// wantPayload is the activity as the fake puts it on the wire.
func wantPayload(t *testing.T, a marketotest.Activity) []byte {
	t.Helper()
	b, err := json.Marshal(a)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }
