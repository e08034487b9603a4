package notify_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"maps"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/leadstream/leadstream/internal/eventlog"
	"github.com/leadstream/leadstream/internal/eventlog/eventlogtest"
	"github.com/leadstream/leadstream/internal/events"
	"github.com/leadstream/leadstream/internal/notify"
)

func TestSign(t *testing.T) {
	t.Parallel()
	ts := time.Unix(1614265330, 0)
	body := []byte(`{"id":"evt-1"}`)
	tests := []struct {
		name, key, id string
		body          []byte
		want          string
	}{
		{
			name: "Standard Webhooks published test vector",
			key:  "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", id: "msg_p5jXN8AQM9LWM0D4loKWxJek",
			body: []byte(`{"test": 2432232314}`), want: "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
		},
		{
			name: "whsec_ key signs with the decoded bytes",
			key:  "whsec_" + base64.StdEncoding.EncodeToString([]byte("raw secret bytes")), id: "evt-1", body: body,
			want: specSignature([]byte("raw secret bytes"), "evt-1", "1614265330", body),
		},
		{
			name: "plain key signs with its own bytes",
			key:  "my plain key", id: "evt-1", body: body,
			want: specSignature([]byte("my plain key"), "evt-1", "1614265330", body),
		},
		{
			name: "whsec_ key that is not base64 signs with its own bytes",
			key:  "whsec_not*base64!", id: "evt-1", body: body,
			want: specSignature([]byte("whsec_not*base64!"), "evt-1", "1614265330", body),
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := notify.Sign(tc.key, tc.id, ts, tc.body); got != tc.want {
				t.Errorf("Sign = %s, want %s", got, tc.want)
			}
		})
	}
}

// TestCallbackRequest checks what a receiver gets, on the first attempt and
// on a retry: body, content type, webhook-id, webhook-timestamp, signature.
func TestCallbackRequest(t *testing.T) {
	t.Parallel()
	s := eventlogtest.New(t)
	tests := []struct{ name, key string }{
		{"whsec_ key", "whsec_" + base64.StdEncoding.EncodeToString([]byte("0123456789abcdef0123456789abcdef"))},
		{"plain key", "plain-signing-key"},
		{"no key", ""},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			instanceID := "inst-req-" + strconv.Itoa(i)
			type request struct {
				method string
				header http.Header
				body   []byte
			}
			var mu sync.Mutex
			var reqs []request
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				body, _ := io.ReadAll(r.Body)
				mu.Lock()
				reqs = append(reqs, request{r.Method, r.Header.Clone(), body})
				n := len(reqs)
				mu.Unlock()
				if n == 1 {
					w.WriteHeader(http.StatusInternalServerError)
					return
				}
				w.WriteHeader(http.StatusNoContent)
			}))
			t.Cleanup(srv.Close)
			tg := newTargets()
			tg.set(instanceID, srv.URL+"/hooks/marketo?tenant=a", tc.key)
			ev := addEvents(t, s, instanceID, 1)[0]
			logged, err := s.Read(context.Background(), events.Filter{OrgID: orgID, InstanceID: instanceID}, 0, 1)
			if err != nil || len(logged) != 1 {
				t.Fatalf("reading the event back: %v", err)
			}
			want, err := json.Marshal(logged[0])
			if err != nil {
				t.Fatal(err)
			}

			n := newNotifier(t, s, tg, notify.Options{RetryBase: 10 * time.Millisecond})
			stop := start(t, n)
			waitState(t, s, ev, events.DeliveryDelivered)
			stop()

			as := attempts(t, s, instanceID)
			mu.Lock()
			defer mu.Unlock()
			if len(reqs) != 2 || len(as) != 2 {
				t.Fatalf("got %d requests and %d recorded attempts, want 2 and 2", len(reqs), len(as))
			}
			for i, r := range reqs {
				if r.method != http.MethodPost {
					t.Errorf("request %d: method %s", i, r.method)
				}
				if ct := r.header.Get("Content-Type"); ct != "application/json" {
					t.Errorf("request %d: content-type %q", i, ct)
				}
				if string(r.body) != string(want) {
					t.Errorf("request %d: body\n%s\nwant json.Marshal(event)\n%s", i, r.body, want)
				}
				id := r.header.Get("webhook-id")
				if id != ev.ID {
					t.Errorf("request %d: webhook-id %q, want the event id %q", i, id, ev.ID)
				}
				ts := r.header.Get("webhook-timestamp")
				if sec, err := strconv.ParseInt(ts, 10, 64); err != nil || sec != as[i].At.Unix() {
					t.Errorf("request %d: webhook-timestamp %q, want %d (the attempt's time)", i, ts, as[i].At.Unix())
				}
				sigs, signed := r.header["Webhook-Signature"]
				switch {
				case tc.key == "" && signed:
					t.Errorf("request %d: webhook-signature %q sent without a key", i, sigs)
				case tc.key != "":
					if got, want := r.header.Get("webhook-signature"), specSignature(specKey(t, tc.key), id, ts, r.body); got != want {
						t.Errorf("request %d: webhook-signature %q, spec computes %q", i, got, want)
					}
				}
			}
		})
	}
}

