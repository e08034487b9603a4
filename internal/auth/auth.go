// Package auth checks the credentials every GraphQL and REST call carries
// ("User …, Organization …", or an instance's "Element …" token) and keeps
// the caller's identity in the request context. The scope of an Element
// token is enforced here too: Identity.RequireFull and Identity.MayRead are
// the one rule both transports apply.
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

	"github.com/leadstream/leadstream/internal/apperr"
	"github.com/leadstream/leadstream/internal/secrets"
	"github.com/leadstream/leadstream/internal/store"
)

// UnauthenticatedMessage is what a caller is told when its credentials
// are refused (in plain words, without this package's prefix).
const UnauthenticatedMessage = "missing or wrong credentials: send Authorization: User <userSecret>, Organization <orgSecret> (or Element <instance token>)"

// ErrUnauthenticated means the credentials are missing, malformed or wrong.
var ErrUnauthenticated = errors.New("auth: " + UnauthenticatedMessage)

// Identity is the authenticated caller.
type Identity struct {
	OrgID  string
	UserID string // "" for an Element token alone
	// InstanceID is set when the caller presented an Element token: it may
	// then only read that instance and subscribe to its events.
	InstanceID string
	// TokenHash is the hash of that Element token; readers compare it with
	// the instance's current one, so a rotated token stops at once even on
	// a connection authenticated before the rotation.
	TokenHash string
}

// Scoped reports whether the identity is an Element token's.
func (id Identity) Scoped() bool { return id.InstanceID != "" }

// ErrForbidden answers what an Element token does not allow.
var ErrForbidden = apperr.New(apperr.Forbidden, "an Element token only allows reading its own instance (instance, events, deliveries) and subscribing to its events; use User and Organization credentials for anything else")

// RequireFull refuses an Element token: everything but reading its own
// instance needs the organization's credentials.
func (id Identity) RequireFull() error {
	if id.Scoped() {
		return ErrForbidden
	}
	return nil
}

// MayRead allows reading instanceID: any instance of the organization with
// full credentials (tenancy is the store's), only its own with an Element token.
func (id Identity) MayRead(instanceID string) error {
	if id.Scoped() && instanceID != id.InstanceID {
		return ErrForbidden
	}
	return nil
}

// ErrTokenRevoked answers an Element token whose instance has a new one.
var ErrTokenRevoked = apperr.Wrap(apperr.Unauthenticated, ErrUnauthenticated, "the Element token was replaced by a new one")

