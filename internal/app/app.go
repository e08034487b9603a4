// Package app wires the gateway together: configuration, store, event log,
// broker, ingester, poller, notifier and the HTTP routes. New builds it, Run serves
// until ctx ends and then drains, Close releases what New opened.
package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/leadstream/leadstream/internal/auth"
	"github.com/leadstream/leadstream/internal/config"
	"github.com/leadstream/leadstream/internal/connect"
	"github.com/leadstream/leadstream/internal/connector"
	"github.com/leadstream/leadstream/internal/control"
	"github.com/leadstream/leadstream/internal/egress"
	"github.com/leadstream/leadstream/internal/eventlog"
	"github.com/leadstream/leadstream/internal/events"
	"github.com/leadstream/leadstream/internal/instance"
	"github.com/leadstream/leadstream/internal/lease"
	"github.com/leadstream/leadstream/internal/marketo"
	"github.com/leadstream/leadstream/internal/metrics"
	"github.com/leadstream/leadstream/internal/notify"
	"github.com/leadstream/leadstream/internal/poller"
	"github.com/leadstream/leadstream/internal/quota"
	"github.com/leadstream/leadstream/internal/secrets"
	"github.com/leadstream/leadstream/internal/store"
	"github.com/leadstream/leadstream/internal/subscribe"
	"github.com/leadstream/leadstream/internal/throttle"
)

// App is one running gateway.
type App struct {
	cfg       config.Config
	log       *slog.Logger
	stdout    io.Writer
	store     *store.Store
	evlog     *eventlog.Log
	auth      *auth.Authenticator
	broker    *events.Broker
	ingester  *events.Ingester
	notifier  *notify.Notifier
	poller    *poller.Poller
	leases    *lease.Manager
	control   *control.Bus
	requests  *control.Requests
	instances *instance.Service
	connect   *connect.Service
	conns     *connector.Registry
	metrics   *metrics.Metrics
	egress    *egress.Client
	// failures counts failed authentications per client address.
	failures *throttle.Failures
	// sse counts each organization's open SSE streams (the websocket
	// transport counts its own connections).
	sse *quota.Counter
	ln  net.Listener

	// ws serves websocket connections; Handler builds it.
	ws *subscribe.Server
	// streams is the parent of every SSE stream, ended at shutdown.
	streams    context.Context
	endStreams context.CancelFunc
}

// New opens the store and builds every part; nothing runs until Run.
func New(ctx context.Context, cfg config.Config, stdout, stderr io.Writer) (*App, error) {
	log := newLogger(cfg, stderr)
	// Listening comes first: with PORT=0 the public URL names the port the
	// system picked, and every URL handed out must carry it.
	ln, err := net.Listen("tcp", cfg.ListenAddr)
	if err != nil {
		return nil, fmt.Errorf("app: listen on %s: %w", cfg.ListenAddr, err)
	}
	if cfg.PublicURLDerived {
		cfg.PublicURL = fmt.Sprintf("http://localhost:%d", ln.Addr().(*net.TCPAddr).Port)
	}
	a := &App{cfg: cfg, log: log, stdout: stdout, conns: connector.Default(), metrics: metrics.New(), ln: ln}
	ok := false
	defer func() {
		if !ok {
			ln.Close()
		}
	}()
	a.streams, a.endStreams = context.WithCancel(context.Background())
	a.egress = egress.New(egress.Policy{MarketoHosts: cfg.MarketoHosts, Allow: cfg.EgressAllow})
	a.failures = throttle.New(cfg.Limits.AuthFailures, cfg.Limits.AuthFailureWindow, nil)
	a.sse = quota.New(cfg.Limits.SSEPerOrg)
	key := cfg.SecretKey
	if key == nil {
		if key, err = secrets.LoadOrCreateKey(cfg.DataDir); err != nil {
			return nil, fmt.Errorf("app: %w", err)
		}
	}
	box, err := secrets.NewBox(key)
	if err != nil {
		return nil, fmt.Errorf("app: %w", err)
	}
	st, err := store.Open(ctx, store.Options{URI: cfg.MongoURI, Database: cfg.MongoDatabase, DataDir: cfg.DataDir, Logger: log})
	if err != nil {
		return nil, fmt.Errorf("app: %w", err)
	}
	a.store = st
	defer func() {
		if !ok {
			st.Close(context.Background())
		}
	}()
	a.evlog, err = eventlog.Open(ctx, eventlog.Options{
		URL: cfg.NATSURL, CredsFile: cfg.NATSCreds, DataDir: cfg.DataDir, MaxAge: cfg.EventsMaxAge, Logger: log,
	})
	if err != nil {
		return nil, fmt.Errorf("app: %w", err)
	}
	defer func() {
		if !ok {
			a.evlog.Close()
		}
	}()
	if err := a.openReplicas(ctx); err != nil {
		return nil, err
	}
	a.auth = auth.New(st)
	hadOrg, err := st.HasOrganization(ctx)
	if err == nil {
		err = a.auth.Bootstrap(ctx, cfg.OrgSecret, cfg.UserSecret, stdout)
	}
	if err != nil {
		return nil, fmt.Errorf("app: %w", err)
	}
	logOrganizations(log, hadOrg, cfg.OrgSecret != "")
	verify := func(ctx context.Context, c marketo.Credentials) error {
		return marketo.VerifyCredentials(ctx, c, a.egress.Marketo())
	}
	a.broker = events.NewBroker(cfg.SubscriptionBuffer)
	a.connect = connect.New(st, box, a.conns, cfg.PublicURL, verify, a.egress, cfg.Limits.ConnectLinksPerOrg, log)
	a.instances = instance.NewService(instanceStore{st, a.evlog}, box, a.conns, a.connect, verify, a.egress, cfg.PublicURL, log, a.instanceChanged)
	a.notifier, err = notify.New(a.evlog, a.instances, a.egress.Callbacks(), notify.Options{
		RetryBase: cfg.NotifyRetryBase, Logger: log, Observe: a.metrics.Delivery,
	})
	if err != nil {
		return nil, fmt.Errorf("app: %w", err)
	}
	a.ingester = events.NewIngester(a.evlog, events.IngesterOptions{
		Logger:   log,
		Appended: func(d time.Duration, n int, src events.Source) { a.metrics.Appended(d, n, string(src)) },
	})
	limits := marketo.NewLimits(marketo.DefaultMaxCalls, marketo.DefaultWindow, marketo.DefaultMaxConcurrent)
	a.poller = poller.New(st, a.ingester, a.evlog, box, a.egress.Marketo(), poller.Options{
		MinInterval: cfg.PollerMinInterval, Limits: limits, Logger: log,
		ClientOptions: marketo.Options{Logger: log, Observe: a.metrics.MarketoCall},
		ObservePoll:   a.metrics.Poll,
		Leases:        a.leases,
		Requests:      a.requests,
	})
	a.metrics.Subscriptions(a.broker.Count)
	a.metrics.PendingDeliveries(func() (int, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		return a.evlog.PendingDeliveries(ctx)
	})
	a.metrics.Instances(a.instanceSnapshot, func(err error) { log.Warn("metrics: reading instances", "err", err) })
	ok = true
	return a, nil
}

