package poller

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/leadstream/leadstream/internal/events"
	"github.com/leadstream/leadstream/internal/instance"
	"github.com/leadstream/leadstream/internal/marketo"
	"github.com/leadstream/leadstream/internal/store"
)

// Lead activity types, which become "leads" events.
const (
	typeNewLead         = 12
	typeChangeDataValue = 13
	typeDeleteLead      = 37
)

// maxErrorLen bounds LastError and InvalidReason, which users see.
const maxErrorLen = 300

// pollOnce polls one instance and reports to the scheduler. state is the
// instance's poll state as last saved, or nil to read it.
func (p *Poller) pollOnce(ctx context.Context, id string, state *store.PollState) outcome {
	start := time.Now()
	o, polled, err := p.poll(ctx, id, state)
	if polled && p.opts.ObservePoll != nil {
		p.opts.ObservePoll(id, time.Since(start), err)
	}
	if err != nil && ctx.Err() == nil {
		p.log.Warn("poller: poll failed", "instance", id, "err", err)
	}
	if polled && ctx.Err() == nil {
		failed := int64(0)
		if err != nil {
			failed = 1
		}
		p.polls.Add(id, map[string]int64{"polls": 1, "failed": failed, "new_events": o.newEvents}, "duration", time.Since(start).Round(time.Millisecond))
	}
	return o
}

// poll reads the instance fresh, then pages through its new activities.
// polled reports whether it went as far as Marketo.
func (p *Poller) poll(ctx context.Context, id string, state *store.PollState) (o outcome, polled bool, err error) {
	in, err := p.store.InstanceByID(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return outcome{drop: true}, false, nil // deleted
	}
	if err != nil {
		return o, false, fmt.Errorf("poller: %w", err)
	}
	set, err := instance.SettingsOf(in, p.box)
	if err != nil {
		return outcome{drop: true}, false, fmt.Errorf("poller: %w", err)
	}
	if notPollable(in, set) != "" {
		return outcome{drop: true}, false, nil
	}
	if !p.holds(set) {
		return outcome{drop: true, elsewhere: true}, false, nil
	}
	o.interval = p.interval(set)

	var st store.PollState
	if state != nil {
		st = *state
	} else {
		st, err = p.store.PollState(ctx, id)
		switch {
		case errors.Is(err, store.ErrNotFound):
			st = store.PollState{InstanceID: id}
		case err != nil:
			return o, false, fmt.Errorf("poller: %w", err)
		}
	}
	now := p.opts.Clock.Now().UTC()
	if st.PausedUntil != nil {
		if now.Before(*st.PausedUntil) {
			o.pausedUntil = *st.PausedUntil
			o.state = &st
			return o, false, nil
		}
		st.PausedUntil = nil
	}
	st.LastPollAt = &now
	before := st.EventsIngested
	defer func() { o.newEvents = st.EventsIngested - before }()

	client := p.clients.get(id, marketo.Credentials{
		ClientID: set.ClientID, ClientSecret: set.ClientSecret,
		IdentityURL: set.IdentityURL, RESTURL: set.RESTURL,
	})
	o.more, err = p.fetch(ctx, client, in, set, &st)
	o.logFailed = errors.As(err, new(*logFailure))
	if ctx.Err() != nil {
		// Shutting down, or the instance was deleted or disabled: the
		// pages done are saved, and nothing more is written for it.
		return o, true, errors.Join(err, fmt.Errorf("poller: %w", ctx.Err()))
	}

	if err == nil {
		st.LastError = ""
		st.LastSuccessAt = &now
	} else {
		st.LastError = shortError(err)
	}
	if errors.Is(err, marketo.ErrQuotaExceeded) {
		until := now.Add(time.Hour) // should the client not say when it resets
		if qe := (*marketo.QuotaError)(nil); errors.As(err, &qe) && !qe.ResetAt.IsZero() {
			until = qe.ResetAt.UTC()
		}
		st.PausedUntil, o.pausedUntil = &until, until
	}
	if errors.Is(err, marketo.ErrInvalidCredentials) {
		o.drop = true
		if merr := p.markInvalid(ctx, id, err); merr != nil {
			err = errors.Join(err, merr)
		}
	}
	if serr := p.store.SavePollState(ctx, st); serr != nil {
		// Read it back next time: the store is what a restart sees.
		return o, true, errors.Join(err, fmt.Errorf("poller: %w", serr))
	}
	o.state = &st
	return o, true, err
}

