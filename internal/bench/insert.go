package main

// The raw serial InsertOne baseline: FerretDB started exactly as the store
// starts it (internal/store startEmbedded: sqlite handler, TCP on loopback,
// direct connection), and mongo-driver's InsertOne in a loop, one document at
// a time, each shaped like a stored webhook event (events.Event, the same
// (instanceId, seq) unique index as the events collection). This is what a
// naive "store it, then answer 202" handler would do per webhook.

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/FerretDB/FerretDB/ferretdb"
	"github.com/google/uuid"
	"go.mongodb.org/mongo-driver/bson"
	"go.mongodb.org/mongo-driver/mongo"
	"go.mongodb.org/mongo-driver/mongo/options"

	"github.com/leadstream/leadstream/internal/events"
)

// InsertResult is the raw serial InsertOne baseline. It is measured in two
// windows, right before and right after the webhook ingest phases, so that
// drift of the shared machine affects both sides alike; PerSec is over both.
type InsertResult struct {
	Docs     int64     `json:"docs"`
	Seconds  float64   `json:"seconds"`
	PerSec   float64   `json:"perSec"`
	Windows  []float64 `json:"windowsPerSec"`
	DocBytes int       `json:"docBytes"`
}

type insertBench struct {
	client *mongo.Client
	coll   *mongo.Collection
	stop   func()
	inst   string
	org    string
	seq    int64
	body   func(n int) []byte
	res    InsertResult
}

func openInsertBench(ctx context.Context, dir string, body func(n int) []byte) (*insertBench, error) {
	abs, err := filepath.Abs(filepath.Join(dir, "db"))
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(abs, 0o700); err != nil {
		return nil, err
	}
	f, err := ferretdb.New(&ferretdb.Config{
		Listener:  ferretdb.ListenerConfig{TCP: "127.0.0.1:0"},
		Handler:   "sqlite",
		SQLiteURL: "file:" + abs + "/",
		Logger:    slog.New(slog.DiscardHandler),
	})
	if err != nil {
		return nil, fmt.Errorf("start FerretDB: %w", err)
	}
	fctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = f.Run(fctx) }()
	b := &insertBench{stop: func() { cancel(); <-done }, inst: uuid.NewString(), org: uuid.NewString(), body: body}
	b.client, err = mongo.Connect(ctx, options.Client().ApplyURI(f.MongoDBURI()).SetDirect(true).SetTimeout(30*time.Second))
	if err != nil {
		b.stop()
		return nil, fmt.Errorf("connect: %w", err)
	}
	b.coll = b.client.Database("leadstream").Collection("events")
	if _, err := b.coll.Indexes().CreateOne(ctx, mongo.IndexModel{
		Keys:    bson.D{{Key: "instanceId", Value: 1}, {Key: "seq", Value: 1}},
		Options: options.Index().SetUnique(true),
	}); err != nil {
		b.Close()
		return nil, fmt.Errorf("index: %w", err)
	}
	for range 50 { // warm-up: connection, first pages of the table
		if err := b.insert(ctx); err != nil {
			b.Close()
			return nil, err
		}
	}
	if raw, err := bson.Marshal(b.event()); err == nil {
		b.res.DocBytes = len(raw)
	}
	return b, nil
}

func (b *insertBench) event() *events.Event {
	b.seq++
	now := time.Now().UTC()
	return &events.Event{
		ID: uuid.NewString(), InstanceID: b.inst, OrgID: b.org, Seq: b.seq, DedupeKey: "gen:" + uuid.NewString(),
		Source: events.SourceWebhook, EventType: "WEBHOOK", ObjectType: "webhook",
		OccurredAt: now, ReceivedAt: now, Payload: b.body(int(b.seq)),
	}
}

func (b *insertBench) insert(ctx context.Context) error {
	if _, err := b.coll.InsertOne(ctx, b.event()); err != nil {
		return fmt.Errorf("insert: %w", err)
	}
	return nil
}

// run inserts serially for d and adds the window to the result.
func (b *insertBench) run(ctx context.Context, d time.Duration) (float64, error) {
	start := time.Now()
	var n int64
	for time.Since(start) < d {
		if err := b.insert(ctx); err != nil {
			return 0, err
		}
		n++
	}
	el := time.Since(start).Seconds()
	b.res.Docs += n
	b.res.Seconds += el
	b.res.PerSec = float64(b.res.Docs) / b.res.Seconds
	b.res.Windows = append(b.res.Windows, float64(n)/el)
	return float64(n) / el, nil
}

func (b *insertBench) Close() {
	if b.client != nil {
		_ = b.client.Disconnect(context.Background())
	}
	b.stop()
}
