package instance

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/google/uuid"

	"github.com/leadstream/leadstream/internal/apperr"
	"github.com/leadstream/leadstream/internal/auth"
	"github.com/leadstream/leadstream/internal/connector"
	"github.com/leadstream/leadstream/internal/marketo"
	"github.com/leadstream/leadstream/internal/secrets"
	"github.com/leadstream/leadstream/internal/store"
)

// Store is what the service needs from the database.
type Store interface {
	InsertInstance(ctx context.Context, in store.Instance) error
	Instance(ctx context.Context, orgID, id string) (store.Instance, error)
	InstanceByID(ctx context.Context, id string) (store.Instance, error)
	Instances(ctx context.Context, orgID string) ([]store.Instance, error)
	UpdateInstance(ctx context.Context, orgID, id string, change func(*store.Instance) error) (store.Instance, error)
	DeleteInstance(ctx context.Context, orgID, id string) error
	DeleteEventsOf(ctx context.Context, instanceID string) error
}

// Codes is the connect flow's side of createInstance.
type Codes interface {
	Code(ctx context.Context, orgID, code string) (store.OAuthCode, error)
	Redeem(ctx context.Context, code string) error
}

// Verifier checks Marketo credentials with one token request.
type Verifier func(ctx context.Context, c marketo.Credentials) error

// URLPolicy says which URLs may be configured (internal/egress): Marketo
// URLs must name an allowed Marketo host, callback URLs must not name an
// internal address. The error's text says why, for the person.
type URLPolicy interface {
	CheckMarketoURL(raw string) error
	CheckCallbackURL(raw string) error
}

// Service provisions and changes instances.
type Service struct {
	store     Store
	box       *secrets.Box
	conns     *connector.Registry
	codes     Codes
	verify    Verifier
	urls      URLPolicy
	publicURL string
	log       *slog.Logger
	// OnChange is told after an instance was created, changed (in != nil)
	// or deleted (in == nil), so the poller, the broker and caches follow
	// at once.
	onChange func(id string, in *store.Instance)

	mu    sync.Mutex
	cache map[string]cacheEntry
}

type cacheEntry struct {
	in  store.Instance
	err error
	exp time.Time
}

// cacheTTL bounds how stale a cached instance can be when another replica
// changed it; changes made through this process apply at once.
const cacheTTL = 10 * time.Second

// NewService returns the instance service.
func NewService(s Store, box *secrets.Box, conns *connector.Registry, codes Codes, verify Verifier, urls URLPolicy, publicURL string, log *slog.Logger, onChange func(string, *store.Instance)) *Service {
	if onChange == nil {
		onChange = func(string, *store.Instance) {}
	}
	return &Service{store: s, box: box, conns: conns, codes: codes, verify: verify, urls: urls, publicURL: publicURL, log: log, onChange: onChange, cache: map[string]cacheEntry{}}
}

// CreateInput is the createInstance mutation's input.
type CreateInput struct {
	ConnectorKey string
	Name         string
	Tags         []string
	Config       json.RawMessage // object of string values
	Code         string
}

// Created is a new instance with the secrets shown only once.
type Created struct {
	Instance      store.Instance
	Token         string
	WebhookSecret string
}

// Create validates, verifies and stores a new instance.
func (s *Service) Create(ctx context.Context, orgID string, in CreateInput) (Created, error) {
	if _, ok := s.conns.Get(in.ConnectorKey); !ok {
		return Created{}, apperr.New(apperr.BadUserInput, "unknown connector %q", in.ConnectorKey)
	}
	if in.Name == "" {
		return Created{}, &apperr.Error{Code: apperr.BadUserInput, Message: "name must not be empty", Invalid: map[string]string{"name": "must not be empty"}}
	}
	given, badTypes, err := parseConfig(in.Config, false)
	if err != nil {
		return Created{}, err
	}
	var fromCode []store.ConfigEntry
	if in.Code != "" {
		c, err := s.codes.Code(ctx, orgID, in.Code)
		if err != nil {
			return Created{}, err
		}
		fromCode = c.Config
	}
	cfg := map[string]*string{}
	for _, e := range fromCode {
		v := e.Value
		if e.Sealed {
			if v, err = s.box.Open(v); err != nil {
				return Created{}, fmt.Errorf("instance: open code secret: %w", err)
			}
		}
		cfg[e.Key] = &v
	}
	// What the connect page verified wins over the same key given again:
	// those credentials were checked, the given ones were not.
	for k, v := range given {
		if _, fromPage := cfg[k]; !fromPage || !isCredential(k) {
			cfg[k] = v
		}
	}
	if err := s.validate(cfg, badTypes); err != nil {
		return Created{}, err
	}
	if in.Code == "" {
		if err := s.check(ctx, cfg); err != nil {
			return Created{}, err
		}
	} else if err := s.codes.Redeem(ctx, in.Code); err != nil {
		return Created{}, err
	}
	now := time.Now().UTC().Truncate(time.Millisecond)
	c := Created{Token: secrets.Token("ist_", 24), WebhookSecret: secrets.Token("wh_", 24)}
	c.Instance = store.Instance{
		ID: uuid.NewString(), OrgID: orgID, Name: in.Name, ConnectorKey: in.ConnectorKey, Tags: nonNil(in.Tags),
		Config: s.seal(cfg), TokenHash: secrets.Hash(c.Token), WebhookSecretHash: secrets.Hash(c.WebhookSecret),
		Valid: true, CreatedAt: now, UpdatedAt: now,
	}
	if err := s.store.InsertInstance(ctx, c.Instance); err != nil {
		return Created{}, fmt.Errorf("instance: %w", err)
	}
	s.changed(c.Instance.ID, &c.Instance)
	s.log.Info("instance created", "instance", c.Instance.ID, "org", orgID, "name", c.Instance.Name,
		"events_enabled", val(cfg, KeyEventsEnabled) == "true", "from_code", in.Code != "")
	return c, nil
}

