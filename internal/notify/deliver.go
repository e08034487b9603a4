package notify

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/leadstream/leadstream/internal/egress"
	"github.com/leadstream/leadstream/internal/events"
)

const (
	// maxDiscard is how much of a receiver's answer is read: enough to let
	// small answers reuse the connection, never a body worth buffering.
	maxDiscard = 4 << 10
	// writeTimeout bounds recording an outcome, which also runs during shutdown.
	writeTimeout = 10 * time.Second
	// early is how much sooner than its state's next attempt a job may
	// come back and still be attempted (the queue's timers are not exact).
	early     = 50 * time.Millisecond
	userAgent = "Leadstream-Webhooks/1.0"
)

// handle takes one job through at most one POST and records the outcome.
func (n *Notifier) handle(ctx context.Context, j events.DeliveryJob) {
	ev := j.Event()
	log := n.log.With("instance", ev.InstanceID, "event", ev.ID)
	d, ok, err := n.queue.DeliveryState(ctx, ev.ID)
	if err == nil && !ok {
		// The append records the pending state just after the log took the
		// event, so its job can come first. The state is recorded here,
		// before any POST: an outcome is then always written over a
		// revision read, never raced by the append's own record (which
		// would send the job back and make the attempt twice).
		if err = n.queue.SetDeliveryState(ctx, ev, events.Delivery{State: events.DeliveryPending}); err == nil || errors.Is(err, events.ErrDeliveryStateChanged) {
			d, ok, err = n.queue.DeliveryState(ctx, ev.ID)
		}
	}
	if err != nil {
		if ctx.Err() == nil {
			log.Error("notify: reading delivery state", "err", err)
		}
		n.retry(j, n.o.RetryBase)
		return
	}
	if !ok {
		d = events.Delivery{State: events.DeliveryPending}
	}
	if d.Gen != j.Gen() || d.State != events.DeliveryPending {
		// Delivered, given up, or a generation a redelivery replaced: done.
		n.done(j)
		return
	}
	if d.NextAttemptAt != nil {
		if wait := d.NextAttemptAt.Sub(n.o.Now()); wait > early {
			n.retry(j, wait) // back before its time (a restart, a lost replica)
			return
		}
	}
	d.NextAttemptAt = nil
	if d.Attempts >= MaxAttempts {
		d.State = events.DeliveryFailed
		d.LastError = ptr(fmt.Sprintf("gave up after %d attempts", d.Attempts))
		n.observe(OutcomeGaveUp)
		n.finish(ctx, j, nil, d)
		return
	}
	target, key, ok, err := n.targets.Target(ctx, ev.InstanceID)
	if err != nil {
		if ctx.Err() != nil {
			n.release(j) // shutting down before sending
			return
		}
		// Our failure, not the receiver's: retry later without using up an attempt.
		log.Error("notify: looking up the callback target", "err", err)
		n.retry(j, n.o.RetryBase)
		return
	}
	if !ok {
		d.State = events.DeliveryFailed
		d.LastError = ptr("instance no longer exists or has no callback URL")
		log.Info("notify: dropping delivery, no callback target")
		n.observe(OutcomeGaveUp)
		n.finish(ctx, j, nil, d)
		return
	}
	if ctx.Err() != nil {
		n.release(j) // not sent yet: back to the queue for the next run
		return
	}
	_ = j.InProgress() // the POST may take the whole attempt timeout

	a, delivered := n.post(ctx, ev, target, key, d.Attempts+1)
	d.Attempts = a.Attempt
	now := n.o.Now()
	// Logged in aggregate (per instance and period), never a line per attempt.
	switch {
	case delivered:
		d.State, d.DeliveredAt, d.LastError = events.DeliveryDelivered, &now, nil
		n.delivered.Add(ev.InstanceID, map[string]int64{"delivered": 1}, "status", *a.StatusCode)
		n.observe(OutcomeDelivered)
	case d.Attempts >= MaxAttempts:
		d.State = events.DeliveryFailed
		d.LastError = ptr(fmt.Sprintf("gave up after %d attempts; last: %s", d.Attempts, *a.Error))
		n.failures.Add(ev.InstanceID, map[string]int64{"failed_attempts": 1, "gave_up": 1}, "event", ev.ID, "err", *a.Error)
		n.observe(OutcomeFailedAttempt)
		n.observe(OutcomeGaveUp)
	default:
		next := now.Add(n.backoff(d.Attempts))
		d.NextAttemptAt, d.LastError = &next, a.Error
		n.failures.Add(ev.InstanceID, map[string]int64{"failed_attempts": 1, "gave_up": 0}, "event", ev.ID, "err", *a.Error)
		n.observe(OutcomeFailedAttempt)
	}
	n.finish(ctx, j, &a, d)
}

