package store

import (
	"context"
	"time"

	"go.mongodb.org/mongo-driver/bson"
	"go.mongodb.org/mongo-driver/mongo/options"
)

// PollState is where the poller stands for one instance. Only that
// instance's poll (one at a time) writes it.
type PollState struct {
	InstanceID     string     `bson:"_id"`
	NextPageToken  string     `bson:"nextPageToken"`
	LastPollAt     *time.Time `bson:"lastPollAt,omitempty"`
	LastSuccessAt  *time.Time `bson:"lastSuccessAt,omitempty"`
	LastError      string     `bson:"lastError,omitempty"`
	EventsIngested int64      `bson:"eventsIngested"`
	// LogSeq is the log's sequence of the last page appended when this
	// state was saved: a later page in the log means the log is ahead.
	LogSeq int64 `bson:"logSeq"`
	// PausedUntil stops polling until then (Marketo's daily quota, 607).
	PausedUntil *time.Time `bson:"pausedUntil,omitempty"`
}

// PollState returns an instance's poll state; ErrNotFound before its first poll.
func (s *Store) PollState(ctx context.Context, instanceID string) (PollState, error) {
	var p PollState
	err := s.db.Collection(colPollStates).FindOne(ctx, bson.D{{Key: "_id", Value: instanceID}}).Decode(&p)
	return p, wrap("find poll state", err)
}

// SavePollState writes an instance's poll state.
func (s *Store) SavePollState(ctx context.Context, p PollState) error {
	_, err := s.db.Collection(colPollStates).ReplaceOne(ctx, bson.D{{Key: "_id", Value: p.InstanceID}}, p, options.Replace().SetUpsert(true))
	return wrap("save poll state", err)
}

// PollStates returns every instance's poll state (one small document per
// instance; read by /metrics).
func (s *Store) PollStates(ctx context.Context) ([]PollState, error) {
	cur, err := s.db.Collection(colPollStates).Find(ctx, bson.D{})
	if err != nil {
		return nil, wrap("list poll states", err)
	}
	var out []PollState
	if err := cur.All(ctx, &out); err != nil {
		return nil, wrap("list poll states", err)
	}
	return out, nil
}
