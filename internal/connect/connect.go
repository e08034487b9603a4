// Package connect runs the OAuth-style connect flow: the oauthUrl mutation
// stores a pending request, the hosted page collects and verifies the
// Marketo credentials, and a one-time code carries them to createInstance.
package connect

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"time"

	"github.com/leadstream/leadstream/internal/apperr"
	"github.com/leadstream/leadstream/internal/connector"
	"github.com/leadstream/leadstream/internal/instance"
	"github.com/leadstream/leadstream/internal/marketo"
	"github.com/leadstream/leadstream/internal/secrets"
	"github.com/leadstream/leadstream/internal/store"
)

// RequestTTL and CodeTTL bound how long a connect link and a code live.
const (
	RequestTTL = 10 * time.Minute
	CodeTTL    = 10 * time.Minute
)

// Store is what the connect flow needs from the database.
type Store interface {
	InsertOAuthRequest(ctx context.Context, r store.OAuthRequest) error
	OAuthRequest(ctx context.Context, id string, now time.Time) (store.OAuthRequest, error)
	InsertOAuthCode(ctx context.Context, c store.OAuthCode) error
	OAuthCode(ctx context.Context, orgID, hash string, now time.Time) (store.OAuthCode, error)
	RedeemOAuthCode(ctx context.Context, hash string, now time.Time) error
	ClaimOAuth(ctx context.Context, key string, expiresAt time.Time) error
	DeleteOAuthRequest(ctx context.Context, id string) error
	CountOAuthRequests(ctx context.Context, orgID string, now time.Time) (int64, error)
}

// MaxChecks is how many credential checks one connect link allows: each
// is a request to Marketo that an unauthenticated holder of the link
// causes.
const MaxChecks = 5

// MarketoURLs says which identity and REST URLs may be used
// (internal/egress); the error's text says why not.
type MarketoURLs interface {
	CheckMarketoURL(raw string) error
}

// Verifier checks Marketo credentials with one token request.
type Verifier func(ctx context.Context, c marketo.Credentials) error

// Service is the connect flow.
type Service struct {
	store     Store
	box       *secrets.Box
	conns     *connector.Registry
	publicURL string
	verify    Verifier
	urls      MarketoURLs
	// maxPending caps an organization's pending links.
	maxPending int
	log        *slog.Logger
	now        func() time.Time
}

// New returns the connect flow; publicURL prefixes every URL it hands out,
// and an organization holds at most maxPending unexpired links.
func New(s Store, box *secrets.Box, conns *connector.Registry, publicURL string, verify Verifier, urls MarketoURLs, maxPending int, log *slog.Logger) *Service {
	return &Service{store: s, box: box, conns: conns, publicURL: publicURL, verify: verify, urls: urls, maxPending: maxPending, log: log, now: time.Now}
}

// URLRequest is the oauthUrl mutation's input.
type URLRequest struct {
	ConnectorKey, APIKey, APISecret, CallbackURL, State string
}

// CreateURL stores a pending request and returns the page's URL. No secret
// goes into the URL: the request id is an unguessable handle.
func (s *Service) CreateURL(ctx context.Context, orgID string, in URLRequest) (string, error) {
	if _, ok := s.conns.Get(in.ConnectorKey); !ok {
		return "", apperr.New(apperr.BadUserInput, "unknown connector %q", in.ConnectorKey)
	}
	u, err := url.Parse(in.CallbackURL)
	if err != nil || !u.IsAbs() || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
		return "", &apperr.Error{Code: apperr.BadUserInput, Message: "callbackUrl must be an absolute http(s) URL",
			Invalid: map[string]string{"callbackUrl": "must be an absolute http(s) URL"}}
	}
	now := s.now().UTC()
	// Counted before the insert, so concurrent calls may pass the cap by a
	// few; it bounds the collection, it is not an exact quota.
	n, err := s.store.CountOAuthRequests(ctx, orgID, now)
	if err != nil {
		return "", fmt.Errorf("connect: %w", err)
	}
	if n >= int64(s.maxPending) {
		return "", apperr.New(apperr.LimitExceeded, "this organization already has %d pending connect links, the limit (CONNECT_LINKS_PER_ORGANIZATION); wait until one is used or expires (10 minutes)", n)
	}
	r := store.OAuthRequest{
		ID: secrets.Token("", 24), OrgID: orgID, ConnectorKey: in.ConnectorKey,
		CallbackURL: in.CallbackURL, State: in.State, CreatedAt: now, ExpiresAt: now.Add(RequestTTL),
	}
	if in.APIKey != "" {
		r.Known = append(r.Known, store.ConfigEntry{Key: instance.KeyAPIKey, Value: in.APIKey})
	}
	if in.APISecret != "" {
		r.Known = append(r.Known, store.ConfigEntry{Key: instance.KeyAPISecret, Value: s.box.Seal(in.APISecret), Sealed: true})
	}
	if err := s.store.InsertOAuthRequest(ctx, r); err != nil {
		return "", fmt.Errorf("connect: %w", err)
	}
	return s.publicURL + "/oauth/" + in.ConnectorKey + "/authorize?request=" + url.QueryEscape(r.ID), nil
}