// TestOutcomes drives one event through receivers that answer in different
// ways and checks the recorded attempts and the final delivery state.
func TestOutcomes(t *testing.T) {
	t.Parallel()
	s := eventlogtest.New(t)
	var elsewhereHits atomic.Int64
	elsewhere := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		elsewhereHits.Add(1)
	}))
	t.Cleanup(elsewhere.Close)

	// Each case's attempt timeout: long, so that a loaded machine never
	// turns a quick answer into a timed-out attempt, except where the case
	// is about the timeout.
	const longTimeout, shortTimeout = 10 * time.Second, 300 * time.Millisecond
	tests := []struct {
		name         string
		timeout      time.Duration // 0: longTimeout
		noTarget     bool
		respond      func(n int, w http.ResponseWriter, r *http.Request) // n: 1-based request count
		wantState    events.DeliveryState
		wantStatuses []int // one per attempt; 0: no HTTP answer
		wantErr      []string
		wantObserved map[string]int
		check        func(t *testing.T, as []events.Attempt)
	}{
		{
			name: "500, 500, 200",
			respond: func(n int, w http.ResponseWriter, r *http.Request) {
				if n <= 2 {
					w.WriteHeader(http.StatusInternalServerError)
				}
			},
			wantState: events.DeliveryDelivered, wantStatuses: []int{500, 500, 200},
			wantErr:      []string{"HTTP 500", "HTTP 500", ""},
			wantObserved: map[string]int{notify.OutcomeFailedAttempt: 2, notify.OutcomeDelivered: 1},
		},
		{
			name:    "hanging past the attempt timeout is a failed attempt",
			timeout: shortTimeout,
			respond: func(n int, w http.ResponseWriter, r *http.Request) {
				if n == 1 {
					select {
					case <-r.Context().Done():
					case <-time.After(5 * time.Second):
					}
				}
			},
			wantState: events.DeliveryDelivered, wantStatuses: []int{0, 200},
			wantErr:      []string{"no answer within 300ms", ""},
			wantObserved: map[string]int{notify.OutcomeFailedAttempt: 1, notify.OutcomeDelivered: 1},
			check: func(t *testing.T, as []events.Attempt) {
				if as[0].DurationMs < int(shortTimeout/time.Millisecond) {
					t.Errorf("timed-out attempt took %dms, less than the timeout", as[0].DurationMs)
				}
			},
		},
		{
			name: "a redirect is not followed and is a failed attempt",
			respond: func(n int, w http.ResponseWriter, r *http.Request) {
				if n == 1 {
					http.Redirect(w, r, elsewhere.URL+"/steal", http.StatusTemporaryRedirect)
				}
			},
			wantState: events.DeliveryDelivered, wantStatuses: []int{307, 200},
			wantErr:      []string{"redirect not followed (HTTP 307)", ""},
			wantObserved: map[string]int{notify.OutcomeFailedAttempt: 1, notify.OutcomeDelivered: 1},
			check: func(t *testing.T, as []events.Attempt) {
				if h := elsewhereHits.Load(); h != 0 {
					t.Errorf("the redirect target got %d requests", h)
				}
			},
		},
		{
			name: "an endless answer body is not read to its end",
			respond: func(n int, w http.ResponseWriter, r *http.Request) {
				chunk := []byte(strings.Repeat("x", 32<<10))
				for r.Context().Err() == nil {
					if _, err := w.Write(chunk); err != nil {
						return
					}
				}
			},
			wantState: events.DeliveryDelivered, wantStatuses: []int{200}, wantErr: []string{""},
			wantObserved: map[string]int{notify.OutcomeDelivered: 1},
			check: func(t *testing.T, as []events.Attempt) {
				// Read to its end, the body would hold the attempt until the
				// timeout; the attempt stops after a few KiB instead.
				if as[0].DurationMs >= int(longTimeout/time.Millisecond) {
					t.Errorf("attempt took %dms: the body was read until the timeout", as[0].DurationMs)
				}
			},
		},
		{
			name:     "instance gone or callback removed: FAILED without a POST",
			noTarget: true, wantState: events.DeliveryFailed,
			wantObserved: map[string]int{notify.OutcomeGaveUp: 1},
		},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			instanceID := "inst-outcome-" + strconv.Itoa(i)
			var posts atomic.Int64
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				n := int(posts.Add(1))
				// Reading the body lets the server notice the client hanging up.
				_, _ = io.Copy(io.Discard, r.Body)
				if tc.respond != nil {
					tc.respond(n, w, r)
				}
			}))
			t.Cleanup(srv.Close)
			tg := newTargets()
			if !tc.noTarget {
				tg.set(instanceID, srv.URL+"/hook?token=s3cret", "whsec_c2VjcmV0")
			}
			ev := addEvents(t, s, instanceID, 1)[0]
			var obs observed
			timeout := tc.timeout
			if timeout == 0 {
				timeout = longTimeout
			}
			n := newNotifier(t, s, tg, notify.Options{
				RetryBase: 10 * time.Millisecond, AttemptTimeout: timeout,
				Observe: obs.observe,
			})
			stop := start(t, n)
			d := waitState(t, s, ev, tc.wantState)
			stop()

			if d.Attempts != len(tc.wantStatuses) {
				t.Errorf("delivery.attempts = %d, want %d", d.Attempts, len(tc.wantStatuses))
			}
			if d.NextAttemptAt != nil {
				t.Errorf("final delivery still has nextAttemptAt %v", d.NextAttemptAt)
			}
			switch tc.wantState {
			case events.DeliveryDelivered:
				if d.DeliveredAt == nil || d.LastError != nil {
					t.Errorf("delivered: deliveredAt %v, lastError %v", d.DeliveredAt, d.LastError)
				}
			case events.DeliveryFailed:
				if d.LastError == nil || !strings.Contains(*d.LastError, "no longer exists or has no callback URL") {
					t.Errorf("lastError = %v, want it to say the target is gone", d.LastError)
				}
			}
			if got := int(posts.Load()); got != len(tc.wantStatuses) {
				t.Errorf("receiver got %d POSTs, want %d", got, len(tc.wantStatuses))
			}
			as := attempts(t, s, instanceID)
			if len(as) != len(tc.wantStatuses) {
				t.Fatalf("%d attempts recorded, want %d: %+v", len(as), len(tc.wantStatuses), as)
			}
			for k, a := range as {
				status := 0
				if a.StatusCode != nil {
					status = *a.StatusCode
				}
				errText := ""
				if a.Error != nil {
					errText = *a.Error
				}
				if a.EventID != ev.ID || a.InstanceID != instanceID || a.Attempt != k+1 || a.At.IsZero() || a.DurationMs < 0 {
					t.Errorf("attempt %d: %+v", k+1, a)
				}
				if status != tc.wantStatuses[k] {
					t.Errorf("attempt %d: status %d, want %d", k+1, status, tc.wantStatuses[k])
				}
				if (tc.wantErr[k] == "") != (errText == "") || !strings.Contains(errText, tc.wantErr[k]) {
					t.Errorf("attempt %d: error %q, want %q", k+1, errText, tc.wantErr[k])
				}
				if strings.Contains(errText, "s3cret") {
					t.Errorf("attempt %d: error %q leaks the callback URL's secret", k+1, errText)
				}
			}
			if tc.check != nil {
				tc.check(t, as)
			}
			if got := obs.counts(); !maps.Equal(got, tc.wantObserved) {
				t.Errorf("observed %v, want %v", got, tc.wantObserved)
			}
		})
	}
}

