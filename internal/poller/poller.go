// Package poller pulls each Marketo instance's activities from the
// Activities API on a schedule and ingests them as events. One scheduler
// goroutine owns the schedule; every poll runs in a goroutine it starts and
// waits for, so Run returns only when nothing of the poller is left running.
package poller

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"net/http"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/leadstream/leadstream/internal/events"
	"github.com/leadstream/leadstream/internal/instance"
	"github.com/leadstream/leadstream/internal/logsummary"
	"github.com/leadstream/leadstream/internal/marketo"
	"github.com/leadstream/leadstream/internal/secrets"
	"github.com/leadstream/leadstream/internal/store"
)

// Defaults for Options fields left zero.
const (
	DefaultMinInterval   = 30 * time.Second
	DefaultMaxConcurrent = 4
	DefaultRescanEvery   = 30 * time.Second
	// A poll that failed because the event log did not answer is retried
	// after DefaultLogRetryBase, doubling with each further such failure
	// up to DefaultLogRetryMax (or the instance's interval, if longer).
	DefaultLogRetryBase = time.Second
	DefaultLogRetryMax  = 5 * time.Minute
)

// maxPagesPerPoll bounds one poll so that an instance with a large backlog
// gives its slot back now and then; the next poll is scheduled at once.
const maxPagesPerPoll = 100

// pollNowTimeout bounds the store reads PollNow makes (it has no context).
const pollNowTimeout = 10 * time.Second

// ErrNotPollable is returned by PollNow for an instance the poller does not
// poll: unknown, disabled, not valid, events not enabled, or paused by the
// daily quota. The wrapping error says which.
var ErrNotPollable = errors.New("poller: instance cannot be polled")

// ErrElsewhere is returned by PollNow when another replica holds the lease
// of the instance's Marketo REST host: that replica polls it.
var ErrElsewhere = errors.New("poller: another replica polls this instance's Marketo")

// Leases says which Marketo REST hosts this replica polls, so that each
// host is polled by one replica at a time; *lease.Manager has it. Hosts
// are marketo.SubscriptionKey of the REST URL.
type Leases interface {
	// Want is told every host that has pollable instances.
	Want(hosts []string)
	// Held reports whether this replica polls host now.
	Held(host string) bool
}

// Requests keeps the polls asked of a replica that does not hold the
// instance's lease until a poll of it ran, so that a poll asked for while
// the lease moves is made by whoever holds it next; *control.Requests has
// it.
type Requests interface {
	Add(ctx context.Context, instanceID string) error
	Pending(ctx context.Context) ([]string, error)
	Done(ctx context.Context, instanceID string) error
}

// Clock is the time the schedule goes by; tests move a fake one by hand.
type Clock interface {
	Now() time.Time
	// NewTimer returns a channel that receives once d has passed on this
	// clock, and a function that stops the timer.
	NewTimer(d time.Duration) (<-chan time.Time, func() bool)
}

type realClock struct{}

func (realClock) Now() time.Time { return time.Now() }

func (realClock) NewTimer(d time.Duration) (<-chan time.Time, func() bool) {
	t := time.NewTimer(d)
	return t.C, t.Stop
}

// Store is what the poller needs from the database; *store.Store has it.
type Store interface {
	Instances(ctx context.Context, orgID string) ([]store.Instance, error)
	InstanceByID(ctx context.Context, id string) (store.Instance, error)
	UpdateInstance(ctx context.Context, orgID, id string, change func(*store.Instance) error) (store.Instance, error)
	PollState(ctx context.Context, instanceID string) (store.PollState, error)
	SavePollState(ctx context.Context, p store.PollState) error
}

// Ingester appends the events of one page; *events.Ingester has it.
type Ingester interface {
	IngestPage(ctx context.Context, drafts []events.Draft, pos events.Position) ([]events.Result, error)
}

// Positions tells where the log says an instance's poller stood: the
// position kept with its last appended page; *eventlog.Log has it.
type Positions interface {
	LastPosition(ctx context.Context, orgID, instanceID string) (events.Position, bool, error)
}

