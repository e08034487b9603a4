package store

import (
	"context"
	"time"

	"go.mongodb.org/mongo-driver/bson"
	"go.mongodb.org/mongo-driver/mongo/options"
)

// Organization is a tenant. Its secret is stored only as a hash.
type Organization struct {
	ID         string    `bson:"_id"`
	SecretHash string    `bson:"secretHash"`
	CreatedAt  time.Time `bson:"createdAt"`
}

// User belongs to one organization. Its secret is stored only as a hash.
type User struct {
	ID         string    `bson:"_id"`
	OrgID      string    `bson:"orgId"`
	SecretHash string    `bson:"secretHash"`
	CreatedAt  time.Time `bson:"createdAt"`
}

// InsertOrganization stores a new organization; ErrDuplicate if its secret hash exists.
func (s *Store) InsertOrganization(ctx context.Context, o Organization) error {
	_, err := s.db.Collection(colOrganizations).InsertOne(ctx, o)
	return wrap("insert organization", err)
}

// InsertUser stores a new user; ErrDuplicate if its secret hash exists.
func (s *Store) InsertUser(ctx context.Context, u User) error {
	_, err := s.db.Collection(colUsers).InsertOne(ctx, u)
	return wrap("insert user", err)
}

// OrganizationBySecretHash finds an organization by the hash of its secret.
func (s *Store) OrganizationBySecretHash(ctx context.Context, hash string) (Organization, error) {
	var o Organization
	err := s.db.Collection(colOrganizations).FindOne(ctx, bson.D{{Key: "secretHash", Value: hash}}).Decode(&o)
	return o, wrap("find organization", err)
}

// UserBySecretHash finds a user by the hash of its secret.
func (s *Store) UserBySecretHash(ctx context.Context, hash string) (User, error) {
	var u User
	err := s.db.Collection(colUsers).FindOne(ctx, bson.D{{Key: "secretHash", Value: hash}}).Decode(&u)
	return u, wrap("find user", err)
}

// HasOrganization reports whether any organization exists.
func (s *Store) HasOrganization(ctx context.Context) (bool, error) {
	n, err := s.db.Collection(colOrganizations).CountDocuments(ctx, bson.D{}, options.Count().SetLimit(1))
	return n > 0, wrap("count organizations", err)
}
