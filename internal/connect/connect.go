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
	log       *slog.Logger
	now       func() time.Time
}

// New returns the connect flow; publicURL prefixes every URL it hands out.
func New(s Store, box *secrets.Box, conns *connector.Registry, publicURL string, verify Verifier, log *slog.Logger) *Service {
	return &Service{store: s, box: box, conns: conns, publicURL: publicURL, verify: verify, log: log, now: time.Now}
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