// TestNoHTTPClient: there is no default client to fall back on.
func TestNoHTTPClient(t *testing.T) {
	t.Parallel()
	if _, err := notify.New(eventlogtest.New(t), newTargets(), nil, notify.Options{}); !errors.Is(err, notify.ErrNoHTTPClient) {
		t.Fatalf("New without a client: %v, want ErrNoHTTPClient", err)
	}
}

func TestBackoff(t *testing.T) {
	t.Parallel()
	tests := []struct {
		base    time.Duration
		attempt int
		want    time.Duration
	}{
		{4 * time.Second, 1, 4 * time.Second},
		{4 * time.Second, 2, 16 * time.Second},
		{4 * time.Second, 3, 64 * time.Second},
		{4 * time.Second, 9, 4 * time.Second * 65536}, // the 9th and last retry: about 72.8h
		{10 * time.Millisecond, 5, 2560 * time.Millisecond},
		{time.Duration(math.MaxInt64 / 2), 9, time.Duration(math.MaxInt64)}, // no overflow
	}
	for _, tc := range tests {
		if got := notify.BackoffAfter(tc.base, tc.attempt); got != tc.want {
			t.Errorf("backoff after attempt %d with base %s = %s, want %s", tc.attempt, tc.base, got, tc.want)
		}
	}
}

