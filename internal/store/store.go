// Package store is the gateway's only access to MongoDB: one file per
// collection, plus the embedded FerretDB (SQLite) used when no MONGODB_URI is
// given.
//
// On the embedded store concurrent updates of one document lose writes, while
// unique-index inserts are exact. So every exclusive claim here is an insert
// with a unique key, and every read-modify-write has one writer in the process.
package store

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/FerretDB/FerretDB/ferretdb"
	"go.mongodb.org/mongo-driver/bson"
	"go.mongodb.org/mongo-driver/mongo"
	"go.mongodb.org/mongo-driver/mongo/options"
	"go.mongodb.org/mongo-driver/mongo/readpref"
)

// ErrNotFound means the document does not exist (or belongs to another organization).
var ErrNotFound = errors.New("store: not found")

// ErrDuplicate means a unique key is already taken.
var ErrDuplicate = errors.New("store: duplicate key")

// Options says which database to open.
type Options struct {
	URI      string // MongoDB URI; empty starts the embedded store in DataDir
	Database string
	DataDir  string
	Logger   *slog.Logger
}

// Store is an open database.
type Store struct {
	client *mongo.Client
	db     *mongo.Database

	stopEmbedded func()
	locks        keyedMutex
}

// ferretMu serialises embedded start-ups: ferretdb.New writes a package-level
// version field, which races when tests start stores in parallel.
var ferretMu sync.Mutex

// Open connects to MongoDB, or starts the embedded FerretDB on DataDir, and
// makes sure every index exists.
func Open(ctx context.Context, o Options) (*Store, error) {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Database == "" {
		o.Database = "leadstream"
	}
	s := &Store{}
	uri := o.URI
	if uri == "" {
		var err error
		uri, s.stopEmbedded, err = startEmbedded(o.DataDir, o.Logger)
		if err != nil {
			return nil, err
		}
	}
	copts := options.Client().ApplyURI(uri).SetMaxPoolSize(64).SetTimeout(30 * time.Second)
	if o.URI == "" {
		copts.SetDirect(true)
	}
	client, err := mongo.Connect(ctx, copts)
	if err != nil {
		s.Close(context.Background())
		return nil, fmt.Errorf("store: connect: %w", err)
	}
	s.client, s.db = client, client.Database(o.Database)
	if err := s.Ping(ctx); err != nil {
		s.Close(context.Background())
		return nil, err
	}
	if err := s.ensureIndexes(ctx); err != nil {
		s.Close(context.Background())
		return nil, err
	}
	return s, nil
}

// StartEmbedded runs FerretDB (SQLite) on dir as a MongoDB wire-protocol
// server on a free local port and returns its URI and a stop function. Open
// uses it when no URI is given; tests use it to stand in for an external
// MongoDB.
func StartEmbedded(dir string, log *slog.Logger) (uri string, stop func(), err error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return startEmbedded(dir, log)
}

func startEmbedded(dir string, log *slog.Logger) (string, func(), error) {
	if dir == "" {
		return "", nil, errors.New("store: DATA_DIR is empty")
	}
	abs, err := filepath.Abs(filepath.Join(dir, "db"))
	if err != nil {
		return "", nil, fmt.Errorf("store: %w", err)
	}
	if err := os.MkdirAll(abs, 0o700); err != nil {
		return "", nil, fmt.Errorf("store: create %s: %w", abs, err)
	}
	flog := slog.New(quiet{next: log.Handler()}).With("component", "ferretdb")
	ferretMu.Lock()
	f, err := ferretdb.New(&ferretdb.Config{
		Listener:  ferretdb.ListenerConfig{TCP: "127.0.0.1:0"},
		Handler:   "sqlite",
		SQLiteURL: "file:" + abs + "/",
		Logger:    flog,
	})
	ferretMu.Unlock()
	if err != nil {
		return "", nil, fmt.Errorf("store: start embedded FerretDB in %s: %w", abs, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = f.Run(ctx)
	}()
	stop := func() { cancel(); <-done }
	uri := f.MongoDBURI()
	return uri, stop, nil
}

// quiet passes on only FerretDB's errors: it logs every connection at info
// and harmless protocol gaps (endSessions) at warn. FerretDB also derives a
// logger (With) for every SQL statement, so attributes are kept as they are
// and only formatted for a record that is actually written.
type quiet struct {
	next  slog.Handler
	steps []func(slog.Handler) slog.Handler
}

func (q quiet) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= slog.LevelError && q.next.Enabled(ctx, l)
}

func (q quiet) Handle(ctx context.Context, r slog.Record) error {
	h := q.next
	for _, step := range q.steps {
		h = step(h)
	}
	return h.Handle(ctx, r)
}

func (q quiet) WithAttrs(as []slog.Attr) slog.Handler {
	return quiet{next: q.next, steps: append(q.steps[:len(q.steps):len(q.steps)], func(h slog.Handler) slog.Handler { return h.WithAttrs(as) })}
}

func (q quiet) WithGroup(name string) slog.Handler {
	return quiet{next: q.next, steps: append(q.steps[:len(q.steps):len(q.steps)], func(h slog.Handler) slog.Handler { return h.WithGroup(name) })}
}