// finish records an outcome, the attempt first, so whoever sees the final
// state also sees every attempt, then tells the queue: done when final,
// back after the backoff otherwise. When the state cannot be written the
// job comes back soon and the next worker decides again from what was
// recorded (at-least-once: a 2xx not recorded may be POSTed again).
func (n *Notifier) finish(ctx context.Context, j events.DeliveryJob, a *events.Attempt, d events.Delivery) {
	ev := j.Event()
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), writeTimeout)
	defer cancel()
	if a != nil {
		if err := n.queue.RecordAttempt(wctx, *a); err != nil {
			n.log.Error("notify: recording an attempt", "instance", ev.InstanceID, "event", ev.ID, "err", err)
		}
	}
	if err := n.queue.SetDeliveryState(wctx, ev, d); err != nil {
		if errors.Is(err, events.ErrDeliveryStateChanged) {
			// A redelivery asked for, or the instance deleted (its states
			// purged), since this worker read the state: the job comes
			// back at once and is decided afresh (gone with a deleted
			// instance's events).
			n.log.Debug("notify: delivery state changed meanwhile", "instance", ev.InstanceID, "event", ev.ID)
			n.retry(j, early)
			return
		}
		n.log.Error("notify: recording delivery state; will retry", "instance", ev.InstanceID, "event", ev.ID, "err", err)
		n.retry(j, n.o.RetryBase)
		return
	}
	if d.State != events.DeliveryPending {
		n.done(j)
		return
	}
	n.retry(j, d.NextAttemptAt.Sub(n.o.Now()))
}

func (n *Notifier) done(j events.DeliveryJob) {
	if err := j.Done(); err != nil {
		n.log.Warn("notify: acknowledging a delivery", "event", j.Event().ID, "err", err)
	}
}

func (n *Notifier) retry(j events.DeliveryJob, d time.Duration) {
	if err := j.Retry(max(d, time.Millisecond)); err != nil {
		n.log.Warn("notify: scheduling a retry", "event", j.Event().ID, "err", err)
	}
}

func (n *Notifier) release(j events.DeliveryJob) {
	if err := j.Release(); err != nil {
		n.log.Warn("notify: releasing a delivery", "event", j.Event().ID, "err", err)
	}
}

// post sends the event once. The request gets its own deadline and is not
// cut by shutdown: an attempt that started is finished and recorded.
func (n *Notifier) post(ctx context.Context, ev *events.Event, target, key string, number int) (events.Attempt, bool) {
	a := events.Attempt{EventID: ev.ID, InstanceID: ev.InstanceID, Attempt: number, At: n.o.Now()}
	fail := func(msg string) (events.Attempt, bool) {
		a.Error = &msg
		return a, false
	}
	body, err := json.Marshal(ev)
	if err != nil {
		return fail("encoding the event failed")
	}
	if u, err := url.Parse(target); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fail("callback URL is not an absolute http(s) URL")
	}
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), n.o.AttemptTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(actx, http.MethodPost, target, bytes.NewReader(body))
	if err != nil {
		return fail("callback URL is not usable")
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", userAgent)
	req.Header.Set("webhook-id", ev.ID)
	req.Header.Set("webhook-timestamp", strconv.FormatInt(a.At.Unix(), 10))
	if key != "" {
		req.Header.Set("webhook-signature", Sign(key, ev.ID, a.At, body))
	}

	start := time.Now()
	resp, err := n.client.Do(req)
	if err != nil {
		a.DurationMs = int(time.Since(start).Milliseconds())
		return fail(describe(err, n.o.AttemptTimeout))
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxDiscard))
	_ = resp.Body.Close()
	a.DurationMs = int(time.Since(start).Milliseconds())
	code := resp.StatusCode
	a.StatusCode = &code
	switch {
	case code >= 200 && code < 300:
		return a, true
	case code >= 300 && code < 400:
		return fail(fmt.Sprintf("redirect not followed (HTTP %d)", code))
	default:
		return fail(fmt.Sprintf("HTTP %d", code))
	}
}

// backoff is the wait after failed attempt number k: RetryBase * 4^(k-1).
func (n *Notifier) backoff(k int) time.Duration {
	shift := 2 * (k - 1)
	if shift < 0 {
		shift = 0
	}
	if n.o.RetryBase > math.MaxInt64>>shift {
		return math.MaxInt64
	}
	return n.o.RetryBase << shift
}

func (n *Notifier) observe(outcome string) {
	if n.o.Observe != nil {
		n.o.Observe(outcome)
	}
}

// describe turns a transport error into a few words of our own: never the
// URL (it may carry credentials) nor anything the receiver sent.
func describe(err error, timeout time.Duration) string {
	if msg := egress.Describe(err); msg != "timed out" {
		return msg
	}
	return fmt.Sprintf("no answer within %s", timeout)
}

func ptr[T any](v T) *T { return &v }
