package store

import (
	"context"
	"fmt"
	"time"

	"go.mongodb.org/mongo-driver/bson"
	"go.mongodb.org/mongo-driver/mongo/options"
)

// ConfigEntry is one configuration key of an instance. Keys hold dots, which
// MongoDB field names must not, so configuration is a list, not a sub-document.
type ConfigEntry struct {
	Key    string `bson:"k"`
	Value  string `bson:"v"`
	Sealed bool   `bson:"s,omitempty"` // Value is secrets.Box-sealed
}

// Instance is one provisioned Marketo instance of an organization.
type Instance struct {
	ID                string        `bson:"_id"`
	OrgID             string        `bson:"orgId"`
	Name              string        `bson:"name"`
	ConnectorKey      string        `bson:"connectorKey"`
	Tags              []string      `bson:"tags"`
	Config            []ConfigEntry `bson:"config"`
	TokenHash         string        `bson:"tokenHash"`
	WebhookSecretHash string        `bson:"webhookSecretHash"`
	Disabled          bool          `bson:"disabled"`
	Valid             bool          `bson:"valid"`
	InvalidReason     string        `bson:"invalidReason,omitempty"`
	CreatedAt         time.Time     `bson:"createdAt"`
	UpdatedAt         time.Time     `bson:"updatedAt"`
}

// Get returns the (possibly sealed) value of a configuration key.
func (i *Instance) Get(key string) (ConfigEntry, bool) {
	for _, e := range i.Config {
		if e.Key == key {
			return e, true
		}
	}
	return ConfigEntry{}, false
}

// InsertInstance stores a new instance.
func (s *Store) InsertInstance(ctx context.Context, in Instance) error {
	_, err := s.db.Collection(colInstances).InsertOne(ctx, in)
	return wrap("insert instance", err)
}

// Instance returns an instance of an organization; another organization's
// instance is ErrNotFound, exactly like a missing one.
func (s *Store) Instance(ctx context.Context, orgID, id string) (Instance, error) {
	var in Instance
	err := s.db.Collection(colInstances).FindOne(ctx, bson.D{{Key: "_id", Value: id}, {Key: "orgId", Value: orgID}}).Decode(&in)
	return in, wrap("find instance", err)
}

// InstanceByID returns an instance whatever its organization, for the
// webhook receiver and the poller, which are not called by a user.
func (s *Store) InstanceByID(ctx context.Context, id string) (Instance, error) {
	var in Instance
	err := s.db.Collection(colInstances).FindOne(ctx, bson.D{{Key: "_id", Value: id}}).Decode(&in)
	return in, wrap("find instance", err)
}

// Instances lists an organization's instances, newest first; orgID "" lists all.
func (s *Store) Instances(ctx context.Context, orgID string) ([]Instance, error) {
	filter := bson.D{}
	if orgID != "" {
		filter = bson.D{{Key: "orgId", Value: orgID}}
	}
	cur, err := s.db.Collection(colInstances).Find(ctx, filter, options.Find().SetSort(bson.D{{Key: "createdAt", Value: -1}}))
	if err != nil {
		return nil, wrap("list instances", err)
	}
	var out []Instance
	if err := cur.All(ctx, &out); err != nil {
		return nil, wrap("list instances", err)
	}
	return out, nil
}

// UpdateInstance applies change to an organization's instance (orgID ""
// for any organization) and writes it back. Updates of one instance are
// serialised in the process, because the embedded store loses concurrent
// updates of a document; the write is conditional on updatedAt so that
// replicas sharing a MongoDB cannot overwrite each other either.
func (s *Store) UpdateInstance(ctx context.Context, orgID, id string, change func(*Instance) error) (Instance, error) {
	unlock := s.locks.lock("instance:" + id)
	defer unlock()
	var in Instance
	var err error
	if orgID == "" {
		in, err = s.InstanceByID(ctx, id)
	} else {
		in, err = s.Instance(ctx, orgID, id)
	}
	if err != nil {
		return in, err
	}
	prev := in.UpdatedAt
	if err := change(&in); err != nil {
		return in, err
	}
	in.UpdatedAt = time.Now().UTC().Truncate(time.Millisecond)
	if !in.UpdatedAt.After(prev) {
		in.UpdatedAt = prev.Add(time.Millisecond)
	}
	res, err := s.db.Collection(colInstances).ReplaceOne(ctx, bson.D{{Key: "_id", Value: id}, {Key: "updatedAt", Value: prev}}, in)
	if err != nil {
		return in, wrap("update instance", err)
	}
	if res.MatchedCount == 0 {
		return in, fmt.Errorf("store: update instance %s: changed concurrently, try again", id)
	}
	return in, nil
}

// DeleteInstance removes an organization's instance and its poller state.
func (s *Store) DeleteInstance(ctx context.Context, orgID, id string) error {
	res, err := s.db.Collection(colInstances).DeleteOne(ctx, bson.D{{Key: "_id", Value: id}, {Key: "orgId", Value: orgID}})
	if err != nil {
		return wrap("delete instance", err)
	}
	if res.DeletedCount == 0 {
		return ErrNotFound
	}
	_, err = s.db.Collection(colPollStates).DeleteOne(ctx, bson.D{{Key: "_id", Value: id}})
	return wrap("delete poll state", err)
}

// InstanceByTokenHash returns the instance whose Element token has this hash.
func (s *Store) InstanceByTokenHash(ctx context.Context, hash string) (Instance, error) {
	var in Instance
	err := s.db.Collection(colInstances).FindOne(ctx, bson.D{{Key: "tokenHash", Value: hash}}).Decode(&in)
	return in, wrap("find instance by token", err)
}
