// Package eventlog keeps the event log in NATS JetStream: every event in
// order on one stream, read by subject from a cursor, tailed live, and the
// callback deliveries (a durable consumer, their state in a key-value
// bucket, their attempts in a second stream). By default a NATS server runs
// inside the process with its files under DATA_DIR; with a URL the log
// lives in an external JetStream cluster.
package eventlog

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Names of what the log creates in JetStream.
const (
	StreamEvents   = "LEADSTREAM_EVENTS"
	StreamAttempts = "LEADSTREAM_ATTEMPTS"
	BucketDelivery = "leadstream_deliveries"
	// BucketLog holds what the log knows about itself (where purges moved
	// the start of the event stream).
	BucketLog      = "leadstream_log"
	ConsumerNotify = "leadstream_notify"
)

// Defaults for Options left zero.
const (
	DefaultMaxAge          = 720 * time.Hour
	DefaultDuplicateWindow = 2 * time.Minute
	DefaultAckWait         = 30 * time.Second
	// attemptsPerInstance bounds the attempts kept per instance, so that
	// reading the latest ones never grows with the events stored.
	attemptsPerInstance = 1000
)

// Options configure Open.
type Options struct {
	// URL of an external NATS (JetStream) cluster; empty runs a server
	// embedded in the process, with its files under DataDir/nats.
	URL       string
	CredsFile string // NATS .creds file for URL
	DataDir   string
	// MaxAge bounds how long events are kept (EVENTS_MAX_AGE).
	MaxAge time.Duration
	// DuplicateWindow is JetStream's de-duplication window for message ids.
	// Nothing relies on it for correctness; tests shorten it to prove that.
	DuplicateWindow time.Duration
	// AckWait is how long a delivery may run before JetStream hands it to
	// another worker; above the 10 s callback timeout.
	AckWait time.Duration
	Logger  *slog.Logger
}

// Log is an open event log. Its methods are safe for concurrent use.
type Log struct {
	opts     Options
	log      *slog.Logger
	ns       *server.Server // nil with an external cluster
	nc       *nats.Conn
	js       jetstream.JetStream
	events   jetstream.Stream
	attempts jetstream.Stream
	states   jetstream.KeyValue
	meta     jetstream.KeyValue
	notify   jetstream.Consumer
	replicas int
	closed   chan struct{} // closed when the connection is

	closeOnce sync.Once
}

// Open connects to (or starts) the NATS server and makes sure the streams,
// the bucket and the delivery consumer exist with the configured retention.
func Open(ctx context.Context, o Options) (*Log, error) {
	if o.MaxAge <= 0 {
		o.MaxAge = DefaultMaxAge
	}
	if o.DuplicateWindow <= 0 {
		o.DuplicateWindow = DefaultDuplicateWindow
	}
	o.DuplicateWindow = min(o.DuplicateWindow, o.MaxAge)
	if o.AckWait <= 0 {
		o.AckWait = DefaultAckWait
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	l := &Log{opts: o, log: o.Logger.With("component", "eventlog"), closed: make(chan struct{})}
	onClosed := nats.ClosedHandler(func(*nats.Conn) { close(l.closed) })
	var err error
	if o.URL == "" {
		if l.ns, err = startEmbedded(o.DataDir); err != nil {
			return nil, err
		}
		l.nc, err = nats.Connect("", nats.InProcessServer(l.ns), nats.Name("leadstream"), nats.MaxReconnects(-1), onClosed)
	} else {
		opts := []nats.Option{nats.Name("leadstream"), nats.MaxReconnects(-1), onClosed,
			nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
				if err != nil {
					l.log.Warn("eventlog: disconnected from NATS", "err", err)
				}
			}),
			nats.ReconnectHandler(func(nc *nats.Conn) { l.log.Info("eventlog: reconnected to NATS", "url", nc.ConnectedUrlRedacted()) }),
		}
		if o.CredsFile != "" {
			opts = append(opts, nats.UserCredentials(o.CredsFile))
		}
		l.nc, err = nats.Connect(o.URL, opts...)
	}
	if err != nil {
		l.Close()
		return nil, fmt.Errorf("eventlog: connect to NATS: %w", err)
	}
	l.js, err = jetstream.New(l.nc, jetstream.WithPublishAsyncMaxPending(8192), jetstream.WithPublishAsyncTimeout(30*time.Second))
	if err != nil {
		l.Close()
		return nil, fmt.Errorf("eventlog: %w", err)
	}
	if err := l.ensure(ctx); err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}