// recorder is the real log, remembering the delivery states and attempts
// written through it, with their exact times.
type recorder struct {
	*eventlog.Log
	mu         sync.Mutex
	deliveries []events.Delivery
	attempts   []events.Attempt
}

func (r *recorder) SetDeliveryState(ctx context.Context, ev *events.Event, d events.Delivery) error {
	r.mu.Lock()
	r.deliveries = append(r.deliveries, d)
	r.mu.Unlock()
	return r.Log.SetDeliveryState(ctx, ev, d)
}

func (r *recorder) RecordAttempt(ctx context.Context, a events.Attempt) error {
	r.mu.Lock()
	r.attempts = append(r.attempts, a)
	r.mu.Unlock()
	return r.Log.RecordAttempt(ctx, a)
}

// TestGivesUpAfterMaxAttempts: an always-failing receiver gets 10 attempts,
// each retry scheduled RetryBase*4^(k-1) after attempt k ended and not
// started before, then the delivery is FAILED. RetryBase is tiny because the
// 9th retry waits RetryBase*4^8.
func TestGivesUpAfterMaxAttempts(t *testing.T) {
	t.Parallel()
	s := eventlogtest.New(t)
	const base = 10 * time.Microsecond

	// A listener that hangs up on every connection: a transport error, no status.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var hangups atomic.Int64
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			hangups.Add(1)
			_ = c.Close()
		}
	}()
	t.Cleanup(func() { _ = ln.Close(); wg.Wait() })

	var serverErrors atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		serverErrors.Add(1)
		w.WriteHeader(http.StatusServiceUnavailable)
	}))
	t.Cleanup(srv.Close)

	tests := []struct {
		name       string
		url        string
		posts      *atomic.Int64
		wantStatus int
	}{
		{"HTTP 503 every time", srv.URL + "/hook?token=s3cret", &serverErrors, 503},
		{"connection closed every time", "http://" + ln.Addr().String() + "/hook?token=s3cret", &hangups, 0},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			instanceID := "inst-fail-" + strconv.Itoa(i)
			tg := newTargets()
			tg.set(instanceID, tc.url, "")
			ev := addEvents(t, s, instanceID, 1)[0]
			var obs observed
			rec := &recorder{Log: s}
			n := newNotifier(t, rec, tg, notify.Options{RetryBase: base, Observe: obs.observe})
			stop := start(t, n)
			d := waitState(t, s, ev, events.DeliveryFailed)
			stop()

			if d.Attempts != notify.MaxAttempts || d.NextAttemptAt != nil || d.LastError == nil ||
				!strings.Contains(*d.LastError, "gave up after 10 attempts") || strings.Contains(*d.LastError, "s3cret") {
				t.Errorf("delivery = %+v (lastError %v)", d, ptrString(d.LastError))
			}
			if got := tc.posts.Load(); got < notify.MaxAttempts {
				t.Errorf("receiver saw %d attempts, want %d", got, notify.MaxAttempts)
			}
			as := attempts(t, s, instanceID)
			if len(as) != notify.MaxAttempts {
				t.Fatalf("%d attempts recorded, want %d", len(as), notify.MaxAttempts)
			}
			for k, a := range as {
				status := 0
				if a.StatusCode != nil {
					status = *a.StatusCode
				}
				if a.Attempt != k+1 || status != tc.wantStatus || a.Error == nil || strings.Contains(*a.Error, "s3cret") {
					t.Errorf("attempt %d: number %d, status %d, error %v", k+1, a.Attempt, status, ptrString(a.Error))
				}
			}

			rec.mu.Lock()
			defer rec.mu.Unlock()
			if len(rec.deliveries) != notify.MaxAttempts || len(rec.attempts) != notify.MaxAttempts {
				t.Fatalf("%d delivery writes and %d attempt writes, want %d each", len(rec.deliveries), len(rec.attempts), notify.MaxAttempts)
			}
			var scheduled []time.Duration
			for k := 1; k < notify.MaxAttempts; k++ {
				a, w := rec.attempts[k-1], rec.deliveries[k-1]
				if w.State != events.DeliveryPending || w.Attempts != k || w.NextAttemptAt == nil {
					t.Fatalf("delivery write %d = %+v, want PENDING after %d attempts with a next attempt", k, w, k)
				}
				// Scheduled from the end of attempt k: its start, plus its
				// duration, plus the backoff (and a little for our own work).
				wait := w.NextAttemptAt.Sub(a.At)
				scheduled = append(scheduled, wait)
				lo := base << (2 * (k - 1))                                             // RetryBase * 4^(k-1), computed here, not by notify
				hi := lo + time.Duration(a.DurationMs+1)*time.Millisecond + time.Second // generous: a loaded CI machine
				if wait < lo || wait > hi {
					t.Errorf("after attempt %d the retry is due %s after its start, want within [%s, %s]", k, wait, lo, hi)
				}
				// The queue's timers are not exact to the millisecond.
				if next := rec.attempts[k].At; next.Before(w.NextAttemptAt.Add(-time.Millisecond)) {
					t.Errorf("attempt %d started at %s, before it was due at %s", k+1, next, *w.NextAttemptAt)
				}
			}
			if t.Failed() {
				t.Logf("retries scheduled after each attempt's start: %v", scheduled)
			}
			if want := map[string]int{notify.OutcomeFailedAttempt: 10, notify.OutcomeGaveUp: 1}; !maps.Equal(obs.counts(), want) {
				t.Errorf("observed %v, want %v", obs.counts(), want)
			}
		})
	}
	if got := serverErrors.Load(); got != notify.MaxAttempts {
		t.Errorf("the 503 receiver got %d POSTs, want exactly %d", got, notify.MaxAttempts)
	}
}