// Ping checks that the database answers; /readyz uses it.
func (s *Store) Ping(ctx context.Context) error {
	if err := s.client.Ping(ctx, readpref.Primary()); err != nil {
		return fmt.Errorf("store: ping: %w", err)
	}
	return nil
}

// Close disconnects and stops the embedded store, if any.
func (s *Store) Close(ctx context.Context) {
	if s.client != nil {
		_ = s.client.Disconnect(ctx)
	}
	if s.stopEmbedded != nil {
		s.stopEmbedded()
	}
}

func (s *Store) ensureIndexes(ctx context.Context) error {
	unique := options.Index().SetUnique(true)
	idx := map[string][]mongo.IndexModel{
		colOrganizations: {{Keys: bson.D{{Key: "secretHash", Value: 1}}, Options: unique}},
		colUsers:         {{Keys: bson.D{{Key: "secretHash", Value: 1}}, Options: unique}},
		colInstances:     {{Keys: bson.D{{Key: "orgId", Value: 1}, {Key: "createdAt", Value: -1}}}, {Keys: bson.D{{Key: "tokenHash", Value: 1}}}},
		colOAuthCodes:    {{Keys: bson.D{{Key: "expiresAt", Value: 1}}}},
		colOAuthRequests: {{Keys: bson.D{{Key: "expiresAt", Value: 1}}}},
	}
	for col, models := range idx {
		if err := s.ensureIndexesOf(ctx, col, models); err != nil {
			return err
		}
	}
	return nil
}

// ensureIndexesOf creates a collection's missing indexes. Only missing ones
// are created: FerretDB's sqlite handler fails on re-creating an existing
// compound index. Replicas starting together race to create them, and
// FerretDB may drop the connection of the one that loses, so a failure is
// retried a few times and counts as done once the indexes are there.
func (s *Store) ensureIndexesOf(ctx context.Context, col string, models []mongo.IndexModel) error {
	const attempts = 5
	var err error
	for i := range attempts {
		if i > 0 {
			select {
			case <-ctx.Done():
				return fmt.Errorf("store: indexes of %s: %w", col, ctx.Err())
			case <-time.After(time.Duration(i) * 100 * time.Millisecond):
			}
		}
		var have map[string]bool
		if have, err = s.indexKeys(ctx, col); err != nil {
			continue
		}
		var missing []mongo.IndexModel
		for _, m := range models {
			if !have[keyString(m.Keys.(bson.D))] {
				missing = append(missing, m)
			}
		}
		if len(missing) == 0 {
			return nil
		}
		if _, err = s.db.Collection(col).Indexes().CreateMany(ctx, missing); err == nil {
			return nil
		}
	}
	return fmt.Errorf("store: indexes of %s: %w", col, err)
}

func (s *Store) indexKeys(ctx context.Context, col string) (map[string]bool, error) {
	cur, err := s.db.Collection(col).Indexes().List(ctx)
	if err != nil {
		return nil, fmt.Errorf("store: list indexes of %s: %w", col, err)
	}
	var specs []struct {
		Key bson.D `bson:"key"`
	}
	if err := cur.All(ctx, &specs); err != nil {
		return nil, fmt.Errorf("store: list indexes of %s: %w", col, err)
	}
	have := map[string]bool{}
	for _, sp := range specs {
		have[keyString(sp.Key)] = true
	}
	return have, nil
}

func keyString(d bson.D) string {
	s := ""
	for _, e := range d {
		s += fmt.Sprintf("%s:%v,", e.Key, e.Value)
	}
	return s
}

const (
	colOrganizations = "organizations"
	colUsers         = "users"
	colInstances     = "instances"
	colOAuthRequests = "oauth_requests"
	colOAuthCodes    = "oauth_codes"
	colRedemptions   = "oauth_redemptions"
	colOAuthClaims   = "oauth_claims"
	colCredentials   = "credentials"
	colPollStates    = "poll_states"
)

func wrap(op string, err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, mongo.ErrNoDocuments):
		return ErrNotFound
	case mongo.IsDuplicateKeyError(err):
		return fmt.Errorf("store: %s: %w", op, ErrDuplicate)
	}
	return fmt.Errorf("store: %s: %w", op, err)
}

// keyedMutex gives one writer per key inside the process, for the
// read-modify-writes the embedded store cannot make atomic.
type keyedMutex struct {
	mu    sync.Mutex
	locks map[string]*refMutex
}

type refMutex struct {
	sync.Mutex
	refs int
}

func (k *keyedMutex) lock(key string) func() {
	k.mu.Lock()
	if k.locks == nil {
		k.locks = map[string]*refMutex{}
	}
	m := k.locks[key]
	if m == nil {
		m = &refMutex{}
		k.locks[key] = m
	}
	m.refs++
	k.mu.Unlock()
	m.Lock()
	return func() {
		m.Unlock()
		k.mu.Lock()
		m.refs--
		if m.refs == 0 {
			delete(k.locks, key)
		}
		k.mu.Unlock()
	}
}
