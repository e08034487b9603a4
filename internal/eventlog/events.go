package eventlog

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"

	"github.com/leadstream/leadstream/internal/events"
)

// Headers the log sets on event messages.
const (
	hdrPosFrom = "Leadstream-Poll-From"
	hdrPosNext = "Leadstream-Poll-Next"
	hdrPosSum  = "Leadstream-Poll-Ingested"
)

// meta is an event without its payload, as the first line of a message. The
// payload follows the newline byte for byte (encoding/json would compact
// and escape it).
type meta struct {
	ID         string        `json:"id"`
	OrgID      string        `json:"o"`
	InstanceID string        `json:"i"`
	DedupeKey  string        `json:"k,omitempty"`
	Source     events.Source `json:"s"`
	EventType  string        `json:"et"`
	ObjectType string        `json:"ot"`
	ObjectID   *string       `json:"oid,omitempty"`
	OccurredAt time.Time     `json:"at"`
	ReceivedAt time.Time     `json:"rt"`
	Notify     bool          `json:"n,omitempty"`
}

func encode(e *events.Event) []byte {
	m, _ := json.Marshal(meta{e.ID, e.OrgID, e.InstanceID, e.DedupeKey, e.Source, e.EventType, e.ObjectType,
		e.ObjectID, e.OccurredAt, e.ReceivedAt, e.Notify})
	b := make([]byte, 0, len(m)+1+len(e.Payload))
	b = append(b, m...)
	b = append(b, '\n')
	return append(b, e.Payload...)
}

func decode(seq uint64, data []byte) (*events.Event, error) {
	i := bytes.IndexByte(data, '\n')
	if i < 0 {
		return nil, fmt.Errorf("eventlog: message %d is not an event", seq)
	}
	var m meta
	if err := json.Unmarshal(data[:i], &m); err != nil {
		return nil, fmt.Errorf("eventlog: message %d: %w", seq, err)
	}
	return &events.Event{
		ID: m.ID, OrgID: m.OrgID, InstanceID: m.InstanceID, Seq: int64(seq), DedupeKey: m.DedupeKey,
		Source: m.Source, EventType: m.EventType, ObjectType: m.ObjectType, ObjectID: m.ObjectID,
		OccurredAt: m.OccurredAt, ReceivedAt: m.ReceivedAt, Notify: m.Notify,
		Payload: events.JSON(bytes.Clone(data[i+1:])),
	}, nil
}

func (l *Log) message(e *events.Event) *nats.Msg {
	m := &nats.Msg{Subject: eventSubject(e), Data: encode(e)}
	if e.DedupeKey != "" {
		m.Header = nats.Header{}
		// Only an id derived from a source's key can come again; a fresh
		// random id (a webhook's) never repeats, and an entry per append
		// in the server's de-duplication window would cost for nothing.
		m.Header.Set(jetstream.MsgIDHeader, e.ID)
	}
	return m
}

// Append appends one event and waits for the acknowledgement, setting its
// Seq. Concurrent callers share the connection's writes: publishes are
// asynchronous and acknowledged as they are stored.
func (l *Log) Append(ctx context.Context, e *events.Event) (bool, error) {
	// No expected-stream header: only our stream takes these subjects (the
	// server refuses overlapping streams), and the ack names the stream;
	// a message without headers skips the server's header parsing.
	f, err := l.js.PublishMsgAsync(l.message(e))
	if err != nil {
		return false, fmt.Errorf("eventlog: append: %w", err)
	}
	select {
	case ack := <-f.Ok():
		if ack.Stream != StreamEvents {
			return false, fmt.Errorf("eventlog: append: stored in stream %q, not %s", ack.Stream, StreamEvents)
		}
		e.Seq = int64(ack.Sequence)
		if e.Notify && !ack.Duplicate {
			l.initStates(ctx, []*events.Event{e})
		}
		return ack.Duplicate, nil
	case err := <-f.Err():
		return false, fmt.Errorf("eventlog: append: %w", err)
	case <-ctx.Done():
		return false, fmt.Errorf("eventlog: append: %w", ctx.Err())
	}
}

