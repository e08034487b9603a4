package store

import (
	"context"

	"go.mongodb.org/mongo-driver/bson"
)

// Credential is one user's pair of secrets, stored under a hash over both,
// so that checking a pair is one lookup whichever part is wrong.
type Credential struct {
	ID     string `bson:"_id"` // secrets.PairHash(user, org)
	OrgID  string `bson:"orgId"`
	UserID string `bson:"userId"`
}

// InsertCredential stores a pair; ErrDuplicate if it exists.
func (s *Store) InsertCredential(ctx context.Context, c Credential) error {
	_, err := s.db.Collection(colCredentials).InsertOne(ctx, c)
	return wrap("insert credential", err)
}

// CredentialByHash finds a pair by its hash.
func (s *Store) CredentialByHash(ctx context.Context, hash string) (Credential, error) {
	var c Credential
	err := s.db.Collection(colCredentials).FindOne(ctx, bson.D{{Key: "_id", Value: hash}}).Decode(&c)
	return c, wrap("find credential", err)
}