// UpdateInput is the updateInstance mutation's input; nil fields stay.
type UpdateInput struct {
	Name     *string
	Tags     []string
	SetTags  bool
	Disabled *bool
	Config   json.RawMessage // merged; a key set to null is removed
}

// Update changes an instance; changed credentials are verified again.
func (s *Service) Update(ctx context.Context, orgID, id string, in UpdateInput) (store.Instance, error) {
	var patch map[string]*string
	var badTypes map[string]string
	if len(in.Config) > 0 && string(in.Config) != "null" {
		var err error
		if patch, badTypes, err = parseConfig(in.Config, true); err != nil {
			return store.Instance{}, err
		}
	}
	if in.Name != nil && *in.Name == "" {
		return store.Instance{}, &apperr.Error{Code: apperr.BadUserInput, Message: "name must not be empty", Invalid: map[string]string{"name": "must not be empty"}}
	}
	// Verification talks to Marketo, so it runs before the store's
	// per-instance lock is taken; the merge is recomputed under the lock.
	cur, err := s.Get(ctx, orgID, id)
	if err != nil {
		return store.Instance{}, err
	}
	merged, err := s.merge(cur, patch)
	if err != nil {
		return store.Instance{}, err
	}
	if err := s.validate(merged, badTypes); err != nil {
		return store.Instance{}, err
	}
	credsChanged := false
	for k := range patch {
		credsChanged = credsChanged || isCredential(k)
	}
	if credsChanged {
		if err := s.check(ctx, merged); err != nil {
			return store.Instance{}, err
		}
	}
	out, err := s.store.UpdateInstance(ctx, orgID, id, func(st *store.Instance) error {
		if in.Name != nil {
			st.Name = *in.Name
		}
		if in.SetTags {
			st.Tags = nonNil(in.Tags)
		}
		if in.Disabled != nil {
			st.Disabled = *in.Disabled
		}
		if patch != nil {
			m, err := s.merge(*st, patch)
			if err != nil {
				return err
			}
			st.Config = s.seal(m)
		}
		if credsChanged {
			st.Valid, st.InvalidReason = true, ""
		}
		return nil
	})
	if err != nil {
		return out, s.notFound(err)
	}
	s.changed(id, &out)
	keys := make([]string, 0, len(patch))
	for k := range patch {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	// Key names only: values may be secrets.
	s.log.Info("instance updated", "instance", id, "org", orgID, "config_keys", keys,
		"disabled", out.Disabled, "credentials_changed", credsChanged)
	return out, nil
}

// RotateWebhookSecret issues a new webhook secret; the old one stops working at once.
func (s *Service) RotateWebhookSecret(ctx context.Context, orgID, id string) (store.Instance, string, error) {
	secret := secrets.Token("wh_", 24)
	out, err := s.store.UpdateInstance(ctx, orgID, id, func(st *store.Instance) error {
		st.WebhookSecretHash = secrets.Hash(secret)
		return nil
	})
	if err != nil {
		return out, "", s.notFound(err)
	}
	s.changed(id, &out)
	s.log.Info("instance webhook secret rotated", "instance", id, "org", orgID)
	return out, secret, nil
}

// RotateToken issues a new Element token; the old one stops working at once.
func (s *Service) RotateToken(ctx context.Context, orgID, id string) (store.Instance, string, error) {
	token := secrets.Token("ist_", 24)
	out, err := s.store.UpdateInstance(ctx, orgID, id, func(st *store.Instance) error {
		st.TokenHash = secrets.Hash(token)
		return nil
	})
	if err != nil {
		return out, "", s.notFound(err)
	}
	s.changed(id, &out)
	return out, token, nil
}

// Delete removes an instance and its events.
func (s *Service) Delete(ctx context.Context, orgID, id string) error {
	if err := s.store.DeleteInstance(ctx, orgID, id); err != nil {
		return s.notFound(err)
	}
	s.changed(id, nil)
	s.log.Info("instance deleted", "instance", id, "org", orgID)
	if err := s.store.DeleteEventsOf(ctx, id); err != nil {
		s.log.Error("delete events of deleted instance", "instance", id, "err", err)
	}
	return nil
}

// Get returns an organization's instance; another organization's is NOT_FOUND.
func (s *Service) Get(ctx context.Context, orgID, id string) (store.Instance, error) {
	in, err := s.store.Instance(ctx, orgID, id)
	return in, s.notFound(err)
}

// Read returns an instance the caller may read: any of its organization's
// with full credentials (another organization's is NOT_FOUND), only its own
// with an Element token (FORBIDDEN otherwise, UNAUTHENTICATED once that
// token was replaced). Every read on behalf of a caller goes through here.
func (s *Service) Read(ctx context.Context, who auth.Identity, id string) (store.Instance, error) {
	if err := who.MayRead(id); err != nil {
		return store.Instance{}, err
	}
	in, err := s.Get(ctx, who.OrgID, id)
	if err != nil {
		return in, err
	}
	if err := who.Current(in.TokenHash); err != nil {
		return store.Instance{}, err
	}
	return in, nil
}

// List returns an organization's instances, newest first.
func (s *Service) List(ctx context.Context, orgID string) ([]store.Instance, error) {
	l, err := s.store.Instances(ctx, orgID)
	if err != nil {
		return nil, fmt.Errorf("instance: %w", err)
	}
	return l, nil
}

// Lookup returns any instance by id for the webhook receiver and the
// notifier, from a short-lived cache that this service's own changes clear.
func (s *Service) Lookup(ctx context.Context, id string) (store.Instance, error) {
	now := time.Now()
	s.mu.Lock()
	e, ok := s.cache[id]
	s.mu.Unlock()
	if ok && now.Before(e.exp) {
		return e.in, e.err
	}
	in, err := s.store.InstanceByID(ctx, id)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return in, fmt.Errorf("instance: %w", err)
	}
	s.mu.Lock()
	if len(s.cache) > 100000 {
		clear(s.cache)
	}
	s.cache[id] = cacheEntry{in: in, err: err, exp: now.Add(cacheTTL)}
	s.mu.Unlock()
	return in, err
}

