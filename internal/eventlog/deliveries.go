package eventlog

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"

	"github.com/leadstream/leadstream/internal/events"
)

// Callback deliveries: the durable consumer ConsumerNotify hands each event
// with a callback (and each redelivery asked for) to one worker of one
// replica at a time; the state of each event's delivery is a key in
// BucketDelivery, written by the worker holding the job; attempts go to
// StreamAttempts, the latest attemptsPerInstance per instance.
//
// A redelivery is two writes: its job (an rd. message naming the new
// generation) and the state marked pending with that generation. The job
// goes first, so that no crash can leave a pending state without a job:
// a crash after the job and before the state leaves a job whose generation
// the state has not seen, and whoever takes that job records the pending
// state itself (adopt) before delivering it.

// stateRecord is a delivery's state as kept in the bucket, with what finds
// the event again.
type stateRecord struct {
	events.Delivery
	Seq        int64  `json:"seq"`
	OrgID      string `json:"orgId"`
	InstanceID string `json:"instanceId"`
	// Request names the redelivery that made this generation, so that its
	// requester tells its own write (or a worker's adoption of its job)
	// from a concurrent request's.
	Request string `json:"req,omitempty"`
}

// redelivery is the body of an rd. message.
type redelivery struct {
	EventID string `json:"eventId"`
	Seq     int64  `json:"seq"`
	Gen     int    `json:"gen"`
	Request string `json:"req,omitempty"`
}

type job struct {
	ev  *events.Event
	gen int
	msg jetstream.Msg
}

func (j *job) Event() *events.Event        { return j.ev }
func (j *job) Gen() int                    { return j.gen }
func (j *job) InProgress() error           { return j.msg.InProgress() }
func (j *job) Done() error                 { return j.msg.Ack() }
func (j *job) Retry(d time.Duration) error { return j.msg.NakWithDelay(d) }
func (j *job) Release() error              { return j.msg.Nak() }

// initStates records a pending delivery state for newly appended events,
// so that the event is found by id (redeliver, delivery state) before a
// worker takes it. Only where no state exists yet: a worker may have been
// faster. Failures are logged only; the worker writes the state anyway.
func (l *Log) initStates(ctx context.Context, evs []*events.Event) {
	if len(evs) == 0 {
		return
	}
	futures := make([]jetstream.PubAckFuture, 0, len(evs))
	for _, e := range evs {
		m := nats.NewMsg("$KV." + BucketDelivery + "." + e.ID)
		m.Data = mustJSON(stateRecord{Delivery: events.Delivery{State: events.DeliveryPending}, Seq: e.Seq, OrgID: e.OrgID, InstanceID: e.InstanceID})
		f, err := l.js.PublishMsgAsync(m, jetstream.WithExpectLastSequencePerSubject(0))
		if err != nil {
			l.log.Warn("eventlog: recording pending deliveries", "err", err)
			break
		}
		futures = append(futures, f)
	}
	for _, f := range futures {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			if !wrongLastSeq(err) {
				l.log.Warn("eventlog: recording a pending delivery", "err", err)
			}
		case <-ctx.Done():
			return
		}
	}
}

// FetchDeliveries returns at most n delivery jobs, waiting up to wait for
// the first when none is pending. A fetch of n waits until n jobs arrived
// or wait passed, so a single pending job would wait for nothing: what is
// pending is taken at once, else one job as soon as it comes.
func (l *Log) FetchDeliveries(ctx context.Context, n int, wait time.Duration) ([]events.DeliveryJob, error) {
	out, err := l.fetchDeliveries(ctx, func() (jetstream.MessageBatch, error) { return l.notify.FetchNoWait(n) })
	if err != nil || len(out) > 0 {
		return out, err
	}
	fctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	return l.fetchDeliveries(ctx, func() (jetstream.MessageBatch, error) {
		return l.notify.Fetch(1, jetstream.FetchContext(fctx))
	})
}

func (l *Log) fetchDeliveries(ctx context.Context, fetch func() (jetstream.MessageBatch, error)) ([]events.DeliveryJob, error) {
	batch, err := fetch()
	if err != nil {
		if ctx.Err() != nil {
			return nil, nil
		}
		return nil, fmt.Errorf("eventlog: fetch deliveries: %w", err)
	}
	var out []events.DeliveryJob
	for m := range batch.Messages() {
		j, err := l.jobOf(ctx, m)
		var retry *retryLater
		switch {
		case errors.As(err, &retry):
			l.log.Warn("eventlog: a delivery job waits for the log", "err", err)
			_ = m.NakWithDelay(time.Second)
		case err != nil:
			l.log.Warn("eventlog: dropping an unreadable delivery", "err", err)
			_ = m.Term()
		case j == nil:
			_ = m.Ack() // the event is gone from the log
		default:
			out = append(out, j)
		}
	}
	return out, nil
}

// retryLater is a failure to prepare a job that says nothing about the
// job: it comes back later.
type retryLater struct{ err error }

func (e *retryLater) Error() string { return e.err.Error() }
func (e *retryLater) Unwrap() error { return e.err }