func startEmbedded(dataDir string) (*server.Server, error) {
	if dataDir == "" {
		return nil, errors.New("eventlog: a data directory is needed for the embedded NATS server")
	}
	ns, err := server.NewServer(&server.Options{
		ServerName: "leadstream",
		JetStream:  true,
		StoreDir:   filepath.Join(dataDir, "nats"),
		DontListen: true,
		NoSigs:     true,
		NoLog:      true,
		// Bigger than a 1 MiB webhook body plus its metadata.
		MaxPayload: 2 << 20,
	})
	if err != nil {
		return nil, fmt.Errorf("eventlog: embedded NATS server: %w", err)
	}
	ns.Start()
	if !ns.ReadyForConnections(30 * time.Second) {
		ns.Shutdown()
		return nil, errors.New("eventlog: embedded NATS server did not start within 30s")
	}
	return ns, nil
}

// ensure creates or updates everything the log uses. Streams get three
// replicas when the cluster can hold them, one otherwise: JetStream refuses
// R3 on a single server or a two-node cluster with a definite API error,
// and only that refusal makes the log fall back to one replica. Anything
// else (a timeout or no responders while a cluster is still forming or
// electing a leader) is waited out until ctx ends, so that replicas that
// start together all end up on the same R3 streams.
func (l *Log) ensure(ctx context.Context) error {
	l.replicas = 1
	if l.ns == nil {
		l.replicas = 3
	}
	for {
		err := l.Retry(ctx, "creating the streams", func(ctx context.Context) error { return l.ensureWith(ctx, l.replicas) })
		if err == nil {
			return nil
		}
		if l.replicas == 1 || !refusesReplicas(err) {
			return err
		}
		l.log.Info("eventlog: the cluster refuses three replicas; using one", "err", err)
		l.replicas = 1
	}
}

// refusesReplicas reports JetStream's definite answers that a stream
// cannot have the replicas asked for.
func refusesReplicas(err error) bool {
	var apiErr *jetstream.APIError
	if !errors.As(err, &apiErr) {
		return false
	}
	switch apiErr.ErrorCode {
	case errCodeNoPeers, errCodeInsufficientResources, errCodeReplicasNotSupported:
		return true
	}
	return false
}

// JetStream API error codes (nats-server's jetstream_errors_generated.go)
// that nats.go has no names for.
const (
	errCodeNoPeers               jetstream.ErrorCode = 10005 // no suitable peers for placement
	errCodeClusterNotAvailable   jetstream.ErrorCode = 10008 // JetStream system temporarily unavailable
	errCodeClusterNotLeader      jetstream.ErrorCode = 10009 // cluster can not handle request
	errCodeInsufficientResources jetstream.ErrorCode = 10023
	errCodeReplicasNotSupported  jetstream.ErrorCode = 10074 // replicas > 1 in non-clustered mode
)

// retryable reports failures of a JetStream API call that say nothing
// about the request: no answer (timeout, no responders, the connection
// away), or a cluster without a leader for the moment. A concurrent
// creator's "name in use" is one too: the next round updates instead.
func retryable(err error) bool {
	var apiErr *jetstream.APIError
	if !errors.As(err, &apiErr) {
		return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout) ||
			errors.Is(err, nats.ErrNoResponders) || errors.Is(err, jetstream.ErrNoStreamResponse) ||
			errors.Is(err, nats.ErrConnectionReconnecting) || errors.Is(err, nats.ErrDisconnected)
	}
	switch apiErr.ErrorCode {
	case errCodeClusterNotAvailable, errCodeClusterNotLeader, jetstream.JSErrCodeStreamNameInUse:
		return true
	}
	return false
}

// Retry runs create until it succeeds, fails with a definite answer from
// JetStream, or ctx ends; failures that say nothing about the request
// (see retryable) are retried with a bounded exponential backoff. Leases
// and the control stream are created through it too.
func (l *Log) Retry(ctx context.Context, what string, create func(ctx context.Context) error) error {
	for wait := 100 * time.Millisecond; ; wait = min(2*wait, 5*time.Second) {
		err := create(ctx)
		if err == nil || !retryable(err) || ctx.Err() != nil {
			return err
		}
		l.log.Info("eventlog: JetStream not ready; retrying", "what", what, "in", wait, "err", err)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("eventlog: %s: %w (last: %w)", what, ctx.Err(), err)
		case <-t.C:
		}
	}
}