// Target tells the notifier where an instance's events go.
func (s *Service) Target(ctx context.Context, instanceID string) (url, signatureKey string, ok bool, err error) {
	in, err := s.Lookup(ctx, instanceID)
	if errors.Is(err, store.ErrNotFound) {
		return "", "", false, nil
	}
	if err != nil {
		return "", "", false, err
	}
	st, err := SettingsOf(in, s.box)
	if err != nil {
		return "", "", false, err
	}
	return st.CallbackURL, st.SignatureKey, st.CallbackURL != "", nil
}

// Settings decrypts an instance's configuration.
func (s *Service) Settings(in store.Instance) (Settings, error) { return SettingsOf(in, s.box) }

// WebhookURL is where Marketo posts an instance's webhooks; with a secret
// it carries it as ?secret=, which only answers that create or rotate show.
func (s *Service) WebhookURL(id, secret string) string {
	u := s.publicURL + "/events/marketo/" + base64.RawURLEncoding.EncodeToString([]byte(id))
	if secret != "" {
		u += "?secret=" + secret
	}
	return u
}

// Redacted returns an instance's configuration as answers show it.
func (s *Service) Redacted(in store.Instance) map[string]string {
	m := make(map[string]string, len(in.Config))
	for _, e := range in.Config {
		if e.Sealed || IsSecret(e.Key) {
			m[e.Key] = Redacted
		} else {
			m[e.Key] = e.Value
		}
	}
	return m
}

func (s *Service) changed(id string, in *store.Instance) {
	s.Forget(id)
	s.onChange(id, in)
}

// Forget drops the cached copy of an instance, for a change another
// replica made.
func (s *Service) Forget(id string) {
	s.mu.Lock()
	delete(s.cache, id)
	s.mu.Unlock()
}

func (s *Service) notFound(err error) error {
	if errors.Is(err, store.ErrNotFound) {
		return apperr.New(apperr.NotFound, "instance not found")
	}
	if _, ok := apperr.As(err); ok || err == nil {
		return err
	}
	return fmt.Errorf("instance: %w", err)
}

