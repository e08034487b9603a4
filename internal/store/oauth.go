package store

import (
	"context"
	"time"

	"go.mongodb.org/mongo-driver/bson"
)

// OAuthRequest is a pending connect flow started by the oauthUrl mutation.
type OAuthRequest struct {
	ID           string        `bson:"_id"`
	OrgID        string        `bson:"orgId"`
	ConnectorKey string        `bson:"connectorKey"`
	CallbackURL  string        `bson:"callbackUrl"`
	State        string        `bson:"state"`
	Known        []ConfigEntry `bson:"known"` // what the caller already gave (secrets sealed)
	CreatedAt    time.Time     `bson:"createdAt"`
	ExpiresAt    time.Time     `bson:"expiresAt"`
}

// OAuthCode is a one-time code the connect page issued after it verified the
// credentials; it is stored under the hash of the code.
type OAuthCode struct {
	ID           string        `bson:"_id"` // hash of the code
	OrgID        string        `bson:"orgId"`
	ConnectorKey string        `bson:"connectorKey"`
	Config       []ConfigEntry `bson:"config"`
	CreatedAt    time.Time     `bson:"createdAt"`
	ExpiresAt    time.Time     `bson:"expiresAt"`
}

// InsertOAuthRequest stores a pending connect flow.
func (s *Store) InsertOAuthRequest(ctx context.Context, r OAuthRequest) error {
	_, err := s.db.Collection(colOAuthRequests).InsertOne(ctx, r)
	return wrap("insert oauth request", err)
}

// OAuthRequest returns a pending connect flow that has not expired.
func (s *Store) OAuthRequest(ctx context.Context, id string, now time.Time) (OAuthRequest, error) {
	var r OAuthRequest
	err := s.db.Collection(colOAuthRequests).FindOne(ctx, bson.D{{Key: "_id", Value: id}, {Key: "expiresAt", Value: bson.D{{Key: "$gt", Value: now}}}}).Decode(&r)
	return r, wrap("find oauth request", err)
}

// InsertOAuthCode stores a one-time code.
func (s *Store) InsertOAuthCode(ctx context.Context, c OAuthCode) error {
	_, err := s.db.Collection(colOAuthCodes).InsertOne(ctx, c)
	return wrap("insert oauth code", err)
}

// OAuthCode returns an unexpired code of an organization by its hash.
func (s *Store) OAuthCode(ctx context.Context, orgID, hash string, now time.Time) (OAuthCode, error) {
	var c OAuthCode
	err := s.db.Collection(colOAuthCodes).FindOne(ctx, bson.D{
		{Key: "_id", Value: hash}, {Key: "orgId", Value: orgID}, {Key: "expiresAt", Value: bson.D{{Key: "$gt", Value: now}}},
	}).Decode(&c)
	return c, wrap("find oauth code", err)
}

// RedeemOAuthCode claims a code once: the claim is an insert under a unique
// key, which stays exact under concurrency where updates do not. A second
// claim is ErrDuplicate.
func (s *Store) RedeemOAuthCode(ctx context.Context, hash string, now time.Time) error {
	_, err := s.db.Collection(colRedemptions).InsertOne(ctx, bson.D{{Key: "_id", Value: hash}, {Key: "at", Value: now}})
	return wrap("redeem oauth code", err)
}

// DeleteExpiredOAuth removes expired requests and codes; the embedded store
// has no TTL indexes, so a periodic clean-up calls this. Redemptions of
// expired codes go too: an expired code is refused by its expiry anyway.
func (s *Store) DeleteExpiredOAuth(ctx context.Context, now time.Time) error {
	old := bson.D{{Key: "expiresAt", Value: bson.D{{Key: "$lte", Value: now}}}}
	if _, err := s.db.Collection(colOAuthRequests).DeleteMany(ctx, old); err != nil {
		return wrap("clean oauth requests", err)
	}
	if _, err := s.db.Collection(colOAuthClaims).DeleteMany(ctx, old); err != nil {
		return wrap("clean connect link claims", err)
	}
	cur, err := s.db.Collection(colOAuthCodes).Find(ctx, old)
	if err != nil {
		return wrap("clean oauth codes", err)
	}
	var codes []OAuthCode
	if err := cur.All(ctx, &codes); err != nil {
		return wrap("clean oauth codes", err)
	}
	for _, c := range codes {
		if _, err := s.db.Collection(colRedemptions).DeleteOne(ctx, bson.D{{Key: "_id", Value: c.ID}}); err != nil {
			return wrap("clean redemptions", err)
		}
	}
	_, err = s.db.Collection(colOAuthCodes).DeleteMany(ctx, old)
	return wrap("clean oauth codes", err)
}

// ClaimOAuth takes a one-time claim (a connect link used, one of its
// credential checks) as an insert under a unique key: of concurrent claims
// exactly one succeeds; the others are ErrDuplicate. Claims are removed
// after expiresAt by DeleteExpiredOAuth.
func (s *Store) ClaimOAuth(ctx context.Context, key string, expiresAt time.Time) error {
	_, err := s.db.Collection(colOAuthClaims).InsertOne(ctx, bson.D{{Key: "_id", Value: key}, {Key: "expiresAt", Value: expiresAt}})
	return wrap("claim connect link", err)
}

// DeleteOAuthRequest removes a connect link once it is used up.
func (s *Store) DeleteOAuthRequest(ctx context.Context, id string) error {
	_, err := s.db.Collection(colOAuthRequests).DeleteOne(ctx, bson.D{{Key: "_id", Value: id}})
	return wrap("delete oauth request", err)
}

// CountOAuthRequests counts an organization's pending connect links. The
// collection stays small: links expire in minutes and are cleaned up.
func (s *Store) CountOAuthRequests(ctx context.Context, orgID string, now time.Time) (int64, error) {
	n, err := s.db.Collection(colOAuthRequests).CountDocuments(ctx, bson.D{{Key: "orgId", Value: orgID}, {Key: "expiresAt", Value: bson.D{{Key: "$gt", Value: now}}}})
	return n, wrap("count oauth requests", err)
}