func (l *Log) ensureWith(ctx context.Context, replicas int) error {
	var err error
	l.events, err = l.js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:               StreamEvents,
		Description:        "Leadstream: every event, in order",
		Subjects:           []string{prefixEvent + ".>", prefixRedeliver + ".>"},
		Storage:            jetstream.FileStorage,
		Retention:          jetstream.LimitsPolicy,
		MaxAge:             l.opts.MaxAge,
		Duplicates:         l.opts.DuplicateWindow,
		Replicas:           replicas,
		AllowDirect:        true,
		AllowAtomicPublish: true,
		Discard:            jetstream.DiscardOld,
	})
	if err != nil {
		return fmt.Errorf("eventlog: stream %s: %w", StreamEvents, err)
	}
	l.attempts, err = l.js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:              StreamAttempts,
		Description:       "Leadstream: callback delivery attempts, the latest per instance",
		Subjects:          []string{prefixAttempt + ".>"},
		Storage:           jetstream.FileStorage,
		MaxAge:            l.opts.MaxAge,
		MaxMsgsPerSubject: attemptsPerInstance,
		Replicas:          replicas,
		AllowDirect:       true,
	})
	if err != nil {
		return fmt.Errorf("eventlog: stream %s: %w", StreamAttempts, err)
	}
	l.states, err = l.js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      BucketDelivery,
		Description: "Leadstream: callback delivery state by event id",
		History:     1,
		TTL:         l.opts.MaxAge,
		Storage:     jetstream.FileStorage,
		Replicas:    replicas,
	})
	if err != nil {
		return fmt.Errorf("eventlog: bucket %s: %w", BucketDelivery, err)
	}
	l.meta, err = l.js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      BucketLog,
		Description: "Leadstream: facts about the event log (where purges moved its start)",
		History:     1,
		TTL:         l.opts.MaxAge,
		Storage:     jetstream.FileStorage,
		Replicas:    replicas,
	})
	if err != nil {
		return fmt.Errorf("eventlog: bucket %s: %w", BucketLog, err)
	}
	l.notify, err = l.events.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{
		Durable:        ConsumerNotify,
		Description:    "Leadstream: callback deliveries, shared by every replica",
		FilterSubjects: []string{prefixEvent + ".*.*.*.*.*." + tokenCallback, prefixRedeliver + ".>"},
		DeliverPolicy:  jetstream.DeliverAllPolicy,
		AckPolicy:      jetstream.AckExplicitPolicy,
		AckWait:        l.opts.AckWait,
		// Attempts are counted in the delivery state, not by JetStream:
		// a restart or a lost replica must not use one up.
		MaxDeliver: -1,
		// Events waiting for a retry are pending acks; a receiver down for
		// days must not stop deliveries to everyone else.
		MaxAckPending: -1,
		Replicas:      replicas,
	})
	if err != nil {
		return fmt.Errorf("eventlog: consumer %s: %w", ConsumerNotify, err)
	}
	return nil
}

// Conn is the log's NATS connection, for other users of the cluster
// (leases, the control subject).
func (l *Log) Conn() *nats.Conn { return l.nc }

// JetStream is the log's JetStream context.
func (l *Log) JetStream() jetstream.JetStream { return l.js }

// Replicas is how many replicas the log's streams were created with.
func (l *Log) Replicas() int { return l.replicas }

// Ping checks that the log answers.
func (l *Log) Ping(ctx context.Context) error {
	if !l.nc.IsConnected() {
		return errors.New("eventlog: not connected to NATS")
	}
	if _, err := l.events.Info(ctx); err != nil {
		return fmt.Errorf("eventlog: ping: %w", err)
	}
	return nil
}

// Close flushes and closes the connection and stops the embedded server.
func (l *Log) Close() {
	l.closeOnce.Do(func() {
		if l.nc != nil {
			// Drain lets acknowledgements in flight arrive before closing.
			if err := l.nc.Drain(); err == nil {
				select {
				case <-l.closed:
				case <-time.After(10 * time.Second):
				}
			}
			l.nc.Close()
		}
		if l.ns != nil {
			l.ns.Shutdown()
			l.ns.WaitForShutdown()
		}
	})
}