// Options tune a Poller; the zero value gives production behaviour.
type Options struct {
	// MinInterval is the floor of every instance's poll interval
	// (POLLER_MIN_INTERVAL, default 30 s).
	MinInterval time.Duration
	// MaxConcurrent is how many instances are polled at once (default 4).
	MaxConcurrent int
	// Limits is shared by every Marketo client of the poller, so that all
	// instances on one Marketo subscription share its call budget. nil
	// gives the production limits (50 calls / 20 s, 5 at once per host).
	Limits *marketo.Limits
	// ClientOptions tune the Marketo clients (timeouts, backoff, Observe
	// hook); their Limits field is replaced by Limits.
	ClientOptions marketo.Options
	// RescanEvery re-reads the instances even when nobody called Refresh,
	// so changes made by another replica are picked up (default 30 s).
	RescanEvery time.Duration
	// Leases, when set, limits polling to the hosts whose lease this
	// replica holds; tell the Poller (Refresh) when that set changes. nil
	// polls every instance (one replica).
	Leases Leases
	// Requests, with Leases, records a PollNow for an instance whose lease
	// another replica holds, and is read at every rescan: a lease taken
	// over comes with the polls asked of it.
	Requests Requests
	// LogRetryBase and LogRetryMax bound the backoff after polls that
	// failed because the event log did not answer (defaults
	// DefaultLogRetryBase, DefaultLogRetryMax). Marketo's own failures and
	// rate limits are not the log's: those polls come at the interval.
	LogRetryBase, LogRetryMax time.Duration
	// Clock is what the schedule goes by (default the real time).
	Clock Clock
	// Logger gets poll failures; nil discards.
	Logger *slog.Logger
	// ObservePoll, when set, is called after every poll that reached
	// Marketo (not for skipped ones), for metrics. It must be fast and safe
	// for concurrent use.
	ObservePoll func(instanceID string, d time.Duration, err error)
}

// Poller polls every instance with events enabled. Create it with New and
// run it with Run; Refresh and PollNow may be called from any goroutine.
type Poller struct {
	store Store
	ing   Ingester
	pos   Positions
	box   *secrets.Box
	opts  Options
	log   *slog.Logger

	clients *clientCache
	types   *typeCache

	refresh chan struct{} // Refresh asked for a rescan
	wake    chan struct{} // PollNow queued an instance

	mu       sync.Mutex
	nowQueue map[string]struct{} // instances PollNow asked for
	running  bool

	// polls logs what polls did: the first after a quiet spell at once,
	// then one summary line per period.
	polls *logsummary.Summary
}

// SummaryEvery is how often at most the poller logs a summary of its polls.
const SummaryEvery = time.Minute

// New makes a Poller whose Marketo calls go through httpClient (the egress
// Marketo client; with nil every poll fails with marketo.ErrNoHTTPClient).
// It does nothing until Run.
func New(s Store, ing Ingester, pos Positions, box *secrets.Box, httpClient *http.Client, o Options) *Poller {
	if o.MinInterval <= 0 {
		o.MinInterval = DefaultMinInterval
	}
	if o.MaxConcurrent <= 0 {
		o.MaxConcurrent = DefaultMaxConcurrent
	}
	if o.RescanEvery <= 0 {
		o.RescanEvery = DefaultRescanEvery
	}
	if o.LogRetryBase <= 0 {
		o.LogRetryBase = DefaultLogRetryBase
	}
	if o.LogRetryMax < o.LogRetryBase {
		o.LogRetryMax = max(DefaultLogRetryMax, o.LogRetryBase)
	}
	if o.Clock == nil {
		o.Clock = realClock{}
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Limits == nil {
		o.Limits = marketo.NewLimits(marketo.DefaultMaxCalls, marketo.DefaultWindow, marketo.DefaultMaxConcurrent)
	}
	o.ClientOptions.Limits = o.Limits
	if o.ClientOptions.Logger == nil {
		o.ClientOptions.Logger = o.Logger
	}
	return &Poller{
		store:    s,
		ing:      ing,
		pos:      pos,
		box:      box,
		opts:     o,
		log:      o.Logger,
		clients:  newClientCache(httpClient, o.ClientOptions),
		types:    newTypeCache(typesTTL),
		refresh:  make(chan struct{}, 1),
		wake:     make(chan struct{}, 1),
		nowQueue: map[string]struct{}{},
		polls:    logsummary.New(o.Logger, slog.LevelInfo, "poller: polled", SummaryEvery),
	}
}

// Run schedules and runs polls until ctx ends, then cancels the polls in
// flight and returns once they have finished. It returns nil after ctx
// ends, and an error only if the Poller is already running.
func (p *Poller) Run(ctx context.Context) error {
	p.mu.Lock()
	if p.running {
		p.mu.Unlock()
		return errors.New("poller: already running")
	}
	p.running = true
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		p.running = false
		p.mu.Unlock()
	}()
	s := &scheduler{p: p, entries: map[string]*entry{}, done: make(chan outcome)}
	s.run(ctx)
	p.polls.Flush()
	return nil
}