// instanceStore is the store as the instance service sees it: an
// instance's events live in the log, and go with it.
type instanceStore struct {
	*store.Store
	log *eventlog.Log
}

// DeleteEventsOf removes a deleted instance's events from the log.
func (s instanceStore) DeleteEventsOf(ctx context.Context, instanceID string) error {
	return s.log.PurgeInstance(ctx, instanceID)
}

// instanceSnapshot counts instances by state and how long ago each polled
// one last succeeded. Both collections hold one small document per
// instance, so a scrape reads little.
func (a *App) instanceSnapshot(ctx context.Context) (metrics.InstanceSnapshot, error) {
	var s metrics.InstanceSnapshot
	ins, err := a.store.Instances(ctx, "")
	if err != nil {
		return s, err
	}
	states, err := a.store.PollStates(ctx)
	if err != nil {
		return s, err
	}
	lastOK := make(map[string]time.Time, len(states))
	for _, ps := range states {
		if ps.LastSuccessAt != nil {
			lastOK[ps.InstanceID] = *ps.LastSuccessAt
		}
	}
	now := time.Now()
	for _, in := range ins {
		switch {
		case in.Disabled:
			s.Disabled++
			continue
		case !in.Valid:
			s.Invalid++
			continue
		}
		s.Valid++
		if e, ok := in.Get(instance.KeyEventsEnabled); !ok || e.Value != "true" {
			continue
		}
		since, ok := lastOK[in.ID]
		if !ok {
			since = in.CreatedAt
		}
		s.SincePollSuccess = append(s.SincePollSuccess, now.Sub(since))
	}
	return s, nil
}

// logOrganizations says at start-up whether an organization exists and how
// to get credentials when its secrets were lost (they are stored hashed).
func logOrganizations(log *slog.Logger, hadOrg, fromEnv bool) {
	switch {
	case fromEnv:
		log.Info("organization from ORGANIZATION_SECRET and USER_SECRET is ready", "existed_before", hadOrg)
	case hadOrg:
		log.Info("an organization exists; its secrets are stored hashed and not shown again. " +
			"Lost them? Start with ORGANIZATION_SECRET and USER_SECRET set to a new pair: that organization is created " +
			"(instances stay with the organization that made them)")
	default:
		log.Info("created the first organization; its secrets were printed once on standard output")
	}
}