// batchAck is the acknowledgement of an atomic batch's commit.
type batchAck struct {
	Sequence uint64 `json:"seq"`
	Count    uint64 `json:"count"`
	Error    *struct {
		Code        int    `json:"code"`
		ErrCode     int    `json:"err_code"`
		Description string `json:"description"`
	} `json:"error"`
}

// AppendPage appends events as one atomic batch (JetStream stores all or
// none of them, contiguously) and keeps pos on the last one. It sets each
// event's Seq.
func (l *Log) AppendPage(ctx context.Context, evs []*events.Event, pos events.Position) error {
	if len(evs) == 0 {
		return nil
	}
	id := nuid.Next()
	var commit *nats.Msg
	for i, e := range evs {
		// No message id: a page is all or none and its position says what
		// was appended, so a de-duplication entry per event would cost the
		// server for nothing.
		m := nats.NewMsg(eventSubject(e))
		m.Data = encode(e)
		m.Header.Set("Nats-Batch-Id", id)
		m.Header.Set("Nats-Batch-Sequence", strconv.Itoa(i+1))
		if i < len(evs)-1 {
			// No reply: the commit's answer covers the whole batch, and a
			// lost message makes the commit fail.
			if err := l.nc.PublishMsg(m); err != nil {
				return fmt.Errorf("eventlog: append page: %w", err)
			}
			continue
		}
		m.Header.Set("Nats-Batch-Commit", "1")
		if pos.From != "" || pos.Next != "" {
			m.Header.Set(hdrPosFrom, pos.From)
			m.Header.Set(hdrPosNext, pos.Next)
			m.Header.Set(hdrPosSum, strconv.FormatInt(pos.Ingested, 10))
		}
		commit = m
	}
	rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	resp, err := l.nc.RequestMsgWithContext(rctx, commit)
	if err != nil {
		return fmt.Errorf("eventlog: append page: %w", err)
	}
	var ack batchAck
	if err := json.Unmarshal(resp.Data, &ack); err != nil {
		return fmt.Errorf("eventlog: append page: unreadable answer: %w", err)
	}
	if ack.Error != nil {
		return fmt.Errorf("eventlog: append page: %s (%d)", ack.Error.Description, ack.Error.ErrCode)
	}
	if ack.Count != uint64(len(evs)) || ack.Sequence < ack.Count {
		return fmt.Errorf("eventlog: append page: %d of %d events acknowledged", ack.Count, len(evs))
	}
	first := ack.Sequence - ack.Count + 1
	var notify []*events.Event
	for i, e := range evs {
		e.Seq = int64(first) + int64(i)
		if e.Notify {
			notify = append(notify, e)
		}
	}
	l.initStates(ctx, notify)
	return nil
}

// LastPosition returns the position kept with the instance's last poller
// page, if any.
func (l *Log) LastPosition(ctx context.Context, orgID, instanceID string) (events.Position, bool, error) {
	subj := prefixEvent + "." + token(orgID) + "." + token(instanceID) + "." + token(string(events.SourcePoller)) + ".>"
	m, err := l.events.GetLastMsgForSubject(ctx, subj)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return events.Position{}, false, nil
	}
	if err != nil {
		return events.Position{}, false, fmt.Errorf("eventlog: last poller page: %w", err)
	}
	if m.Header.Get(hdrPosNext) == "" && m.Header.Get(hdrPosFrom) == "" {
		return events.Position{}, false, nil
	}
	n, _ := strconv.ParseInt(m.Header.Get(hdrPosSum), 10, 64)
	return events.Position{From: m.Header.Get(hdrPosFrom), Next: m.Header.Get(hdrPosNext), Ingested: n, Seq: int64(m.Sequence)}, true, nil
}

