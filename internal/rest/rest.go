// Package rest serves the seed's REST surface (GET /elements/{key}/oauth/url,
// /instances) with the seed's JSON shapes, over the same services as the
// GraphQL resolvers: validation, redaction, tenancy, the Element token's
// scope and the connect flow all live there, not here. Handlers read the
// caller, decode the body strictly, call one service method, map the answer.
package rest

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"time"

	"github.com/leadstream/leadstream/internal/apperr"
	"github.com/leadstream/leadstream/internal/auth"
	"github.com/leadstream/leadstream/internal/connect"
	"github.com/leadstream/leadstream/internal/connector"
	"github.com/leadstream/leadstream/internal/instance"
	"github.com/leadstream/leadstream/internal/store"
)

// Authenticate checks a request's credentials; it is the app's, shared
// with GraphQL over HTTP, so both are throttled and scoped alike.
type Authenticate func(r *http.Request) (auth.Identity, error)

// Connect starts the hosted connect flow.
type Connect interface {
	CreateURL(ctx context.Context, orgID string, in connect.URLRequest) (string, error)
}

// Instances provisions, reads and changes instances.
type Instances interface {
	Create(ctx context.Context, orgID string, in instance.CreateInput) (instance.Created, error)
	Read(ctx context.Context, who auth.Identity, id string) (store.Instance, error)
	List(ctx context.Context, orgID string) ([]store.Instance, error)
	Update(ctx context.Context, orgID, id string, in instance.UpdateInput) (store.Instance, error)
	Delete(ctx context.Context, orgID, id string) error
	RotateToken(ctx context.Context, orgID, id string) (store.Instance, string, error)
	Redacted(in store.Instance) map[string]string
	WebhookURL(id, secret string) string
}

// Connectors finds a connector by key.
type Connectors interface {
	Get(key string) (connector.Connector, bool)
}

// API is the REST surface's dependencies; its methods are the handlers.
type API struct {
	auth      Authenticate
	instances Instances
	connect   Connect
	conns     Connectors
	log       *slog.Logger
}

// New returns the REST surface over the given services.
func New(a Authenticate, inst Instances, c Connect, conns Connectors, log *slog.Logger) *API {
	return &API{auth: a, instances: inst, connect: c, conns: conns, log: log}
}

// handler authenticates the caller and writes what fn returns as JSON with
// 200, or its error through the error table.
func (api *API) handler(fn func(r *http.Request, who auth.Identity) (any, error)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		who, err := api.auth(r)
		if err != nil {
			api.fail(w, r, err)
			return
		}
		out, err := fn(r, who)
		if err != nil {
			api.fail(w, r, err)
			return
		}
		writeJSON(w, http.StatusOK, out)
	})
}

// OAuthURL is the seed's step 1: GET /elements/{key}/oauth/url?apiKey=&apiSecret=&callbackUrl=&state=
// answers {"element": key, "oauthUrl": the hosted connect page}.
func (api *API) OAuthURL() http.Handler {
	return api.handler(func(r *http.Request, who auth.Identity) (any, error) {
		if err := who.RequireFull(); err != nil {
			return nil, err
		}
		q := r.URL.Query()
		key := r.PathValue("key")
		u, err := api.connect.CreateURL(r.Context(), who.OrgID, connect.URLRequest{
			ConnectorKey: key, APIKey: q.Get("apiKey"), APISecret: q.Get("apiSecret"),
			CallbackURL: q.Get("callbackUrl"), State: q.Get("state"),
		})
		if err != nil {
			return nil, err
		}
		return oauthURLJSON{Element: key, OAuthURL: u}, nil
	})
}

type oauthURLJSON struct {
	Element  string `json:"element"`
	OAuthURL string `json:"oauthUrl"`
}

// createBody is the seed's instance JSON.
type createBody struct {
	Element *struct {
		Key string `json:"key"`
	} `json:"element"`
	ProviderData *struct {
		Code string `json:"code"`
	} `json:"providerData"`
	Configuration json.RawMessage `json:"configuration"`
	Tags          []string        `json:"tags"`
	Name          string          `json:"name"`
}

// CreateInstance is the seed's step 2: POST /instances with the seed's
// instance JSON; the answer carries the token and the webhook secret once.
func (api *API) CreateInstance() http.Handler {
	return api.handler(func(r *http.Request, who auth.Identity) (any, error) {
		if err := who.RequireFull(); err != nil {
			return nil, err
		}
		var b createBody
		if err := decode(r, &b); err != nil {
			return nil, err
		}
		if b.Element == nil || b.Element.Key == "" {
			return nil, &apperr.Error{Code: apperr.BadUserInput, Message: `element.key is required, for example {"element": {"key": "marketo"}}`,
				Invalid: map[string]string{"element.key": "is required"}}
		}
		in := instance.CreateInput{ConnectorKey: b.Element.Key, Name: b.Name, Tags: b.Tags, Config: []byte(b.Configuration)}
		if b.ProviderData != nil {
			in.Code = b.ProviderData.Code
		}
		c, err := api.instances.Create(r.Context(), who.OrgID, in)
		if err != nil {
			return nil, err
		}
		out := api.instanceJSON(c.Instance, c.WebhookSecret)
		out.Token = c.Token
		return out, nil
	})
}