// Refresh tells the poller that instances were created, changed or deleted,
// so it re-reads them now instead of at the next rescan. It never blocks.
func (p *Poller) Refresh() { signal(p.refresh) }

// PollNow starts a poll of the instance at once (or right after the one in
// flight) without waiting for it. It returns an error wrapping
// ErrNotPollable when the instance is not one the poller polls, and
// ErrElsewhere when another replica holds its lease (the request is then
// recorded in Options.Requests for whoever holds the lease next).
func (p *Poller) PollNow(instanceID string) error {
	ctx, cancel := context.WithTimeout(context.Background(), pollNowTimeout)
	defer cancel()
	in, err := p.store.InstanceByID(ctx, instanceID)
	if errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("%w: unknown instance %q", ErrNotPollable, instanceID)
	}
	if err != nil {
		return fmt.Errorf("poller: poll now: %w", err)
	}
	set, err := instance.SettingsOf(in, p.box)
	if err != nil {
		return fmt.Errorf("%w: configuration: %w", ErrNotPollable, err)
	}
	if reason := notPollable(in, set); reason != "" {
		return fmt.Errorf("%w: %s", ErrNotPollable, reason)
	}
	if !p.holds(set) {
		if p.opts.Requests != nil {
			if err := p.opts.Requests.Add(ctx, instanceID); err != nil {
				return fmt.Errorf("poller: poll now: %w", err)
			}
		}
		return ErrElsewhere
	}
	st, err := p.store.PollState(ctx, instanceID)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("poller: poll now: %w", err)
	}
	if st.PausedUntil != nil && p.opts.Clock.Now().Before(*st.PausedUntil) {
		return fmt.Errorf("%w: Marketo's daily API quota is used up; polling resumes at %s",
			ErrNotPollable, st.PausedUntil.UTC().Format(time.RFC3339))
	}
	p.mu.Lock()
	p.nowQueue[instanceID] = struct{}{}
	p.mu.Unlock()
	signal(p.wake)
	return nil
}

func (p *Poller) takeNowQueue() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	ids := make([]string, 0, len(p.nowQueue))
	for id := range p.nowQueue {
		ids = append(ids, id)
	}
	clear(p.nowQueue)
	return ids
}

// notPollable says why an instance is not polled, or "".
func notPollable(in store.Instance, set instance.Settings) string {
	switch {
	case in.Disabled:
		return "instance is disabled"
	case !in.Valid:
		if in.InvalidReason != "" {
			return "instance is not valid: " + in.InvalidReason
		}
		return "instance is not valid"
	case !set.EventsEnabled:
		return fmt.Sprintf("events are not enabled (%s is not \"true\")", instance.KeyEventsEnabled)
	}
	return ""
}

// holds reports whether this replica polls instances with these settings.
func (p *Poller) holds(set instance.Settings) bool {
	return p.opts.Leases == nil || p.opts.Leases.Held(marketo.SubscriptionKey(set.RESTURL))
}

// interval is an instance's poll interval before jitter.
func (p *Poller) interval(set instance.Settings) time.Duration {
	return p.EffectiveInterval(set.RefreshInterval)
}

// EffectiveInterval is the interval used for a configured one: never below
// the floor (Options.MinInterval).
func (p *Poller) EffectiveInterval(configured time.Duration) time.Duration {
	return max(configured, p.opts.MinInterval)
}

// jitter spreads d by ±10% so that instances created together drift apart.
func jitter(d time.Duration) time.Duration {
	return time.Duration(float64(d) * (0.9 + 0.2*rand.Float64()))
}

func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// entry is the schedule of one instance; only the scheduler goroutine
// touches it.
type entry struct {
	id       string
	interval time.Duration
	nextAt   time.Time
	running  bool
	again    bool // PollNow during a poll: poll again when it ends
	// requested: a recorded request (Options.Requests) is honoured by the
	// next poll, which then removes it.
	requested bool
	// logFailures counts the polls in a row that failed because the
	// event log did not answer.
	logFailures int
	removed     bool // no longer pollable: dropped when the running poll ends
	cancel      context.CancelFunc
	// state is the instance's poll state as last saved, nil when unknown
	// (read from the store at the next poll). The poller is its only
	// writer, so it need not be read back before every poll.
	state *store.PollState
}