// Read returns up to limit events passing f with a sequence above after,
// oldest first. The server filters by subject; when the filter is too wide
// for that, by the closest subjects, and the rest is matched here. An after
// older than the log keeps is a *events.CursorExpiredError.
func (l *Log) Read(ctx context.Context, f events.Filter, after int64, limit int) ([]*events.Event, error) {
	if limit <= 0 {
		return nil, nil
	}
	// While a cluster elects new leaders after losing a node, JetStream's API
	// has no responder for a few seconds; a read is idempotent, so it waits
	// that out (bounded) instead of failing the caller.
	deadline := time.Now().Add(readRetryFor)
	for wait := 50 * time.Millisecond; ; wait = min(2*wait, time.Second) {
		evs, err := l.read(ctx, f, after, limit)
		if err == nil || !transient(err) || time.Now().Add(wait).After(deadline) {
			return evs, err
		}
		select {
		case <-ctx.Done():
			return nil, err
		case <-time.After(wait):
		}
	}
}

// readRetryFor bounds how long a read waits out a cluster without leaders.
const readRetryFor = 15 * time.Second

// transient reports errors a JetStream cluster gives while it fails over.
func transient(err error) bool {
	return errors.Is(err, nats.ErrNoResponders) || errors.Is(err, jetstream.ErrNoStreamResponse) ||
		errors.Is(err, nats.ErrTimeout)
}

func (l *Log) read(ctx context.Context, f events.Filter, after int64, limit int) ([]*events.Event, error) {
	if after > 0 {
		if err := l.checkCursor(ctx, uint64(after)); err != nil {
			return nil, err
		}
	}
	subs, coarse := filterSubjects(f)
	out := make([]*events.Event, 0, min(limit, 512))
	next := uint64(after) + 1
	if len(subs) == 1 && l.replicas == 1 {
		return l.readDirect(ctx, subs[0], next, limit, f, coarse, out)
	}
	for len(out) < limit {
		want := limit - len(out)
		cons, err := l.events.CreateConsumer(ctx, jetstream.ConsumerConfig{
			FilterSubjects:    subs,
			DeliverPolicy:     jetstream.DeliverByStartSequencePolicy,
			OptStartSeq:       next,
			AckPolicy:         jetstream.AckNonePolicy,
			InactiveThreshold: time.Minute,
			MemoryStorage:     true,
			Replicas:          1,
		})
		if err != nil {
			return nil, fmt.Errorf("eventlog: read: %w", err)
		}
		got, last, err := l.fetch(ctx, cons, want, f, coarse, &out)
		_ = l.events.DeleteConsumer(context.WithoutCancel(ctx), cons.CachedInfo().Name)
		if err != nil {
			return nil, err
		}
		if got < want {
			break // the end of the log
		}
		next = last + 1
	}
	return out, nil
}

// readDirect reads with JetStream's batched direct get: one request, no
// consumer, the server walking its per-subject index from next. Only with
// one replica: with several, any replica may answer a direct get, and a
// lagging one could miss an event the live tail had already passed.
func (l *Log) readDirect(ctx context.Context, subj string, next uint64, limit int, f events.Filter, coarse bool, out []*events.Event) ([]*events.Event, error) {
	for len(out) < limit {
		want := limit - len(out)
		// A batch costs the server a count of every matching message up to
		// the end of the log (its pending header), which grows with the log
		// when reading from far back; single gets cost one index lookup
		// each. Small pages (history queries) go one by one, replay pages
		// in batches.
		if want <= smallRead {
			e, seq, err := l.directNext(ctx, subj, next)
			if err != nil || seq == 0 {
				return out, err
			}
			if e != nil && (!coarse || f.Match(e)) {
				out = append(out, e)
			}
			next = seq + 1
			continue
		}
		req, _ := json.Marshal(map[string]any{"seq": next, "next_by_subj": subj, "batch": want})
		inbox := l.nc.NewRespInbox()
		sub, err := l.nc.SubscribeSync(inbox)
		if err != nil {
			return nil, fmt.Errorf("eventlog: read: %w", err)
		}
		got, last, err := l.directBatch(ctx, sub, inbox, req, f, coarse, &out)
		_ = sub.Unsubscribe()
		if err != nil {
			return nil, err
		}
		if got < want {
			break
		}
		next = last + 1
	}
	return out, nil
}

// smallRead is the largest page read with single direct gets.
const smallRead = 101