// ErrBadCode is the answer to an unknown, expired, foreign or used code;
// the client cannot tell which, on purpose.
var ErrBadCode = apperr.New(apperr.BadUserInput, "providerData.code is unknown, expired or already used; run the connect flow again")

// Code returns what a code carries, without using it up.
func (s *Service) Code(ctx context.Context, orgID, code string) (store.OAuthCode, error) {
	c, err := s.store.OAuthCode(ctx, orgID, secrets.Hash(code), s.now().UTC())
	if errors.Is(err, store.ErrNotFound) {
		return c, ErrBadCode
	}
	if err != nil {
		return c, fmt.Errorf("connect: %w", err)
	}
	return c, nil
}

// Redeem uses a code up. It is an insert under a unique key, so of many
// concurrent redemptions exactly one succeeds, on the embedded store too.
func (s *Service) Redeem(ctx context.Context, code string) error {
	err := s.store.RedeemOAuthCode(ctx, secrets.Hash(code), s.now().UTC())
	if errors.Is(err, store.ErrDuplicate) {
		return ErrBadCode
	}
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	return nil
}

// issueCode stores the verified configuration under a fresh code.
func (s *Service) issueCode(ctx context.Context, r store.OAuthRequest, cfg []store.ConfigEntry) (string, error) {
	code := secrets.Token("", 24)
	now := s.now().UTC()
	err := s.store.InsertOAuthCode(ctx, store.OAuthCode{
		ID: secrets.Hash(code), OrgID: r.OrgID, ConnectorKey: r.ConnectorKey, Config: cfg,
		CreatedAt: now, ExpiresAt: now.Add(CodeTTL),
	})
	if err != nil {
		return "", fmt.Errorf("connect: %w", err)
	}
	return code, nil
}

// errLinkUsed means the link issued its code, was cancelled, or used up
// its credential checks.
var errLinkUsed = errors.New("connect: link used up")

// claimCheck takes one of the link's credential checks.
func (s *Service) claimCheck(ctx context.Context, r store.OAuthRequest) error {
	for i := 1; i <= MaxChecks; i++ {
		err := s.store.ClaimOAuth(ctx, fmt.Sprintf("check:%s:%d", r.ID, i), r.ExpiresAt)
		if err == nil {
			return nil
		}
		if !errors.Is(err, store.ErrDuplicate) {
			return fmt.Errorf("connect: %w", err)
		}
	}
	return errLinkUsed
}

// consume uses the link up, once: of concurrent posts only one issues a
// code (or cancels). The link itself is deleted after, so it shows as
// used; should the delete fail, the claim still refuses a second use.
func (s *Service) consume(ctx context.Context, r store.OAuthRequest) error {
	err := s.store.ClaimOAuth(ctx, "used:"+r.ID, r.ExpiresAt)
	if errors.Is(err, store.ErrDuplicate) {
		return errLinkUsed
	}
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	if err := s.store.DeleteOAuthRequest(ctx, r.ID); err != nil {
		s.log.Warn("connect: delete used link", "err", err)
	}
	return nil
}