func (l *Log) jobOf(ctx context.Context, m jetstream.Msg) (*job, error) {
	md, err := m.Metadata()
	if err != nil {
		return nil, err
	}
	if strings.HasPrefix(m.Subject(), prefixRedeliver+".") {
		var r redelivery
		if err := json.Unmarshal(m.Data(), &r); err != nil {
			return nil, err
		}
		ev, err := l.Event(ctx, uint64(r.Seq))
		if err != nil {
			return nil, &retryLater{err}
		}
		if ev == nil {
			return nil, nil
		}
		ok, err := l.adopt(ctx, r)
		if err != nil {
			return nil, &retryLater{err}
		}
		if !ok {
			return nil, nil
		}
		return &job{ev: ev, gen: r.Gen, msg: m}, nil
	}
	ev, err := decode(md.Sequence.Stream, m.Data())
	if err != nil {
		return nil, err
	}
	return &job{ev: ev, msg: m}, nil
}

// adopt makes sure the state has seen the redelivery's generation: when
// its requester stopped between publishing the job and recording the
// pending state (or has not recorded it yet), the state is recorded here.
// ok is false when the event has no state any more (its instance was
// deleted): the job is dropped.
func (l *Log) adopt(ctx context.Context, r redelivery) (ok bool, err error) {
	for {
		st, rev, err := l.state(ctx, r.EventID)
		if err != nil || st == nil {
			return false, err
		}
		if st.Gen >= r.Gen {
			return true, nil // recorded, or superseded (the worker decides)
		}
		next := *st
		next.Delivery = events.Delivery{State: events.DeliveryPending, Gen: r.Gen}
		next.Request = r.Request
		_, err = l.states.Update(ctx, r.EventID, mustJSON(next), rev)
		if err == nil {
			return true, nil
		}
		if !wrongLastSeq(err) {
			return false, fmt.Errorf("eventlog: redelivery: %w", err)
		}
		// The requester (or another worker) wrote meanwhile: read again.
	}
}

// wrongLastSeq reports a lost compare-and-set (R1 and replicated codes).
func wrongLastSeq(err error) bool {
	if errors.Is(err, jetstream.ErrKeyExists) {
		return true
	}
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
		apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant)
}

// DeliveryState returns an event's delivery state; ok is false when no
// worker has recorded one yet.
func (l *Log) DeliveryState(ctx context.Context, eventID string) (events.Delivery, bool, error) {
	r, rev, err := l.state(ctx, eventID)
	if err != nil || r == nil {
		return events.Delivery{}, false, err
	}
	d := r.Delivery
	d.Revision = rev
	return d, true, nil
}

func (l *Log) state(ctx context.Context, eventID string) (*stateRecord, uint64, error) {
	kv, err := l.states.Get(ctx, eventID)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, 0, nil
	}
	if err != nil {
		return nil, 0, fmt.Errorf("eventlog: delivery state: %w", err)
	}
	var r stateRecord
	if err := json.Unmarshal(kv.Value(), &r); err != nil {
		return nil, 0, fmt.Errorf("eventlog: delivery state: %w", err)
	}
	return &r, kv.Revision(), nil
}

// SetDeliveryState records an event's delivery state, read by
// DeliveryState with d.Revision: it fails (events.ErrDeliveryStateChanged)
// when anyone wrote the state since, or removed it (a deleted instance's
// states are purged, and a worker finishing late must not bring one back).
func (l *Log) SetDeliveryState(ctx context.Context, ev *events.Event, d events.Delivery) error {
	b, _ := json.Marshal(stateRecord{Delivery: d, Seq: ev.Seq, OrgID: ev.OrgID, InstanceID: ev.InstanceID})
	var err error
	if d.Revision == 0 {
		_, err = l.states.Create(ctx, ev.ID, b)
	} else {
		_, err = l.states.Update(ctx, ev.ID, b, d.Revision)
	}
	if wrongLastSeq(err) {
		return fmt.Errorf("eventlog: set delivery state: %w", events.ErrDeliveryStateChanged)
	}
	if err != nil {
		return fmt.Errorf("eventlog: set delivery state: %w", err)
	}
	return nil
}

// RecordAttempt keeps one delivery attempt.
func (l *Log) RecordAttempt(ctx context.Context, a events.Attempt) error {
	b, _ := json.Marshal(a)
	if _, err := l.js.Publish(ctx, attemptSubject(a.InstanceID), b, jetstream.WithExpectStream(StreamAttempts)); err != nil {
		return fmt.Errorf("eventlog: record attempt: %w", err)
	}
	return nil
}