// directNext returns the first event on subj at or after seq, and its
// sequence (0: none).
func (l *Log) directNext(ctx context.Context, subj string, seq uint64) (*events.Event, uint64, error) {
	req, _ := json.Marshal(map[string]any{"seq": seq, "next_by_subj": subj})
	rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	m, err := l.nc.RequestWithContext(rctx, "$JS.API.DIRECT.GET."+StreamEvents, req)
	if err != nil {
		return nil, 0, fmt.Errorf("eventlog: read: %w", err)
	}
	switch st := m.Header.Get("Status"); st {
	case "":
	case "404":
		return nil, 0, nil
	default:
		return nil, 0, fmt.Errorf("eventlog: read: direct get answered %s %s", st, m.Header.Get("Description"))
	}
	at, err := strconv.ParseUint(m.Header.Get("Nats-Sequence"), 10, 64)
	if err != nil || at == 0 {
		return nil, 0, fmt.Errorf("eventlog: read: direct get without a sequence")
	}
	e, err := decode(at, m.Data)
	if err != nil {
		l.log.Warn("eventlog: skipping an unreadable message", "err", err)
		return nil, at, nil
	}
	return e, at, nil
}

func (l *Log) directBatch(ctx context.Context, sub *nats.Subscription, inbox string, req []byte, f events.Filter, coarse bool, out *[]*events.Event) (int, uint64, error) {
	if err := l.nc.PublishRequest("$JS.API.DIRECT.GET."+StreamEvents, inbox, req); err != nil {
		return 0, 0, fmt.Errorf("eventlog: read: %w", err)
	}
	rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	got, last := 0, uint64(0)
	for {
		m, err := sub.NextMsgWithContext(rctx)
		if err != nil {
			return 0, 0, fmt.Errorf("eventlog: read: %w", err)
		}
		switch st := m.Header.Get("Status"); st {
		case "":
		case "404", "204": // no (more) messages; end of batch
			return got, last, nil
		default:
			return 0, 0, fmt.Errorf("eventlog: read: direct get answered %s %s", st, m.Header.Get("Description"))
		}
		seq, err := strconv.ParseUint(m.Header.Get("Nats-Sequence"), 10, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("eventlog: read: direct get without a sequence")
		}
		got, last = got+1, seq
		e, err := decode(seq, m.Data)
		if err != nil {
			l.log.Warn("eventlog: skipping an unreadable message", "err", err)
			continue
		}
		if !coarse || f.Match(e) {
			*out = append(*out, e)
		}
	}
}

// fetch reads up to n messages from a fresh consumer, appending the events
// that pass f to out; it returns how many messages it read and the last
// sequence.
func (l *Log) fetch(ctx context.Context, cons jetstream.Consumer, n int, f events.Filter, coarse bool, out *[]*events.Event) (int, uint64, error) {
	pending := cons.CachedInfo().NumPending
	if pending == 0 {
		return 0, 0, nil
	}
	n = int(min(uint64(n), pending))
	batch, err := cons.Fetch(n, jetstream.FetchContext(ctx))
	if err != nil {
		return 0, 0, fmt.Errorf("eventlog: read: %w", err)
	}
	got, last := 0, uint64(0)
	for m := range batch.Messages() {
		md, err := m.Metadata()
		if err != nil {
			return 0, 0, fmt.Errorf("eventlog: read: %w", err)
		}
		got, last = got+1, md.Sequence.Stream
		e, err := decode(last, m.Data())
		if err != nil {
			l.log.Warn("eventlog: skipping an unreadable message", "err", err)
			continue
		}
		if !coarse || f.Match(e) {
			*out = append(*out, e)
		}
	}
	if err := batch.Error(); err != nil && got < n {
		return 0, 0, fmt.Errorf("eventlog: read: %w", err)
	}
	return got, last, nil
}

// Event returns the event at seq, or nil when the log no longer has it.
func (l *Log) Event(ctx context.Context, seq uint64) (*events.Event, error) {
	m, err := l.events.GetMsg(ctx, seq)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("eventlog: event %d: %w", seq, err)
	}
	if len(m.Subject) < 3 || m.Subject[:3] != prefixEvent+"." {
		return nil, nil
	}
	return decode(seq, m.Data)
}

