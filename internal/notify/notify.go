// Package notify delivers logged events to their instance's callback URL:
// signed per Standard Webhooks, retried with exponential backoff, every
// attempt recorded. The queue is the event log's durable delivery consumer,
// shared by every replica: each job is held by one worker at a time, a job
// whose worker died is handed out again, and an event's delivery state says
// what happened so far (attempts, final outcome), so a restarted or other
// replica resumes where the last one stopped. Delivery is at-least-once.
package notify

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/leadstream/leadstream/internal/events"
	"github.com/leadstream/leadstream/internal/logsummary"
)

// MaxAttempts bounds the POSTs of one event: the first one plus 9 retries.
const MaxAttempts = 10

// Outcomes passed to Options.Observe.
const (
	OutcomeDelivered     = "delivered"
	OutcomeFailedAttempt = "failed_attempt"
	OutcomeGaveUp        = "gave_up"
)

// Queue is the delivery side of the event log; *eventlog.Log has it.
type Queue interface {
	// FetchDeliveries waits up to wait for at most n jobs.
	FetchDeliveries(ctx context.Context, n int, wait time.Duration) ([]events.DeliveryJob, error)
	DeliveryState(ctx context.Context, eventID string) (events.Delivery, bool, error)
	// SetDeliveryState writes d back over the state DeliveryState read
	// (d.Revision); events.ErrDeliveryStateChanged when it changed since.
	SetDeliveryState(ctx context.Context, ev *events.Event, d events.Delivery) error
	RecordAttempt(ctx context.Context, a events.Attempt) error
}

// Targets says where an instance's events go, read at each attempt so a
// changed or removed callback URL applies to queued events too. ok is false
// when the instance no longer exists or has no callback URL.
type Targets interface {
	Target(ctx context.Context, instanceID string) (url, signatureKey string, ok bool, err error)
}

// Options tunes a Notifier; zero values take the defaults.
type Options struct {
	RetryBase      time.Duration // NOTIFY_RETRY_BASE, default 4s: retry n waits RetryBase * 4^(n-1)
	AttemptTimeout time.Duration // default 10s per attempt
	Workers        int           // concurrent deliveries, default 8
	// FetchWait is how long one fetch from the queue waits for jobs
	// (default 1s); it bounds how long Run takes to notice shutdown.
	FetchWait time.Duration
	Logger    *slog.Logger
	// Observe, when set, is called once per outcome: OutcomeDelivered,
	// OutcomeFailedAttempt (each failed POST), OutcomeGaveUp (the event is
	// FAILED: attempts exhausted or no target). It must not block.
	Observe func(outcome string)
	Now     func() time.Time // default time.Now
}

// Notifier delivers pending events; Run drives it.
type Notifier struct {
	queue   Queue
	targets Targets
	o       Options
	client  *http.Client
	log     *slog.Logger

	running atomic.Bool

	// failures and delivered log attempts in aggregate, never one line each.
	failures, delivered *logsummary.Summary
}

// SummaryEvery is how often at most the notifier logs its delivery summaries.
const SummaryEvery = time.Minute

// ErrNoHTTPClient: New was given no HTTP client. There is no default: a
// callback leaves through the egress client, which refuses internal
// addresses.
var ErrNoHTTPClient = errors.New("notify: no HTTP client given")

// New prepares a Notifier whose POSTs go through httpClient (the egress
// callbacks client; Run closes its idle connections on return). Its
// CheckRedirect is replaced in a copy: a redirect is never followed and
// counts as a failed attempt. Nothing runs until Run.
func New(q Queue, t Targets, httpClient *http.Client, o Options) (*Notifier, error) {
	if httpClient == nil {
		return nil, ErrNoHTTPClient
	}
	if o.RetryBase <= 0 {
		o.RetryBase = 4 * time.Second
	}
	if o.AttemptTimeout <= 0 {
		o.AttemptTimeout = 10 * time.Second
	}
	if o.Workers <= 0 {
		o.Workers = 8
	}
	if o.FetchWait <= 0 {
		o.FetchWait = time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	c := *httpClient
	client := &c
	client.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	log := o.Logger.With("component", "notify")
	return &Notifier{queue: q, targets: t, o: o, client: client, log: log,
		failures:  logsummary.New(log, slog.LevelWarn, "notify: callback deliveries failing", SummaryEvery),
		delivered: logsummary.New(log, slog.LevelDebug, "notify: delivered", SummaryEvery),
	}, nil
}

// Run delivers until ctx ends, then waits for the attempts in flight: each
// is completed and recorded; jobs not started yet go back to the queue. It
// returns nil after a shutdown; one Notifier runs once at a time.
func (n *Notifier) Run(ctx context.Context) error {
	if !n.running.CompareAndSwap(false, true) {
		return errors.New("notify: Run is already running")
	}
	defer n.running.Store(false)
	defer n.client.CloseIdleConnections() // after the drain below: no keep-alive goroutines outlive Run
	defer n.delivered.Flush()
	defer n.failures.Flush()

	var wg sync.WaitGroup
	defer wg.Wait()
	slots := make(chan struct{}, n.o.Workers)
	for ctx.Err() == nil {
		// Fetch only as many jobs as there are free workers: a job fetched
		// is held, and one held while waiting would delay it for nothing.
		slots <- struct{}{}
		free := 1
	more:
		for free < n.o.Workers {
			select {
			case slots <- struct{}{}:
				free++
			default:
				break more
			}
		}
		jobs, err := n.queue.FetchDeliveries(ctx, free, n.o.FetchWait)
		if err != nil && ctx.Err() == nil {
			n.log.Error("notify: fetching deliveries", "err", err)
			pause(ctx, n.o.FetchWait)
		}
		for i := len(jobs); i < free; i++ {
			<-slots
		}
		for _, j := range jobs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() { <-slots }()
				n.handle(ctx, j)
			}()
		}
	}
	return nil
}

func pause(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
