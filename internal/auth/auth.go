// Package auth checks the "User …, Organization …" credentials every GraphQL
// call carries and keeps the caller's identity in the request context.
package auth

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"

	"github.com/leadstream/leadstream/internal/secrets"
	"github.com/leadstream/leadstream/internal/store"
)

// ErrUnauthenticated means the credentials are missing, malformed or wrong.
var ErrUnauthenticated = errors.New("auth: missing or wrong credentials: send Authorization: User <userSecret>, Organization <orgSecret>")

// Identity is the authenticated caller.
type Identity struct {
	OrgID  string
	UserID string
}

type ctxKey struct{}

// WithIdentity returns ctx carrying id.
func WithIdentity(ctx context.Context, id Identity) context.Context {
	return context.WithValue(ctx, ctxKey{}, id)
}

// FromContext returns the caller's identity, if the request was authenticated.
func FromContext(ctx context.Context) (Identity, bool) {
	id, ok := ctx.Value(ctxKey{}).(Identity)
	return id, ok
}

// Parse splits an Authorization value into its user and organization
// secrets; the two parts come in either order, the scheme words in any case.
func Parse(header string) (user, org string, err error) {
	for _, part := range strings.Split(header, ",") {
		scheme, value, ok := strings.Cut(strings.TrimSpace(part), " ")
		value = strings.TrimSpace(value)
		if !ok || value == "" {
			return "", "", ErrUnauthenticated
		}
		switch strings.ToLower(scheme) {
		case "user":
			user = value
		case "organization":
			org = value
		default:
			return "", "", ErrUnauthenticated
		}
	}
	if user == "" || org == "" {
		return "", "", ErrUnauthenticated
	}
	return user, org, nil
}

// Store is what the authenticator needs from the database.
type Store interface {
	OrganizationBySecretHash(ctx context.Context, hash string) (store.Organization, error)
	UserBySecretHash(ctx context.Context, hash string) (store.User, error)
	InsertOrganization(ctx context.Context, o store.Organization) error
	InsertUser(ctx context.Context, u store.User) error
	HasOrganization(ctx context.Context) (bool, error)
}

// Authenticator checks credentials against the store. Successful checks
// are remembered for a minute, so a busy client costs no database reads;
// organizations and users are never deleted through the API, so a cached
// success cannot outlive its subject.
type Authenticator struct {
	store Store
	mu    sync.Mutex
	cache map[[2]string]cached
}

type cached struct {
	id  Identity
	exp time.Time
}

const cacheTTL = time.Minute
const cacheMax = 10000

// New returns an Authenticator over s.
func New(s Store) *Authenticator {
	return &Authenticator{store: s, cache: map[[2]string]cached{}}
}

// Authenticate checks an Authorization value and returns the caller.
func (a *Authenticator) Authenticate(ctx context.Context, header string) (Identity, error) {
	user, org, err := Parse(header)
	if err != nil {
		return Identity{}, err
	}
	key := [2]string{secrets.Hash(user), secrets.Hash(org)}
	now := time.Now()
	a.mu.Lock()
	c, ok := a.cache[key]
	a.mu.Unlock()
	if ok && now.Before(c.exp) {
		return c.id, nil
	}
	o, err := a.store.OrganizationBySecretHash(ctx, key[1])
	if errors.Is(err, store.ErrNotFound) {
		return Identity{}, ErrUnauthenticated
	} else if err != nil {
		return Identity{}, fmt.Errorf("auth: %w", err)
	}
	u, err := a.store.UserBySecretHash(ctx, key[0])
	if errors.Is(err, store.ErrNotFound) || (err == nil && u.OrgID != o.ID) {
		return Identity{}, ErrUnauthenticated
	} else if err != nil {
		return Identity{}, fmt.Errorf("auth: %w", err)
	}
	id := Identity{OrgID: o.ID, UserID: u.ID}
	a.mu.Lock()
	if len(a.cache) >= cacheMax {
		clear(a.cache)
	}
	a.cache[key] = cached{id: id, exp: now.Add(cacheTTL)}
	a.mu.Unlock()
	return id, nil
}

// Bootstrap makes sure an organization exists. With both secrets given it
// creates that organization and user unless they exist (idempotent). With
// none, on an empty store it creates one pair and prints the secrets to out,
// the only time they are ever shown.
func (a *Authenticator) Bootstrap(ctx context.Context, orgSecret, userSecret string, out io.Writer) error {
	if orgSecret == "" {
		has, err := a.store.HasOrganization(ctx)
		if err != nil || has {
			return err
		}
		orgSecret, userSecret = secrets.Token("org_", 24), secrets.Token("usr_", 24)
		if _, err := a.CreatePair(ctx, orgSecret, userSecret); err != nil {
			return err
		}
		_, err = fmt.Fprintf(out, "\nCreated the first organization. Keep these secrets: they are shown only once.\n"+
			"  ORGANIZATION_SECRET=%s\n  USER_SECRET=%s\n  Authorization: User %s, Organization %s\n\n",
			orgSecret, userSecret, userSecret, orgSecret)
		return err
	}
	_, err := a.CreatePair(ctx, orgSecret, userSecret)
	return err
}

// CreatePair creates an organization and one user, keeping whichever of the
// two already exists.
func (a *Authenticator) CreatePair(ctx context.Context, orgSecret, userSecret string) (Identity, error) {
	now := time.Now().UTC()
	o := store.Organization{ID: uuid.NewString(), SecretHash: secrets.Hash(orgSecret), CreatedAt: now}
	if err := a.store.InsertOrganization(ctx, o); errors.Is(err, store.ErrDuplicate) {
		if o, err = a.store.OrganizationBySecretHash(ctx, o.SecretHash); err != nil {
			return Identity{}, fmt.Errorf("auth: bootstrap: %w", err)
		}
	} else if err != nil {
		return Identity{}, fmt.Errorf("auth: bootstrap: %w", err)
	}
	u := store.User{ID: uuid.NewString(), OrgID: o.ID, SecretHash: secrets.Hash(userSecret), CreatedAt: now}
	if err := a.store.InsertUser(ctx, u); errors.Is(err, store.ErrDuplicate) {
		if u, err = a.store.UserBySecretHash(ctx, u.SecretHash); err != nil {
			return Identity{}, fmt.Errorf("auth: bootstrap: %w", err)
		}
		if u.OrgID != o.ID {
			return Identity{}, errors.New("auth: bootstrap: USER_SECRET already belongs to another organization")
		}
	} else if err != nil {
		return Identity{}, fmt.Errorf("auth: bootstrap: %w", err)
	}
	return Identity{OrgID: o.ID, UserID: u.ID}, nil
}