// checkCursor returns a *events.CursorExpiredError when events after the
// cursor may have been removed by retention (EVENTS_MAX_AGE). Everything
// below the stream's first sequence is gone; it went by age unless purges
// of deleted instances moved the first sequence to where it is, and what a
// purge removed no other instance's reader misses (see PurgeInstance).
func (l *Log) checkCursor(ctx context.Context, after uint64) error {
	info, err := l.events.Info(ctx)
	if err != nil {
		return fmt.Errorf("eventlog: read: %w", err)
	}
	first := info.State.FirstSeq
	if first <= 1 || after+1 >= first {
		return nil
	}
	h, _, err := l.purgedHead(ctx)
	if err != nil {
		return fmt.Errorf("eventlog: read: %w", err)
	}
	if h != nil && h.To == first && after+1 >= h.From {
		return nil
	}
	return &events.CursorExpiredError{Oldest: events.FormatCursor(int64(first) - 1)}
}

// headMove records that purges moved the stream's first sequence from
// From to To: the sequences between held only deleted instances' events
// (every other event there would still be the first). Retention moving
// the first sequence on makes it stale (To no longer the first), and the
// bucket's TTL removes it after EVENTS_MAX_AGE, when nothing it covers can
// still be in the log.
type headMove struct {
	From uint64 `json:"from"`
	To   uint64 `json:"to"`
}

const keyPurgedHead = "purged-head"

func (l *Log) purgedHead(ctx context.Context) (*headMove, uint64, error) {
	kv, err := l.meta.Get(ctx, keyPurgedHead)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, 0, nil
	}
	if err != nil {
		return nil, 0, err
	}
	var h headMove
	if err := json.Unmarshal(kv.Value(), &h); err != nil {
		return nil, 0, err
	}
	return &h, kv.Revision(), nil
}

// notePurgedHead records that a purge moved the first sequence from from
// to to, joining the previous move when it ended where this one starts.
func (l *Log) notePurgedHead(ctx context.Context, from, to uint64) error {
	for {
		h, rev, err := l.purgedHead(ctx)
		if err != nil {
			return err
		}
		next := headMove{From: from, To: to}
		if h != nil && h.To >= from && h.From <= from {
			next.From = h.From
		}
		if h == nil {
			_, err = l.meta.Create(ctx, keyPurgedHead, mustJSON(next))
		} else {
			_, err = l.meta.Update(ctx, keyPurgedHead, mustJSON(next), rev)
		}
		if err == nil || !wrongLastSeq(err) {
			return err
		}
		// Another replica's purge wrote meanwhile: join it.
	}
}

// PurgeInstance removes an instance's events, redeliveries, attempts and
// delivery states from the log (a deleted instance). Its jobs go with its
// events: a callback pending for it is not delivered.
func (l *Log) PurgeInstance(ctx context.Context, instanceID string) error {
	before, err := l.events.Info(ctx)
	if err != nil {
		return fmt.Errorf("eventlog: purge events: %w", err)
	}
	// The delivery states are keyed by event id: find them before the
	// events go.
	ids, err := l.callbackIDs(ctx, instanceID)
	if err != nil {
		return err
	}
	if err := l.events.Purge(ctx, jetstream.WithPurgeSubject(instanceEvents(instanceID))); err != nil {
		return fmt.Errorf("eventlog: purge events: %w", err)
	}
	if err := l.events.Purge(ctx, jetstream.WithPurgeSubject(prefixRedeliver+".*."+token(instanceID))); err != nil {
		return fmt.Errorf("eventlog: purge redeliveries: %w", err)
	}
	after, err := l.events.Info(ctx)
	if err != nil {
		return fmt.Errorf("eventlog: purge events: %w", err)
	}
	if from, to := before.State.FirstSeq, after.State.FirstSeq; to > from {
		if err := l.notePurgedHead(ctx, from, to); err != nil {
			return fmt.Errorf("eventlog: purge events: %w", err)
		}
	}
	if err := l.attempts.Purge(ctx, jetstream.WithPurgeSubject(attemptSubject(instanceID))); err != nil {
		return fmt.Errorf("eventlog: purge attempts: %w", err)
	}
	if err := l.purgeStates(ctx, ids); err != nil {
		return fmt.Errorf("eventlog: purge delivery states: %w", err)
	}
	return nil
}