// TestResumesAfterRestart: the queue and the delivery state are in the log,
// so a new notifier picks up where a stopped one left off.
func TestResumesAfterRestart(t *testing.T) {
	t.Parallel()
	s := eventlogtest.New(t)
	var failing atomic.Bool
	failing.Store(true)
	var mu sync.Mutex
	ids := map[string]int{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		ids[r.Header.Get("webhook-id")]++
		mu.Unlock()
		if failing.Load() {
			w.WriteHeader(http.StatusBadGateway)
		}
	}))
	t.Cleanup(srv.Close)
	tg := newTargets()
	tg.set("inst-restart", srv.URL, "k")
	ev := addEvents(t, s, "inst-restart", 1)[0]
	opts := notify.Options{RetryBase: 10 * time.Millisecond}

	stop := start(t, newNotifier(t, s, tg, opts))
	waitFor(t, 10*time.Second, "two failed attempts", func() bool { return len(attempts(t, s, "inst-restart")) >= 2 })
	stop()
	before := delivery(t, s, ev)
	if before.State != events.DeliveryPending || before.NextAttemptAt == nil || before.Attempts < 2 {
		t.Fatalf("after the first run: %+v", before)
	}

	failing.Store(false)
	stop = start(t, newNotifier(t, s, tg, opts))
	d := waitState(t, s, ev, events.DeliveryDelivered)
	stop()

	if d.Attempts != before.Attempts+1 {
		t.Errorf("attempts = %d, want %d (the first run's plus one)", d.Attempts, before.Attempts+1)
	}
	as := attempts(t, s, "inst-restart")
	if len(as) != d.Attempts {
		t.Fatalf("%d attempts recorded, want %d", len(as), d.Attempts)
	}
	for k, a := range as {
		if a.Attempt != k+1 {
			t.Errorf("attempt numbers %d at position %d: numbering did not continue", a.Attempt, k)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(ids) != 1 || ids[ev.ID] != d.Attempts {
		t.Errorf("webhook-ids seen %v, want only %s, %d times", ids, ev.ID, d.Attempts)
	}
}

// TestConcurrentDeliveries: many events, several workers, and two notifiers
// sharing the queue (two replicas). Each event is never POSTed twice at the
// same time, gets exactly one 2xx, and is never POSTed after it.
func TestConcurrentDeliveries(t *testing.T) {
	t.Parallel()
	s := eventlogtest.New(t)
	const total, workers = concurrentEvents, 8

	type perID struct {
		inFlight, maxInFlight, posts, oks, postsAfterOK int
	}
	var mu sync.Mutex
	seen := map[string]*perID{}
	failFirst := map[string]bool{}
	var inFlight, maxInFlight int
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := r.Header.Get("webhook-id")
		mu.Lock()
		p := seen[id]
		if p == nil {
			p = &perID{}
			seen[id] = p
		}
		p.posts++
		if p.oks > 0 {
			p.postsAfterOK++
		}
		p.inFlight++
		p.maxInFlight = max(p.maxInFlight, p.inFlight)
		inFlight++
		maxInFlight = max(maxInFlight, inFlight)
		fail := failFirst[id] && p.posts == 1
		mu.Unlock()

		time.Sleep(2 * time.Millisecond) // keep attempts in flight while scans run

		mu.Lock()
		p.inFlight--
		inFlight--
		if !fail {
			p.oks++
		}
		mu.Unlock()
		if fail {
			w.WriteHeader(http.StatusInternalServerError)
		}
	}))
	t.Cleanup(srv.Close)

	evs := addEvents(t, s, "inst-many", total)
	mu.Lock()
	for i, ev := range evs {
		if i%3 == 0 {
			failFirst[ev.ID] = true
		}
	}
	mu.Unlock()
	tg := newTargets()
	tg.set("inst-many", srv.URL, "whsec_c2VjcmV0")
	var delivered atomic.Int64
	n := newNotifier(t, s, tg, notify.Options{
		RetryBase: 5 * time.Millisecond, AttemptTimeout: 2 * time.Second,
		Workers: workers,
		Observe: func(outcome string) {
			if outcome == notify.OutcomeDelivered {
				delivered.Add(1)
			}
		},
	})
	stop := start(t, n)
	stop2 := start(t, newNotifier(t, s, tg, notify.Options{
		RetryBase: 5 * time.Millisecond, AttemptTimeout: 2 * time.Second, Workers: workers,
		Observe: func(outcome string) {
			if outcome == notify.OutcomeDelivered {
				delivered.Add(1)
			}
		},
	}))

	waitFor(t, 60*time.Second, "every event delivered", func() bool { return delivered.Load() == total })
	stop()
	stop2()

	mu.Lock()
	defer mu.Unlock()
	if len(seen) != total {
		t.Errorf("receiver saw %d webhook-ids, want %d", len(seen), total)
	}
	if maxInFlight > 2*workers {
		t.Errorf("%d POSTs in flight at once, more than 2x%d workers", maxInFlight, workers)
	}
	wantAttempts := 0
	for _, ev := range evs {
		p := seen[ev.ID]
		want := 1
		if failFirst[ev.ID] {
			want = 2
		}
		wantAttempts += want
		switch {
		case p == nil:
			t.Errorf("event %s never POSTed", ev.ID)
		case p.maxInFlight > 1:
			t.Errorf("event %s POSTed %d times at once", ev.ID, p.maxInFlight)
		case p.oks != 1 || p.postsAfterOK != 0 || p.posts != want:
			t.Errorf("event %s: %d POSTs, %d 2xx, %d POSTs after its 2xx; want %d, 1, 0", ev.ID, p.posts, p.oks, p.postsAfterOK, want)
		}
		if d := delivery(t, s, ev); d.Attempts != want {
			t.Errorf("event %s: delivery.attempts = %d, want %d", ev.ID, d.Attempts, want)
		}
	}
	if got := len(attempts(t, s, "inst-many")); got != wantAttempts {
		t.Errorf("%d attempts recorded, want %d", got, wantAttempts)
	}
}