// outcome is what a poll tells the scheduler.
type outcome struct {
	e           *entry
	drop        bool             // the instance is gone or no longer pollable
	logFailed   bool             // the event log did not answer
	elsewhere   bool             // not polled: another replica holds the lease
	more        bool             // stopped at maxPagesPerPoll: poll again now
	pausedUntil time.Time        // daily quota: not before then
	interval    time.Duration    // from the settings the poll read, 0 if none
	newEvents   int64            // events this poll ingested
	state       *store.PollState // as saved; nil when unknown
}

// scheduler owns the schedule for one Run.
type scheduler struct {
	p       *Poller
	entries map[string]*entry
	running int
	done    chan outcome
	wg      sync.WaitGroup
}

func (s *scheduler) run(ctx context.Context) {
	rescan := time.NewTicker(s.p.opts.RescanEvery)
	defer rescan.Stop()

	s.rescan(ctx)
	for {
		s.startDue(ctx)
		timer, stop := s.p.opts.Clock.NewTimer(s.nextWait())
		select {
		case <-ctx.Done():
			stop()
			s.drain()
			return
		case <-s.p.refresh:
			s.rescan(ctx)
		case <-rescan.C:
			s.rescan(ctx)
		case <-s.p.wake:
			s.pollNow(ctx)
		case o := <-s.done:
			s.finish(o)
		case <-timer:
		}
		stop()
	}
}

// rescan brings the schedule in line with the stored instances.
func (s *scheduler) rescan(ctx context.Context) {
	list, err := s.p.store.Instances(ctx, "")
	if err != nil {
		if ctx.Err() == nil {
			s.p.log.Warn("poller: cannot list instances; keeping the schedule", "err", err)
		}
		return
	}
	now := s.p.opts.Clock.Now()
	seen := make(map[string]bool, len(list))
	hosts := map[string]bool{}
	defer func() {
		if s.p.opts.Leases != nil {
			s.p.opts.Leases.Want(slices.Collect(maps.Keys(hosts)))
		}
	}()
	for _, in := range list {
		set, err := instance.SettingsOf(in, s.p.box)
		if err != nil {
			s.p.log.Warn("poller: instance configuration unusable; not polling it", "instance", in.ID, "err", err)
			continue
		}
		if notPollable(in, set) != "" {
			continue
		}
		hosts[marketo.SubscriptionKey(set.RESTURL)] = true
		// Another replica polls this host. Its entry goes, so a later
		// lease starts from the stored state, which that replica wrote.
		if !s.p.holds(set) {
			continue
		}
		seen[in.ID] = true
		iv := s.p.interval(set)
		e := s.entries[in.ID]
		if e == nil {
			e = &entry{id: in.ID, interval: iv}
			e.nextAt, e.state = s.firstDue(ctx, in.ID, iv, now)
			s.entries[in.ID] = e
			continue
		}
		e.removed = false
		if iv != e.interval {
			e.interval = iv
			if !e.running && e.nextAt.After(now.Add(iv)) {
				e.nextAt = now.Add(jitter(iv))
			}
		}
	}
	s.takeRequests(ctx, now)
	for id, e := range s.entries {
		if seen[id] {
			continue
		}
		s.p.clients.forget(id)
		if e.running {
			e.removed = true
			e.cancel()
			continue
		}
		delete(s.entries, id)
	}
}

// takeRequests moves the instances with a recorded request to the front.
func (s *scheduler) takeRequests(ctx context.Context, now time.Time) {
	if s.p.opts.Requests == nil || len(s.entries) == 0 {
		return
	}
	ids, err := s.p.opts.Requests.Pending(ctx)
	if err != nil {
		if ctx.Err() == nil {
			s.p.log.Warn("poller: cannot read the polls asked for; they are read again at the next rescan", "err", err)
		}
		return
	}
	for _, id := range ids {
		e := s.entries[id]
		if e == nil || e.removed || e.requested {
			continue
		}
		e.requested = true
		if e.running {
			e.again = true
		} else {
			e.nextAt = now
		}
	}
}

// firstDue is when a newly scheduled instance is polled first: one interval
// after its last poll (so a restart does not poll everything at once), at
// once if it never was or its last poll failed, never while paused.
func (s *scheduler) firstDue(ctx context.Context, id string, iv time.Duration, now time.Time) (time.Time, *store.PollState) {
	st, err := s.p.store.PollState(ctx, id)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return now, &store.PollState{InstanceID: id}
	case err != nil:
		return now, nil
	}
	due := now
	if st.LastPollAt != nil && st.LastError == "" {
		if t := st.LastPollAt.Add(jitter(iv)); t.After(due) {
			due = t
		}
	}
	if st.PausedUntil != nil && st.PausedUntil.After(due) {
		due = *st.PausedUntil
	}
	return due, &st
}

