package control

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Requests keeps the polls asked for on one replica for another (pollNow
// on a replica that does not hold the instance's Marketo lease) in a
// JetStream KV bucket, one key per instance, until a poll of it finished.
// A control message reaches the holder of the moment; a request in the
// bucket also reaches whoever holds the lease next, should it move first.
type Requests struct {
	kv jetstream.KeyValue
}

// Defaults for RequestsOptions fields left zero.
const (
	DefaultRequestsBucket = "poll_requests"
	// DefaultRequestsTTL drops a request nobody honoured (its instance no
	// longer pollable): well above a lease move (about 40 s).
	DefaultRequestsTTL = 5 * time.Minute
)

// RequestsOptions tune OpenRequests.
type RequestsOptions struct {
	Bucket   string        // default "poll_requests"
	TTL      time.Duration // default 5 min
	Replicas int           // the bucket's replica count: the event log's (default 1)
}

// OpenRequests creates or updates the bucket.
func OpenRequests(ctx context.Context, js jetstream.JetStream, o RequestsOptions) (*Requests, error) {
	if o.Bucket == "" {
		o.Bucket = DefaultRequestsBucket
	}
	if o.TTL <= 0 {
		o.TTL = DefaultRequestsTTL
	}
	if o.Replicas <= 0 {
		o.Replicas = 1
	}
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      o.Bucket,
		Description: "leadstream: polls asked for, until one ran",
		History:     1,
		TTL:         o.TTL,
		Replicas:    o.Replicas,
		Storage:     jetstream.FileStorage,
	})
	if err != nil {
		return nil, fmt.Errorf("control: bucket %s: %w", o.Bucket, err)
	}
	return &Requests{kv: kv}, nil
}

// Add records a poll asked for.
func (r *Requests) Add(ctx context.Context, instanceID string) error {
	if _, err := r.kv.Put(ctx, requestKey(instanceID), []byte(time.Now().UTC().Format(time.RFC3339Nano))); err != nil {
		return fmt.Errorf("control: record poll request: %w", err)
	}
	return nil
}

// Pending returns the instances with a poll asked for.
func (r *Requests) Pending(ctx context.Context) ([]string, error) {
	keys, err := r.kv.ListKeys(ctx)
	if err != nil {
		return nil, fmt.Errorf("control: poll requests: %w", err)
	}
	defer func() { _ = keys.Stop() }()
	var ids []string
	for k := range keys.Keys() {
		if id, ok := instanceOf(k); ok {
			ids = append(ids, id)
		}
	}
	return ids, nil
}

// Done removes an instance's request once a poll of it finished.
func (r *Requests) Done(ctx context.Context, instanceID string) error {
	if err := r.kv.Purge(ctx, requestKey(instanceID)); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
		return fmt.Errorf("control: poll request done: %w", err)
	}
	return nil
}

// requestKey makes any instance id a valid KV key.
func requestKey(instanceID string) string {
	return "i" + base64.RawURLEncoding.EncodeToString([]byte(instanceID))
}

func instanceOf(key string) (string, bool) {
	b, err := base64.RawURLEncoding.DecodeString(strings.TrimPrefix(key, "i"))
	return string(b), err == nil && strings.HasPrefix(key, "i")
}