// ListInstances is GET /instances: the organization's instances, newest first.
func (api *API) ListInstances() http.Handler {
	return api.handler(func(r *http.Request, who auth.Identity) (any, error) {
		if err := who.RequireFull(); err != nil {
			return nil, err
		}
		list, err := api.instances.List(r.Context(), who.OrgID)
		if err != nil {
			return nil, err
		}
		out := make([]instanceJSON, 0, len(list))
		for _, in := range list {
			out = append(out, api.instanceJSON(in, ""))
		}
		return out, nil
	})
}

// GetInstance is GET /instances/{id}; an Element token reads its own.
func (api *API) GetInstance() http.Handler {
	return api.handler(func(r *http.Request, who auth.Identity) (any, error) {
		in, err := api.instances.Read(r.Context(), who, r.PathValue("id"))
		if err != nil {
			return nil, err
		}
		return api.instanceJSON(in, ""), nil
	})
}

// updateBody is updateInstance's input.
type updateBody struct {
	Name          *string         `json:"name"`
	Tags          *[]string       `json:"tags"`
	Disabled      *bool           `json:"disabled"`
	Configuration json.RawMessage `json:"configuration"`
}

// UpdateInstance is PATCH /instances/{id}, with updateInstance's fields.
func (api *API) UpdateInstance() http.Handler {
	return api.handler(func(r *http.Request, who auth.Identity) (any, error) {
		if err := who.RequireFull(); err != nil {
			return nil, err
		}
		var b updateBody
		if err := decode(r, &b); err != nil {
			return nil, err
		}
		in := instance.UpdateInput{Name: b.Name, Disabled: b.Disabled, Config: []byte(b.Configuration)}
		if b.Tags != nil {
			in.Tags, in.SetTags = *b.Tags, true
		}
		out, err := api.instances.Update(r.Context(), who.OrgID, r.PathValue("id"), in)
		if err != nil {
			return nil, err
		}
		return api.instanceJSON(out, ""), nil
	})
}

// DeleteInstance is DELETE /instances/{id}, answered 200 {}.
func (api *API) DeleteInstance() http.Handler {
	return api.handler(func(r *http.Request, who auth.Identity) (any, error) {
		if err := who.RequireFull(); err != nil {
			return nil, err
		}
		if err := api.instances.Delete(r.Context(), who.OrgID, r.PathValue("id")); err != nil {
			return nil, err
		}
		return struct{}{}, nil
	})
}

// RotateToken is POST /instances/{id}/token: a new Element token, in this
// answer only; the old one is refused at once.
func (api *API) RotateToken() http.Handler {
	return api.handler(func(r *http.Request, who auth.Identity) (any, error) {
		if err := who.RequireFull(); err != nil {
			return nil, err
		}
		in, token, err := api.instances.RotateToken(r.Context(), who.OrgID, r.PathValue("id"))
		if err != nil {
			return nil, err
		}
		out := api.instanceJSON(in, "")
		out.Token = token
		return out, nil
	})
}

// instanceJSON is an instance as the seed shows it, plus this gateway's
// own fields (configuration, tags, eventsEnabled, webhookUrl, times).
type instanceJSON struct {
	ID                    string            `json:"id"`
	Name                  string            `json:"name"`
	Token                 string            `json:"token,omitempty"`
	Element               elementJSON       `json:"element"`
	ProvisionInteractions []any             `json:"provisionInteractions"`
	Valid                 bool              `json:"valid"`
	InvalidReason         string            `json:"invalidReason,omitempty"`
	Disabled              bool              `json:"disabled"`
	MaxCacheSize          int               `json:"maxCacheSize"`
	CacheTimeToLive       int               `json:"cacheTimeToLive"`
	CachingEnabled        bool              `json:"cachingEnabled"`
	DefaultTransformation bool              `json:"defaultTransformation"`
	Configuration         map[string]string `json:"configuration"`
	Tags                  []string          `json:"tags"`
	EventsEnabled         bool              `json:"eventsEnabled"`
	WebhookURL            string            `json:"webhookUrl"`
	CreatedAt             time.Time         `json:"createdAt"`
	UpdatedAt             time.Time         `json:"updatedAt"`
}

type elementJSON struct {
	ID                   string  `json:"id"`
	Name                 string  `json:"name"`
	Key                  string  `json:"key"`
	Description          string  `json:"description"`
	Image                *string `json:"image"`
	Active               bool    `json:"active"`
	Deleted              bool    `json:"deleted"`
	TypeOauth            bool    `json:"typeOauth"`
	TrialAccount         bool    `json:"trialAccount"`
	ElementProvisionType string  `json:"elementProvisionType"`
}

func (api *API) instanceJSON(in store.Instance, webhookSecret string) instanceJSON {
	c, _ := api.conns.Get(in.ConnectorKey)
	tags := in.Tags
	if tags == nil {
		tags = []string{}
	}
	return instanceJSON{
		ID: in.ID, Name: in.Name,
		Element: elementJSON{
			ID: c.ID, Name: c.Name, Key: c.Key, Description: c.Description, Image: c.Image,
			Active: c.Active, TypeOauth: c.TypeOauth, ElementProvisionType: c.ProvisionType,
		},
		ProvisionInteractions: []any{},
		Valid:                 in.Valid, InvalidReason: in.InvalidReason, Disabled: in.Disabled,
		Configuration: api.instances.Redacted(in), Tags: tags, EventsEnabled: instance.EventsEnabled(in),
		WebhookURL: api.instances.WebhookURL(in.ID, webhookSecret),
		CreatedAt:  in.CreatedAt, UpdatedAt: in.UpdatedAt,
	}
}