// pollNow moves the instances PollNow asked for to the front.
func (s *scheduler) pollNow(ctx context.Context) {
	now := s.p.opts.Clock.Now()
	rescanned := false
	for _, id := range s.p.takeNowQueue() {
		e := s.entries[id]
		if (e == nil || e.removed) && !rescanned {
			// Created or re-enabled since the last rescan.
			s.rescan(ctx)
			rescanned = true
			e = s.entries[id]
		}
		switch {
		case e == nil || e.removed:
		case e.running:
			e.again = true
		default:
			e.nextAt = now
		}
	}
}

// startDue starts the due polls, oldest due first, as slots allow.
func (s *scheduler) startDue(ctx context.Context) {
	free := s.p.opts.MaxConcurrent - s.running
	if free <= 0 {
		return
	}
	now := s.p.opts.Clock.Now()
	var due []*entry
	for _, e := range s.entries {
		if !e.running && !e.removed && !e.nextAt.After(now) {
			due = append(due, e)
		}
	}
	sort.Slice(due, func(i, j int) bool { return due[i].nextAt.Before(due[j].nextAt) })
	for _, e := range due[:min(free, len(due))] {
		s.start(ctx, e)
	}
}

func (s *scheduler) start(ctx context.Context, e *entry) {
	pctx, cancel := context.WithCancel(ctx)
	e.running, e.cancel = true, cancel
	s.running++
	id, state, requested := e.id, e.state, e.requested
	e.state, e.requested = nil, false // the poll owns them now
	s.wg.Go(func() {
		o := s.p.pollOnce(pctx, id, state)
		// A request stays for the replica that polls when this one lost
		// the lease before the poll started.
		if requested && pctx.Err() == nil && !o.elsewhere {
			if err := s.p.opts.Requests.Done(pctx, id); err != nil {
				s.p.log.Warn("poller: a poll asked for ran but stays recorded; it runs again", "instance", id, "err", err)
			}
		}
		o.e = e // only the scheduler reads it
		s.done <- o
	})
}

// nextWait is how long until the next poll may start.
func (s *scheduler) nextWait() time.Duration {
	const idle = time.Hour
	if s.running >= s.p.opts.MaxConcurrent {
		return idle // a finished poll wakes the loop
	}
	var next time.Time
	for _, e := range s.entries {
		if e.running || e.removed {
			continue
		}
		if next.IsZero() || e.nextAt.Before(next) {
			next = e.nextAt
		}
	}
	if next.IsZero() {
		return idle
	}
	return min(max(next.Sub(s.p.opts.Clock.Now()), 0), idle)
}

// finish books a poll's end and schedules the instance's next poll.
func (s *scheduler) finish(o outcome) {
	s.running--
	e := o.e
	e.running = false
	e.cancel()
	if e.removed || o.drop {
		if s.entries[e.id] == e {
			delete(s.entries, e.id)
		}
		s.p.clients.forget(e.id)
		if o.drop && !e.removed {
			// The poll found the instance unpollable; a rescan tells a
			// change made meanwhile (valid again) from a final one.
			s.p.Refresh()
		}
		return
	}
	e.state = o.state
	if o.interval > 0 {
		e.interval = o.interval
	}
	now := s.p.opts.Clock.Now()
	next := now.Add(jitter(e.interval))
	if e.again || o.more {
		next, e.again = now, false
	}
	if o.pausedUntil.After(next) {
		next = o.pausedUntil
	}
	// A log that does not answer is not asked again and again: the
	// instance waits a backoff that grows with each such failure.
	if o.logFailed {
		e.logFailures++
		if t := now.Add(s.p.logBackoff(e.logFailures)); t.After(next) {
			next = t
		}
	} else {
		e.logFailures = 0
	}
	e.nextAt = next
}

// logBackoff is the wait after the n-th poll in a row that failed because
// the event log did not answer: LogRetryBase doubled n-1 times, at most
// LogRetryMax.
func (p *Poller) logBackoff(n int) time.Duration {
	d := p.opts.LogRetryBase
	for i := 1; i < n && d < p.opts.LogRetryMax; i++ {
		d *= 2
	}
	return min(d, p.opts.LogRetryMax)
}

// drain cancels the polls in flight and waits for them.
func (s *scheduler) drain() {
	for _, e := range s.entries {
		if e.running {
			e.cancel()
		}
	}
	for s.running > 0 {
		o := <-s.done
		s.running--
		o.e.running = false
		o.e.cancel()
	}
	s.wg.Wait()
}