// callbackIDs returns the ids of an instance's events with a callback,
// read by subject (headers and the first line of each are enough, but
// JetStream sends the whole message).
func (l *Log) callbackIDs(ctx context.Context, instanceID string) ([]string, error) {
	cons, err := l.events.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{prefixEvent + ".*." + token(instanceID) + ".*.*.*." + tokenCallback},
		DeliverPolicy:  jetstream.DeliverAllPolicy,
	})
	if err != nil {
		return nil, fmt.Errorf("eventlog: purge: %w", err)
	}
	var ids []string
	for {
		pending := cons.CachedInfo().NumPending
		if len(ids) > 0 {
			info, err := cons.Info(ctx)
			if err != nil {
				return nil, fmt.Errorf("eventlog: purge: %w", err)
			}
			pending = info.NumPending
		}
		if pending == 0 {
			return ids, nil
		}
		batch, err := cons.Fetch(int(min(pending, 1000)), jetstream.FetchMaxWait(10*time.Second))
		if err != nil {
			return nil, fmt.Errorf("eventlog: purge: %w", err)
		}
		got := 0
		for m := range batch.Messages() {
			got++
			if e, err := decode(0, m.Data()); err == nil {
				ids = append(ids, e.ID)
			}
		}
		if err := batch.Error(); err != nil {
			return nil, fmt.Errorf("eventlog: purge: %w", err)
		}
		if got == 0 {
			return ids, nil
		}
	}
}

// purgeStates removes delivery states, each key with its history.
func (l *Log) purgeStates(ctx context.Context, ids []string) error {
	futures := make([]jetstream.PubAckFuture, 0, len(ids))
	for _, id := range ids {
		m := nats.NewMsg("$KV." + BucketDelivery + "." + id)
		m.Header.Set("KV-Operation", "PURGE")
		m.Header.Set("Nats-Rollup", "sub")
		f, err := l.js.PublishMsgAsync(m)
		if err != nil {
			return err
		}
		futures = append(futures, f)
	}
	for _, f := range futures {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			return err
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// Tail is the replica's one live reader of the log.
type Tail struct {
	cc jetstream.ConsumeContext
}

// StartTail hands every event appended from now on to fn, in log order,
// until Stop; lag is how many messages the tail has yet to read. It returns
// once the tail is in place: what is appended after that reaches fn.
//
// wants, when set, is asked first with the event's organization and
// instance (read off its subject): an event it refuses is not decoded and
// reaches fn as nil, with the lag only. A replica whose subscribers want
// none of an instance's events so spends almost nothing on them.
func (l *Log) StartTail(ctx context.Context, wants func(orgID, instanceID string) bool, fn func(e *events.Event, lag uint64)) (*Tail, error) {
	cons, err := l.events.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{prefixEvent + ".>"},
		DeliverPolicy:  jetstream.DeliverNewPolicy,
	})
	if err != nil {
		return nil, fmt.Errorf("eventlog: tail: %w", err)
	}
	cc, err := cons.Consume(func(m jetstream.Msg) {
		md, err := m.Metadata()
		if err != nil {
			return
		}
		if wants != nil {
			if org, inst, ok := subjectIDs(m.Subject()); ok && !wants(org, inst) {
				fn(nil, md.NumPending)
				return
			}
		}
		e, err := decode(md.Sequence.Stream, m.Data())
		if err != nil {
			l.log.Warn("eventlog: tail skips an unreadable message", "err", err)
			return
		}
		fn(e, md.NumPending)
	}, jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) {
		l.log.Debug("eventlog: tail", "err", err)
	}))
	if err != nil {
		return nil, fmt.Errorf("eventlog: tail: %w", err)
	}
	return &Tail{cc: cc}, nil
}

// Stop ends the tail and returns once fn is no longer called.
func (t *Tail) Stop() {
	t.cc.Stop()
	<-t.cc.Closed()
}