// check verifies credentials with Marketo; a refusal or an unreachable
// Marketo is UPSTREAM_ERROR and nothing is stored.
func (s *Service) check(ctx context.Context, cfg map[string]*string) error {
	c := marketo.Credentials{ClientID: val(cfg, KeyAPIKey), ClientSecret: val(cfg, KeyAPISecret), IdentityURL: val(cfg, KeyIdentityURL), RESTURL: val(cfg, KeyRESTURL)}
	vctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if err := s.verify(vctx, c); err != nil {
		msg := "Marketo did not confirm the credentials; try again"
		switch {
		case errors.Is(err, marketo.ErrInvalidCredentials):
			msg = "Marketo refused the credentials (oauth.api.key, oauth.api.secret) at marketo.identity.url"
		case errors.Is(err, marketo.ErrUnreachable), errors.Is(err, context.DeadlineExceeded):
			msg = "Marketo could not be reached at marketo.identity.url"
		}
		return apperr.Wrap(apperr.Upstream, err, "%s", msg)
	}
	return nil
}

func (s *Service) merge(cur store.Instance, patch map[string]*string) (map[string]*string, error) {
	m := map[string]*string{}
	for _, e := range cur.Config {
		v := e.Value
		if e.Sealed {
			var err error
			if v, err = s.box.Open(v); err != nil {
				return nil, fmt.Errorf("instance: %w", err)
			}
		}
		m[e.Key] = &v
	}
	for k, v := range patch {
		if v == nil {
			delete(m, k)
		} else {
			m[k] = v
		}
	}
	return m, nil
}

func (s *Service) seal(cfg map[string]*string) []store.ConfigEntry {
	keys := make([]string, 0, len(cfg))
	for k := range cfg {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	out := make([]store.ConfigEntry, 0, len(keys))
	for _, k := range keys {
		if cfg[k] == nil {
			continue
		}
		e := store.ConfigEntry{Key: k, Value: *cfg[k]}
		if IsSecret(k) {
			e.Value, e.Sealed = s.box.Seal(e.Value), true
		}
		out = append(out, e)
	}
	return out
}

// validate reports every missing and every malformed key at once, before
// any request is made: Marketo URLs must name an allowed Marketo host, so
// credentials never go anywhere else. badTypes are keys parseConfig refused
// already.
func (s *Service) validate(cfg map[string]*string, badTypes map[string]string) error {
	invalid := map[string]string{}
	for k, why := range badTypes {
		invalid[k] = why
	}
	var missing []string
	for _, k := range RequiredKeys {
		if _, bad := invalid[k]; !bad && val(cfg, k) == "" {
			missing = append(missing, k)
		}
	}
	for _, k := range []string{KeyIdentityURL, KeyRESTURL, KeyOAuthCallback, KeyCallbackURL} {
		v := val(cfg, k)
		if v == "" {
			continue
		}
		var err error
		switch k {
		case KeyIdentityURL, KeyRESTURL:
			err = s.urls.CheckMarketoURL(v)
		case KeyCallbackURL:
			err = s.urls.CheckCallbackURL(v)
		default:
			if why := checkURL(k, v); why != "" {
				invalid[k] = why
			}
		}
		if err != nil {
			invalid[k] = k + " " + err.Error()
		}
	}
	if v := val(cfg, KeyEventsEnabled); v != "" && v != "true" && v != "false" {
		invalid[KeyEventsEnabled] = KeyEventsEnabled + ` must be "true" or "false"`
	}
	if v := val(cfg, KeyRefreshInterval); v != "" {
		if _, err := ParseInterval(v); err != nil {
			invalid[KeyRefreshInterval] = err.Error()
		}
	}
	if v := val(cfg, KeyActivityTypes); v != "" {
		if _, err := ParseActivityTypes(v); err != nil {
			invalid[KeyActivityTypes] = err.Error()
		}
	}
	if len(missing) == 0 && len(invalid) == 0 {
		return nil
	}
	msg := "configuration is incomplete or malformed"
	if len(missing) > 0 {
		msg = fmt.Sprintf("configuration is missing %d required key(s)", len(missing))
		if len(invalid) > 0 {
			msg += fmt.Sprintf(" and has %d malformed one(s)", len(invalid))
		}
	} else {
		msg = fmt.Sprintf("configuration has %d malformed key(s)", len(invalid))
	}
	return &apperr.Error{Code: apperr.BadUserInput, Message: msg, Missing: missing, Invalid: invalid}
}

func isCredential(k string) bool {
	return slices.Contains(RequiredKeys, k)
}

func val(cfg map[string]*string, k string) string {
	if v := cfg[k]; v != nil {
		return *v
	}
	return ""
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}