// Attempts returns an instance's latest delivery attempts, newest first.
// The log keeps a bounded number per instance, so this read is bounded too.
func (l *Log) Attempts(ctx context.Context, instanceID string, limit int) ([]events.Attempt, error) {
	if limit <= 0 {
		return nil, nil
	}
	cons, err := l.attempts.CreateConsumer(ctx, jetstream.ConsumerConfig{
		FilterSubject: attemptSubject(instanceID), DeliverPolicy: jetstream.DeliverAllPolicy,
		AckPolicy: jetstream.AckNonePolicy, InactiveThreshold: time.Minute, MemoryStorage: true, Replicas: 1,
	})
	if err != nil {
		return nil, fmt.Errorf("eventlog: attempts: %w", err)
	}
	defer func() { _ = l.attempts.DeleteConsumer(context.WithoutCancel(ctx), cons.CachedInfo().Name) }()
	n := cons.CachedInfo().NumPending
	if n == 0 {
		return nil, nil
	}
	batch, err := cons.Fetch(int(n), jetstream.FetchContext(ctx))
	if err != nil {
		return nil, fmt.Errorf("eventlog: attempts: %w", err)
	}
	var out []events.Attempt
	for m := range batch.Messages() {
		var a events.Attempt
		if json.Unmarshal(m.Data(), &a) == nil {
			out = append(out, a)
		}
	}
	slices.Reverse(out)
	// Equal times (a fake clock) keep their order by attempt number.
	slices.SortStableFunc(out, func(a, b events.Attempt) int {
		if c := b.At.Compare(a.At); c != 0 {
			return c
		}
		return b.Attempt - a.Attempt
	})
	if len(out) > limit {
		out = out[:limit]
	}
	return out, nil
}

// DeliveredEvent returns an organization's event that has a delivery
// state, or events.ErrNoDelivery (never delivered yet, another
// organization's, or gone from the log).
func (l *Log) DeliveredEvent(ctx context.Context, orgID, eventID string) (*events.Event, error) {
	r, _, err := l.state(ctx, eventID)
	if err != nil {
		return nil, err
	}
	if r == nil || r.OrgID != orgID {
		return nil, events.ErrNoDelivery
	}
	ev, err := l.Event(ctx, uint64(r.Seq))
	if err != nil {
		return nil, err
	}
	if ev == nil || ev.ID != eventID {
		return nil, events.ErrNoDelivery
	}
	return ev, nil
}

// Redeliver queues an event for delivery again with a fresh set of
// attempts. The state's revision is the claim: of two concurrent calls one
// wins, the other is events.ErrDeliveryPending, as is an event whose
// delivery is pending anyway. The job is published before the state is
// marked pending (see adopt): a crash in between leaves a job that is
// delivered all the same, never a pending state that nothing delivers.
func (l *Log) Redeliver(ctx context.Context, ev *events.Event, now time.Time) error {
	r, rev, err := l.state(ctx, ev.ID)
	if err != nil {
		return err
	}
	if r == nil {
		return events.ErrNoDelivery
	}
	if r.State == events.DeliveryPending {
		return events.ErrDeliveryPending
	}
	req := redelivery{EventID: ev.ID, Seq: r.Seq, Gen: r.Gen + 1, Request: nuid.Next()}
	if err := l.publishRedelivery(ctx, r, req); err != nil {
		return err
	}
	next := *r
	next.Delivery = events.Delivery{State: events.DeliveryPending, NextAttemptAt: &now, Gen: req.Gen}
	next.Request = req.Request
	if _, err := l.states.Update(ctx, ev.ID, mustJSON(next), rev); err != nil {
		if !wrongLastSeq(err) {
			// The job is out, and its worker records the state itself.
			l.log.Warn("eventlog: redeliver: recording the pending state failed; the job records it", "event", ev.ID, "err", err)
			return nil
		}
		if cur, _, rerr := l.state(ctx, ev.ID); rerr == nil && cur != nil && cur.Gen == req.Gen && cur.Request == req.Request {
			return nil // a worker took the job first and recorded it
		}
		return events.ErrDeliveryPending
	}
	return nil
}

// publishRedelivery is Redeliver's first step: the job. Concurrent
// requests for the same generation share a message id, so the log keeps
// one job for them while they are close in time (and a second job of a
// generation is harmless: a worker finds it done).
func (l *Log) publishRedelivery(ctx context.Context, r *stateRecord, req redelivery) error {
	m := nats.NewMsg(redeliverSubject(r.OrgID, r.InstanceID))
	m.Data = mustJSON(req)
	m.Header.Set(jetstream.MsgIDHeader, fmt.Sprintf("rd-%s-%d", req.EventID, req.Gen))
	if _, err := l.js.PublishMsg(ctx, m, jetstream.WithExpectStream(StreamEvents)); err != nil {
		return fmt.Errorf("eventlog: redeliver: %w", err)
	}
	return nil
}

func mustJSON(v any) []byte {
	b, _ := json.Marshal(v)
	return b
}

// PendingDeliveries counts the deliveries not finished: waiting to be
// handed out, held by a worker, or waiting for a retry.
func (l *Log) PendingDeliveries(ctx context.Context) (int, error) {
	info, err := l.notify.Info(ctx)
	if err != nil {
		return 0, fmt.Errorf("eventlog: pending deliveries: %w", err)
	}
	return int(info.NumPending) + info.NumAckPending, nil
}