// Current checks that a scoped identity's token is still the instance's
// (tokenHash is the instance's stored one): rotation revokes at once.
func (id Identity) Current(tokenHash string) error {
	if id.Scoped() && !secrets.Equal(id.TokenHash, tokenHash) {
		return ErrTokenRevoked
	}
	return nil
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

// Credentials are the parts of an Authorization value.
type Credentials struct {
	User, Org string
	Element   string // an instance token
}

// Parse splits an Authorization value into its parts: User and
// Organization together, an Element token alone, or all three; in any
// order, the scheme words in any case.
func Parse(header string) (Credentials, error) {
	var c Credentials
	for _, part := range strings.Split(header, ",") {
		scheme, value, ok := strings.Cut(strings.TrimSpace(part), " ")
		value = strings.TrimSpace(value)
		if !ok || value == "" {
			return Credentials{}, ErrUnauthenticated
		}
		var dst *string
		switch strings.ToLower(scheme) {
		case "user":
			dst = &c.User
		case "organization":
			dst = &c.Org
		case "element":
			dst = &c.Element
		default:
			return Credentials{}, ErrUnauthenticated
		}
		if *dst != "" {
			return Credentials{}, ErrUnauthenticated
		}
		*dst = value
	}
	if (c.User == "") != (c.Org == "") || (c.User == "" && c.Element == "") {
		return Credentials{}, ErrUnauthenticated
	}
	return c, nil
}

// Store is what the authenticator needs from the database.
type Store interface {
	OrganizationBySecretHash(ctx context.Context, hash string) (store.Organization, error)
	UserBySecretHash(ctx context.Context, hash string) (store.User, error)
	InsertOrganization(ctx context.Context, o store.Organization) error
	InsertUser(ctx context.Context, u store.User) error
	HasOrganization(ctx context.Context) (bool, error)
	InstanceByTokenHash(ctx context.Context, hash string) (store.Instance, error)
	InsertCredential(ctx context.Context, c store.Credential) error
	CredentialByHash(ctx context.Context, hash string) (store.Credential, error)
}

// Authenticator checks credentials against the store. Successful checks
// are remembered for a minute, so a busy client costs no database reads;
// organizations and users are never deleted through the API, so a cached
// success cannot outlive its subject. Element tokens are remembered for a
// minute too, or until their instance changes (ForgetInstance); readers also
// compare the token with the instance's current one (Identity.Current).
type Authenticator struct {
	store  Store
	mu     sync.Mutex
	cache  map[[2]string]cached
	tokens map[string]cached // by token hash
}

type cached struct {
	id  Identity
	exp time.Time
}

const cacheTTL = time.Minute
const cacheMax = 10000

// New returns an Authenticator over s.
func New(s Store) *Authenticator {
	return &Authenticator{store: s, cache: map[[2]string]cached{}, tokens: map[string]cached{}}
}

// Authenticate checks an Authorization value and returns the caller. With
// an Element token (alone or beside User and Organization, which must then
// be right and of the instance's organization) the identity is scoped to
// that instance.
func (a *Authenticator) Authenticate(ctx context.Context, header string) (Identity, error) {
	c, err := Parse(header)
	if err != nil {
		return Identity{}, err
	}
	var full Identity
	if c.User != "" {
		if full, err = a.authenticateUser(ctx, c.User, c.Org); err != nil {
			return Identity{}, err
		}
	}
	if c.Element == "" {
		return full, nil
	}
	el, err := a.authenticateElement(ctx, c.Element)
	if err != nil {
		return Identity{}, err
	}
	if c.User != "" {
		if full.OrgID != el.OrgID {
			return Identity{}, ErrUnauthenticated
		}
		el.UserID = full.UserID
	}
	return el, nil
}

func (a *Authenticator) authenticateElement(ctx context.Context, token string) (Identity, error) {
	hash := secrets.Hash(token)
	now := time.Now()
	a.mu.Lock()
	c, ok := a.tokens[hash]
	a.mu.Unlock()
	if ok && now.Before(c.exp) {
		return c.id, nil
	}
	in, err := a.store.InstanceByTokenHash(ctx, hash)
	if errors.Is(err, store.ErrNotFound) {
		return Identity{}, ErrUnauthenticated
	} else if err != nil {
		return Identity{}, fmt.Errorf("auth: %w", err)
	}
	id := Identity{OrgID: in.OrgID, InstanceID: in.ID, TokenHash: hash}
	a.mu.Lock()
	if len(a.tokens) >= cacheMax {
		clear(a.tokens)
	}
	a.tokens[hash] = cached{id: id, exp: now.Add(cacheTTL)}
	a.mu.Unlock()
	return id, nil
}

// ForgetInstance drops what is remembered of an instance's Element token.
// Call it whenever the instance changes (token rotated, deleted), on every
// replica.
func (a *Authenticator) ForgetInstance(instanceID string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for h, c := range a.tokens {
		if c.id.InstanceID == instanceID {
			delete(a.tokens, h)
		}
	}
}

func (a *Authenticator) authenticateUser(ctx context.Context, user, org string) (Identity, error) {
	key := [2]string{secrets.Hash(user), secrets.Hash(org)}
	now := time.Now()
	a.mu.Lock()
	c, ok := a.cache[key]
	a.mu.Unlock()
	if ok && now.Before(c.exp) {
		return c.id, nil
	}
	// One lookup of both secrets together: a wrong organization and a
	// wrong user take the same time.
	cr, err := a.store.CredentialByHash(ctx, secrets.PairHash(user, org))
	if errors.Is(err, store.ErrNotFound) {
		return Identity{}, ErrUnauthenticated
	} else if err != nil {
		return Identity{}, fmt.Errorf("auth: %w", err)
	}
	id := Identity{OrgID: cr.OrgID, UserID: cr.UserID}
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
		// Replicas starting together on an empty store race here: the first
		// organization has a fixed id, so exactly one insert wins, and only
		// that replica creates the user and shows the secrets.
		now := time.Now().UTC()
		err = a.store.InsertOrganization(ctx, store.Organization{ID: firstOrganizationID, SecretHash: secrets.Hash(orgSecret), CreatedAt: now})
		if errors.Is(err, store.ErrDuplicate) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("auth: bootstrap: %w", err)
		}
		u := store.User{ID: uuid.NewString(), OrgID: firstOrganizationID, SecretHash: secrets.Hash(userSecret), CreatedAt: now}
		if err := a.store.InsertUser(ctx, u); err != nil {
			return fmt.Errorf("auth: bootstrap: %w", err)
		}
		cr := store.Credential{ID: secrets.PairHash(userSecret, orgSecret), OrgID: firstOrganizationID, UserID: u.ID}
		if err := a.store.InsertCredential(ctx, cr); err != nil {
			return fmt.Errorf("auth: bootstrap: %w", err)
		}
		_, err = fmt.Fprintf(out, "\nCreated the first organization. Keep these secrets: they are shown only once.\n"+
			"  ORGANIZATION_SECRET=%s\n  USER_SECRET=%s\n  Authorization: User %s, Organization %s\n\n",
			orgSecret, userSecret, userSecret, orgSecret)
		return err
	}
	_, err := a.CreatePair(ctx, orgSecret, userSecret)
	return err
}

// firstOrganizationID is the id of the organization created when the
// store is empty and no secrets are configured.
var firstOrganizationID = uuid.NewSHA1(uuid.NameSpaceURL, []byte("leadstream:first-organization")).String()

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
	cr := store.Credential{ID: secrets.PairHash(userSecret, orgSecret), OrgID: o.ID, UserID: u.ID}
	if err := a.store.InsertCredential(ctx, cr); err != nil && !errors.Is(err, store.ErrDuplicate) {
		return Identity{}, fmt.Errorf("auth: bootstrap: %w", err)
	}
	return Identity{OrgID: o.ID, UserID: u.ID}, nil
}