// fetch pages from the stored token (or from the instance's creation on
// the first poll) while Marketo has more. Each page is appended to the log
// atomically with its position (its token, the next one, the running
// count), before the next token is saved with the page's log sequence. A
// crash between the two leaves the log ahead of the saved state, and the
// log's own record wins: the page is never fetched and appended again,
// however long the gateway stayed down, with no reliance on JetStream's
// de-duplication window. The last page's token is saved by the caller.
func (p *Poller) fetch(ctx context.Context, c *marketo.Client, in store.Instance, set instance.Settings, st *store.PollState) (more bool, err error) {
	pos, logged, err := p.pos.LastPosition(ctx, in.OrgID, in.ID)
	if err != nil {
		return false, fmt.Errorf("poller: %w", &logFailure{err})
	}
	if logged && pos.Seq > st.LogSeq && pos.Next != "" {
		p.log.Info("poller: the log is ahead of the saved state; continuing from the log", "instance", in.ID)
		st.NextPageToken, st.EventsIngested, st.LogSeq = pos.Next, pos.Ingested, pos.Seq
	}
	token := st.NextPageToken
	if token == "" {
		if token, err = c.PagingToken(ctx, in.CreatedAt); err != nil {
			return false, fmt.Errorf("poller: paging token: %w", err)
		}
	}
	for pages := 0; ; pages++ {
		if pages == maxPagesPerPoll {
			return true, nil
		}
		page, err := c.Activities(ctx, token, set.ActivityTypeIDs)
		if err != nil {
			return false, fmt.Errorf("poller: activities: %w", err)
		}
		if err := p.ingest(ctx, c, in, set, page.Activities, events.Position{From: token, Next: page.NextPageToken}, st); err != nil {
			return false, err
		}
		st.NextPageToken = page.NextPageToken
		if !page.MoreResult {
			return false, nil
		}
		if err := p.store.SavePollState(ctx, *st); err != nil {
			return false, fmt.Errorf("poller: %w", err)
		}
		token = page.NextPageToken
	}
}

// ingest appends one page's activities as events, all or none, and counts them.
func (p *Poller) ingest(ctx context.Context, c *marketo.Client, in store.Instance, set instance.Settings, acts []marketo.Activity, pos events.Position, st *store.PollState) error {
	if len(acts) == 0 {
		return nil
	}
	var names map[int]string
	for _, a := range acts {
		if !isLeadType(a.ActivityTypeID) {
			var err error
			if names, err = p.types.names(ctx, marketo.SubscriptionKey(set.RESTURL), c); err != nil {
				return fmt.Errorf("poller: activity types: %w", err)
			}
			break
		}
	}
	drafts := make([]events.Draft, len(acts))
	for i, a := range acts {
		drafts[i] = draftOf(in, set, a, names)
	}
	pos.Ingested = st.EventsIngested + int64(len(drafts))
	results, err := p.ing.IngestPage(ctx, drafts, pos)
	if err != nil {
		return fmt.Errorf("poller: ingest: %w", &logFailure{err})
	}
	st.EventsIngested = pos.Ingested
	st.LogSeq = results[len(results)-1].Event.Seq
	return nil
}

// logFailure marks a poll's failure as the event log's, which the
// schedule backs off from (see Options.LogRetryBase).
type logFailure struct{ err error }