// TestRunDrains: cancelling Run while an attempt is in flight lets the
// attempt finish and be recorded before Run returns.
func TestRunDrains(t *testing.T) {
	t.Parallel()
	s := eventlogtest.New(t)
	arrived := make(chan struct{})
	proceed := make(chan struct{})
	var once sync.Once
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		once.Do(func() { close(arrived) })
		<-proceed
	}))
	t.Cleanup(srv.Close)
	tg := newTargets()
	tg.set("inst-drain", srv.URL, "")
	ev := addEvents(t, s, "inst-drain", 1)[0]
	n := newNotifier(t, s, tg, notify.Options{RetryBase: 10 * time.Millisecond, AttemptTimeout: 5 * time.Second})

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	select {
	case <-arrived:
	case <-time.After(10 * time.Second):
		close(proceed)
		t.Fatal("the event was never POSTed")
	}
	cancel()
	select {
	case err := <-done:
		close(proceed)
		t.Fatalf("Run returned (%v) while an attempt was in flight", err)
	case <-time.After(100 * time.Millisecond):
	}
	close(proceed)
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after the attempt finished")
	}
	// No waiting: the outcome must already be in the log.
	if d := delivery(t, s, ev); d.State != events.DeliveryDelivered || d.Attempts != 1 {
		t.Errorf("delivery after Run returned = %+v, want DELIVERED after 1 attempt", d)
	}
	if as := attempts(t, s, "inst-drain"); len(as) != 1 || as[0].StatusCode == nil || *as[0].StatusCode != 200 {
		t.Errorf("attempts after Run returned = %+v, want one with status 200", as)
	}
}

