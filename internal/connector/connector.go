// Package connector lists the systems the gateway connects to. A second
// connector joins by adding an entry here; resolvers only read the registry.
package connector

// Connector describes one system a user can provision instances of.
type Connector struct {
	ID            string
	Key           string
	Name          string
	Description   string
	Image         *string
	Active        bool
	TypeOauth     bool
	ProvisionType string
}

// Registry is the set of connectors, in display order.
type Registry struct {
	list  []Connector
	byKey map[string]Connector
}

// NewRegistry returns a registry of the given connectors.
func NewRegistry(cs ...Connector) *Registry {
	r := &Registry{byKey: map[string]Connector{}}
	for _, c := range cs {
		r.list = append(r.list, c)
		r.byKey[c.Key] = c
	}
	return r
}

// Default is the registry the gateway serves.
func Default() *Registry { return NewRegistry(Marketo) }

// Marketo is Adobe Marketo Engage, reached through its REST API.
var Marketo = Connector{
	ID:            "marketo",
	Key:           "marketo",
	Name:          "Marketo",
	Description:   "Marketo is a marketing automation platform: receive its lead and activity events (REST Activities API and webhooks) as one GraphQL subscription stream.",
	Active:        true,
	TypeOauth:     true,
	ProvisionType: "OAUTH_TEMPLATE",
}

// All returns every connector.
func (r *Registry) All() []Connector { return r.list }

// Get returns the connector with key.
func (r *Registry) Get(key string) (Connector, bool) {
	c, ok := r.byKey[key]
	return c, ok
}