func (e *logFailure) Error() string { return e.err.Error() }
func (e *logFailure) Unwrap() error { return e.err }

func isLeadType(id int) bool {
	return id == typeNewLead || id == typeChangeDataValue || id == typeDeleteLead
}

// draftOf maps one activity to an event: lead activities to "leads"
// CREATED/UPDATED/DELETED, others to "activities" named by their type.
func draftOf(in store.Instance, set instance.Settings, a marketo.Activity, names map[int]string) events.Draft {
	d := events.Draft{
		InstanceID: in.ID,
		OrgID:      in.OrgID,
		Source:     events.SourcePoller,
		DedupeKey:  a.MarketoGUID,
		OccurredAt: a.ActivityDate,
		Payload:    events.JSON(a.Raw),
		Notify:     set.CallbackURL != "",
	}
	if d.DedupeKey == "" {
		// Marketo always sends one; the activity id is unique too.
		d.DedupeKey = "activity:" + strconv.FormatInt(a.ID, 10)
	}
	if a.LeadID != 0 {
		lead := strconv.FormatInt(a.LeadID, 10)
		d.ObjectID = &lead
	}
	switch a.ActivityTypeID {
	case typeNewLead:
		d.ObjectType, d.EventType = "leads", "CREATED"
	case typeChangeDataValue:
		d.ObjectType, d.EventType = "leads", "UPDATED"
	case typeDeleteLead:
		d.ObjectType, d.EventType = "leads", "DELETED"
	default:
		d.ObjectType = "activities"
		d.EventType = names[a.ActivityTypeID]
		if d.EventType == "" {
			d.EventType = "activity " + strconv.Itoa(a.ActivityTypeID)
		}
	}
	return d
}

// markInvalid stops polling of an instance whose credentials Marketo
// refused, until someone updates them.
func (p *Poller) markInvalid(ctx context.Context, id string, cause error) error {
	msg := strings.TrimPrefix(shortError(cause), "poller: activities: ")
	msg = strings.TrimPrefix(msg, "poller: paging token: ")
	msg = strings.TrimPrefix(msg, "poller: activity types: ")
	msg = strings.TrimPrefix(msg, marketo.ErrInvalidCredentials.Error()+": ")
	reason := "Marketo refused the API credentials (" + msg + ")"
	_, err := p.store.UpdateInstance(ctx, "", id, func(in *store.Instance) error {
		in.Valid = false
		in.InvalidReason = reason
		return nil
	})
	if err != nil {
		return fmt.Errorf("poller: mark instance invalid: %w", err)
	}
	p.log.Warn("poller: Marketo refused the credentials; polling stops until they are updated", "instance", id)
	return nil
}

// shortError makes an error fit for LastError: one line, bounded. Errors
// of the Marketo client carry paths and codes, never tokens or secrets.
func shortError(err error) string {
	s := strings.Join(strings.Fields(err.Error()), " ")
	if len(s) <= maxErrorLen {
		return s
	}
	cut := maxErrorLen
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}

// clientCache holds one Marketo client per instance, rebuilt when the
// instance's credentials change, so tokens are reused across polls.
type clientCache struct {
	http *http.Client
	opts marketo.Options

	mu sync.Mutex
	m  map[string]cachedClient
}

type cachedClient struct {
	creds  marketo.Credentials
	client *marketo.Client
}

func newClientCache(h *http.Client, opts marketo.Options) *clientCache {
	return &clientCache{http: h, opts: opts, m: map[string]cachedClient{}}
}

func (c *clientCache) get(id string, creds marketo.Credentials) *marketo.Client {
	c.mu.Lock()
	defer c.mu.Unlock()
	if cc, ok := c.m[id]; ok && cc.creds == creds {
		return cc.client
	}
	cl := marketo.New(creds, c.http, c.opts)
	c.m[id] = cachedClient{creds: creds, client: cl}
	return cl
}

func (c *clientCache) forget(id string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.m, id)
}