// TestRunOnceAtATime: of two concurrent Runs one is refused; once stopped,
// the notifier may run again.
func TestRunOnceAtATime(t *testing.T) {
	t.Parallel()
	n := newNotifier(t, eventlogtest.New(t), newTargets(), notify.Options{})
	ctx, cancel := context.WithCancel(context.Background())
	errs := make(chan error, 2)
	for range 2 {
		go func() { errs <- n.Run(ctx) }()
	}
	first := <-errs // the refused one returns at once
	if first == nil || !strings.HasPrefix(first.Error(), "notify: ") {
		t.Errorf("one of two Runs = %v, want a notify: error", first)
	}
	cancel()
	if err := <-errs; err != nil {
		t.Errorf("the running Run = %v", err)
	}
	ctx2, cancel2 := context.WithCancel(context.Background())
	cancel2()
	if err := n.Run(ctx2); err != nil && !errors.Is(err, context.Canceled) {
		t.Errorf("Run after a stop = %v", err)
	}
}

func ptrString(p *string) string {
	if p == nil {
		return "<nil>"
	}
	return *p
}

// TestRunLeavesNoGoroutines runs alone (not parallel), so any notifier or
// HTTP-client goroutine left after Run returns is this notifier's.
func TestRunLeavesNoGoroutines(t *testing.T) {
	s := eventlogtest.New(t)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	t.Cleanup(srv.Close)
	tg := newTargets()
	tg.set("inst-leak", srv.URL, "k")
	evs := addEvents(t, s, "inst-leak", 5)
	n := newNotifier(t, s, tg, notify.Options{Workers: 3})
	stop := start(t, n)
	for _, ev := range evs {
		waitState(t, s, ev, events.DeliveryDelivered)
	}
	stop()

	// Goroutines end asynchronously (a closed connection's loops): allow a moment.
	var leaked string
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		buf := make([]byte, 1<<20)
		buf = buf[:runtime.Stack(buf, true)]
		leaked = ""
		for _, g := range strings.Split(string(buf), "\n\n") {
			if strings.Contains(g, "internal/notify.(*Notifier)") || strings.Contains(g, "net/http.(*persistConn)") {
				leaked += g + "\n\n"
			}
		}
		if leaked == "" || time.Now().After(deadline) {
			break
		}
	}
	if leaked != "" {
		t.Errorf("left running after Run returned:\n%s", leaked)
	}
}