// instanceChanged makes every change take effect without a restart: it is
// the one place a change (created, updated, disabled, deleted, webhook
// secret or Element token rotated) reaches the caches and subscriptions.
func (a *App) instanceChanged(id string, in *store.Instance) {
	a.applyChange(id, in)
	a.broadcast(id, in)
}

// applyChange brings this replica's caches, subscriptions and poller in
// line with a change, made here or on another replica.
func (a *App) applyChange(id string, in *store.Instance) {
	a.auth.ForgetInstance(id)
	switch {
	case in == nil:
		a.broker.EndInstance(id, errInstanceDeleted)
	case in.Disabled:
		a.broker.EndInstance(id, errInstanceDisabled)
	default:
		a.broker.EndRevoked(id, in.TokenHash, errTokenRevoked)
	}
	a.poller.Refresh()
}

// Run serves HTTP and runs the poller and notifier until ctx ends, then
// shuts down gracefully: no new requests, in-flight ones finish, queued
// events are stored, and background work drains.
func (a *App) Run(ctx context.Context, ready func(addr string)) error {
	ln := a.ln
	srv := &http.Server{
		Handler:           a.Handler(),
		ReadHeaderTimeout: min(10*time.Second, a.cfg.Limits.ReadTimeout),
		IdleTimeout:       120 * time.Second,
		ErrorLog:          slog.NewLogLogger(a.log.Handler(), slog.LevelWarn),
	}
	// The live tail is in place before the first request: whatever is
	// appended from now on reaches this replica's subscribers.
	tail, err := a.evlog.StartTail(ctx, a.broker.Wants, func(e *events.Event, lag uint64) {
		if e != nil {
			a.broker.Publish(e)
		}
		a.metrics.TailLag(lag)
	})
	if err != nil {
		return fmt.Errorf("app: %w", err)
	}
	defer tail.Stop()
	bg, stopBG := context.WithCancel(context.WithoutCancel(ctx))
	defer stopBG()
	var wg sync.WaitGroup
	// The leases outlive the poller: they are released only once no poll
	// of this replica runs, so the next holder never overlaps with it.
	leaseCtx, stopLeases := context.WithCancel(context.WithoutCancel(ctx))
	leasesDone := make(chan struct{})
	go func() {
		defer close(leasesDone)
		_ = a.leases.Run(leaseCtx)
	}()
	defer func() { stopLeases(); <-leasesDone }()
	for name, run := range map[string]func(context.Context) error{
		"poller": a.poller.Run, "notifier": a.notifier.Run, "cleanup": a.cleanup,
		"control": func(ctx context.Context) error { return a.control.Run(ctx, a.remoteChange) },
	} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := run(bg); err != nil && !errors.Is(err, context.Canceled) {
				a.log.Error("background task stopped", "task", name, "err", err)
			}
		}()
	}
	a.log.Info("leadstream listening", "addr", ln.Addr().String(), "public_url", a.cfg.PublicURL, "graphiql", a.cfg.PublicURL+"/")
	if ready != nil {
		ready(ln.Addr().String())
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		stopBG()
		wg.Wait()
		return fmt.Errorf("app: serve: %w", err)
	case <-ctx.Done():
	}
	a.log.Info("shutting down")
	sctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	// Subscriptions are long-lived: they end now, while ordinary requests
	// (webhooks being stored) are left to finish.
	a.endStreams()
	a.ws.Close()
	if err := srv.Shutdown(sctx); err != nil {
		a.log.Warn("http shutdown", "err", err)
		_ = srv.Close()
	}
	stopBG()
	wg.Wait()
	a.ingester.Close()
	return nil
}

// cleanup removes expired connect requests and codes; the embedded store
// has no TTL indexes.
func (a *App) cleanup(ctx context.Context) error {
	t := time.NewTicker(time.Minute)
	defer t.Stop()
	for {
		if err := a.store.DeleteExpiredOAuth(ctx, time.Now().UTC()); err != nil && ctx.Err() == nil {
			a.log.Warn("clean expired connect codes", "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// EventLog is the gateway's event log (the benchmark seeds it directly).
func (a *App) EventLog() *eventlog.Log { return a.evlog }

// CreateOrganization creates an organization and a user with the given
// secrets (tests and the demo use it; there is no API for it yet).
func (a *App) CreateOrganization(ctx context.Context, orgSecret, userSecret string) error {
	_, err := a.auth.CreatePair(ctx, orgSecret, userSecret)
	return err
}

// Close releases the event log and the store; call it after Run returned.
func (a *App) Close() {
	_ = a.ln.Close() // in case Run never served it
	a.ingester.Close()
	a.evlog.Close()
	a.store.Close(context.Background())
}

func newLogger(cfg config.Config, w io.Writer) *slog.Logger {
	opts := &slog.HandlerOptions{Level: cfg.LogLevel}
	if cfg.LogJSON {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}
