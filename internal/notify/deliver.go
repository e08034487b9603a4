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
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/leadstream/leadstream/internal/events"
)

const (
	// maxDiscard is how much of a receiver's answer is read: enough to let
	// small answers reuse the connection, never a body worth buffering.
	maxDiscard = 4 << 10
	// maxErrLen bounds the error text stored with an attempt.
	maxErrLen = 200
	// writeTimeout bounds recording an outcome, which also runs during shutdown.
	writeTimeout = 10 * time.Second
	userAgent    = "Leadstream-Webhooks/1.0"
)

// outcome is what one handling of an event decided, kept until it is written.
type outcome struct {
	attempt      *events.Attempt // nil when nothing was sent
	attemptSaved bool
	delivery     events.Delivery
}

// handle takes one claimed event through at most one POST and records the
// outcome; it returns when the event is due again (zero: not scheduled here).
func (n *Notifier) handle(ctx context.Context, ev *events.Event) time.Time {
	if o := n.takeUnwritten(ev.ID); o != nil {
		// The last outcome never reached the store: write it, do not POST
		// again (it may have been a 2xx).
		return n.record(ctx, ev, o)
	}
	d := *ev.Delivery
	d.NextAttemptAt = nil
	if d.Attempts >= MaxAttempts {
		d.State = events.DeliveryFailed
		d.LastError = ptr(fmt.Sprintf("gave up after %d attempts", d.Attempts))
		n.observe(OutcomeGaveUp)
		return n.record(ctx, ev, &outcome{delivery: d})
	}

	target, key, ok, err := n.targets.Target(ctx, ev.InstanceID)
	if err != nil {
		if ctx.Err() != nil {
			return time.Time{} // shutting down before sending: stays pending
		}
		// Our failure, not the receiver's: retry later without using up an attempt.
		n.log.Error("notify: looking up the callback target", "instance", ev.InstanceID, "event", ev.ID, "err", err)
		next := n.o.Now().Add(n.o.RetryBase)
		d.NextAttemptAt = &next
		d.LastError = ptr("looking up the callback target failed")
		return n.record(ctx, ev, &outcome{delivery: d})
	}
	if !ok {
		d.State = events.DeliveryFailed
		d.LastError = ptr("instance no longer exists or has no callback URL")
		n.log.Info("notify: dropping delivery, no callback target", "instance", ev.InstanceID, "event", ev.ID)
		n.observe(OutcomeGaveUp)
		return n.record(ctx, ev, &outcome{delivery: d})
	}
	if ctx.Err() != nil {
		return time.Time{} // not sent yet: left pending for the next run
	}

	a, delivered := n.post(ctx, ev, target, key, d.Attempts+1)
	d.Attempts = a.Attempt
	now := n.o.Now()
	log := n.log.With("instance", ev.InstanceID, "event", ev.ID, "attempt", a.Attempt)
	switch {
	case delivered:
		d.State, d.DeliveredAt, d.LastError = events.DeliveryDelivered, &now, nil
		log.Debug("notify: delivered", "status", *a.StatusCode)
		n.observe(OutcomeDelivered)
	case d.Attempts >= MaxAttempts:
		d.State = events.DeliveryFailed
		d.LastError = ptr(fmt.Sprintf("gave up after %d attempts; last: %s", d.Attempts, *a.Error))
		log.Warn("notify: giving up", "err", *a.Error)
		n.observe(OutcomeFailedAttempt)
		n.observe(OutcomeGaveUp)
	default:
		next := now.Add(n.backoff(d.Attempts))
		d.NextAttemptAt, d.LastError = &next, a.Error
		log.Debug("notify: attempt failed", "err", *a.Error, "retryAt", next)
		n.observe(OutcomeFailedAttempt)
	}
	return n.record(ctx, ev, &outcome{attempt: &a, delivery: d})
}

// post sends the event once. The request gets its own deadline and is not
// cut by shutdown: an attempt that started is finished and recorded.
func (n *Notifier) post(ctx context.Context, ev *events.Event, target, key string, number int) (events.Attempt, bool) {
	a := events.Attempt{ID: uuid.NewString(), EventID: ev.ID, InstanceID: ev.InstanceID, Attempt: number, At: n.o.Now()}
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
		return fail(describe(err, target, n.o.AttemptTimeout))
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

// record writes an outcome: the attempt first, so whoever sees the final
// state also sees every attempt, then the delivery state. When the state
// cannot be written the outcome is kept and written before any new POST of
// the event, so a 2xx is never followed by another POST from this process.
func (n *Notifier) record(ctx context.Context, ev *events.Event, o *outcome) time.Time {
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), writeTimeout)
	defer cancel()
	if o.attempt != nil && !o.attemptSaved {
		if err := n.store.InsertAttempt(wctx, *o.attempt); err != nil {
			n.log.Error("notify: recording an attempt", "instance", ev.InstanceID, "event", ev.ID, "err", err)
		} else {
			o.attemptSaved = true
		}
	}
	if err := n.store.SetDelivery(wctx, ev.ID, o.delivery); err != nil {
		n.log.Error("notify: recording delivery state; will retry", "instance", ev.InstanceID, "event", ev.ID, "err", err)
		n.mu.Lock()
		n.unwritten[ev.ID] = o
		n.mu.Unlock()
		return time.Time{}
	}
	// An attempt whose insert failed again once the store answers is dropped
	// (it may well have been written): the delivery state is what counts.
	if o.delivery.State == events.DeliveryPending && o.delivery.NextAttemptAt != nil {
		return *o.delivery.NextAttemptAt
	}
	return time.Time{}
}

func (n *Notifier) takeUnwritten(id string) *outcome {
	n.mu.Lock()
	defer n.mu.Unlock()
	o := n.unwritten[id]
	delete(n.unwritten, id)
	return o
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

// describe turns a transport error into a short text without the URL (it
// may carry credentials in its query or user info).
func describe(err error, target string, timeout time.Duration) string {
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Sprintf("no answer within %s", timeout)
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		if ue.Timeout() {
			return fmt.Sprintf("no answer within %s", timeout)
		}
		err = ue.Err
	}
	msg := strings.ReplaceAll(err.Error(), target, "<callback URL>")
	if len(msg) > maxErrLen {
		msg = strings.ToValidUTF8(msg[:maxErrLen], "") + "…"
	}
	return msg
}

func ptr[T any](v T) *T { return &v }
