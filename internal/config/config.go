// Package config loads the gateway's settings from the environment, once, at start-up.
package config

import (
	"encoding/base64"
	"fmt"
	"log/slog"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/leadstream/leadstream/internal/egress"
)

// MinSecretLen is the shortest organization or user secret accepted from
// the environment: anything shorter is guessable.
const MinSecretLen = 16

// Config is every setting the gateway reads from its environment.
type Config struct {
	ListenAddr string
	PublicURL  string
	// PublicURLDerived: PUBLIC_URL was not given, so it follows the port
	// actually listened on (which PORT=0 leaves to the system).
	PublicURLDerived  bool
	DataDir           string
	MongoURI          string
	MongoDatabase     string
	SecretKey         []byte // nil: generated into DataDir
	OrgSecret         string
	UserSecret        string
	PollerMinInterval time.Duration
	NotifyRetryBase   time.Duration
	// SubscriptionBuffer is how many events a subscriber may lag behind
	// before it is ended with a resumable error.
	SubscriptionBuffer int
	// NATSURL points the event log at an external JetStream cluster; empty
	// runs a NATS server inside the process.
	NATSURL   string
	NATSCreds string
	// EventsMaxAge is how long the event log keeps events.
	EventsMaxAge time.Duration
	// MarketoHosts (MARKETO_HOSTS) are the hosts Marketo URLs may name.
	MarketoHosts []string
	// EgressAllow (EGRESS_ALLOW) are internal ranges callbacks may reach.
	EgressAllow []netip.Prefix
	Limits      Limits
	// WebsocketInitTimeout is how long a websocket may take to send
	// connection_init; WebsocketKeepAlive is the ping interval.
	WebsocketInitTimeout time.Duration
	WebsocketKeepAlive   time.Duration
	LogLevel             slog.Level
	LogJSON              bool
}

// Limits bound what one client or organization can make the gateway do.
type Limits struct {
	// MaxBodyBytes bounds a GraphQL request body (GRAPHQL_MAX_BODY_BYTES).
	MaxBodyBytes int64
	// MaxTokens bounds the tokens the parser reads (GRAPHQL_MAX_TOKENS).
	MaxTokens int
	// MaxDepth bounds how deeply selections nest (GRAPHQL_MAX_DEPTH).
	MaxDepth int
	// MaxFields bounds the fields, aliases included, of one selection set
	// after fragments are spread (GRAPHQL_MAX_FIELDS).
	MaxFields int
	// MaxComplexity bounds gqlgen's complexity of an operation (GRAPHQL_MAX_COMPLEXITY).
	MaxComplexity int
	// OperationTimeout bounds a query or mutation (GRAPHQL_TIMEOUT).
	OperationTimeout time.Duration
	// ReadTimeout bounds receiving a request's headers and body (REQUEST_READ_TIMEOUT).
	ReadTimeout time.Duration
	// SubscriptionsPerConnection caps one websocket's subscriptions.
	SubscriptionsPerConnection int
	// WebsocketsPerOrg and SSEPerOrg cap an organization's streams.
	WebsocketsPerOrg int
	SSEPerOrg        int
	// AuthFailures failed authentications from one address within
	// AuthFailureWindow block that address for the rest of the window.
	AuthFailures      int
	AuthFailureWindow time.Duration
	// ConnectLinksPerOrg caps an organization's pending connect links.
	ConnectLinksPerOrg int
}

// DefaultLimits are generous for real use and small enough to keep one
// client from taking the gateway down.
func DefaultLimits() Limits {
	return Limits{
		MaxBodyBytes: 1 << 20, MaxTokens: 15000, MaxDepth: 15, MaxFields: 200, MaxComplexity: 5000,
		OperationTimeout: 30 * time.Second, ReadTimeout: 30 * time.Second,
		SubscriptionsPerConnection: 100, WebsocketsPerOrg: 1000, SSEPerOrg: 200,
		AuthFailures: 20, AuthFailureWindow: time.Minute, ConnectLinksPerOrg: 100,
	}
}

// Load reads the configuration through getenv. A bad value is reported as an
// error naming the variable and what is wrong with it, so start-up can stop
// with one clear line.
func Load(getenv func(string) string) (Config, error) {
	c := Config{
		DataDir:              "./data",
		MongoDatabase:        "leadstream",
		PollerMinInterval:    30 * time.Second,
		NotifyRetryBase:      4 * time.Second,
		SubscriptionBuffer:   256,
		EventsMaxAge:         720 * time.Hour,
		Limits:               DefaultLimits(),
		WebsocketInitTimeout: 10 * time.Second,
		WebsocketKeepAlive:   15 * time.Second,
	}
	port := "8080"
	if v := getenv("PORT"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 || n > 65535 {
			return c, fmt.Errorf("config: PORT=%q is not a port number (0-65535)", v)
		}
		port = v
	}
	c.ListenAddr = ":" + port
	if v := getenv("LISTEN_ADDR"); v != "" {
		if !strings.Contains(v, ":") {
			return c, fmt.Errorf("config: LISTEN_ADDR=%q is not host:port", v)
		}
		c.ListenAddr = v
	}
	c.PublicURL, c.PublicURLDerived = "http://localhost:"+port, true
	if v := getenv("PUBLIC_URL"); v != "" {
		u, err := url.Parse(v)
		if err != nil || !u.IsAbs() || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
			return c, fmt.Errorf("config: PUBLIC_URL=%q is not an absolute http(s) URL", v)
		}
		c.PublicURL, c.PublicURLDerived = v, false
	}
	c.PublicURL = strings.TrimRight(c.PublicURL, "/")
	if v := getenv("DATA_DIR"); v != "" {
		c.DataDir = v
	}
	c.MongoURI = getenv("MONGODB_URI")
	if c.MongoURI != "" && !strings.HasPrefix(c.MongoURI, "mongodb://") && !strings.HasPrefix(c.MongoURI, "mongodb+srv://") {
		return c, fmt.Errorf("config: MONGODB_URI must start with mongodb:// or mongodb+srv://")
	}
	if v := getenv("MONGODB_DATABASE"); v != "" {
		c.MongoDatabase = v
	}
	if v := getenv("SECRET_KEY"); v != "" {
		k, err := base64.StdEncoding.DecodeString(v)
		if err != nil {
			k, err = base64.RawStdEncoding.DecodeString(v)
		}
		if err != nil || len(k) != 32 {
			return c, fmt.Errorf("config: SECRET_KEY must be 32 bytes in base64 (openssl rand -base64 32)")
		}
		c.SecretKey = k
	} else if c.MongoURI != "" {
		return c, fmt.Errorf("config: SECRET_KEY is required when MONGODB_URI is set (openssl rand -base64 32)")
	}
	c.OrgSecret, c.UserSecret = getenv("ORGANIZATION_SECRET"), getenv("USER_SECRET")
	if (c.OrgSecret == "") != (c.UserSecret == "") {
		return c, fmt.Errorf("config: ORGANIZATION_SECRET and USER_SECRET must be set together")
	}
	for _, s := range [][2]string{{"ORGANIZATION_SECRET", c.OrgSecret}, {"USER_SECRET", c.UserSecret}} {
		if s[1] != "" && len(s[1]) < MinSecretLen {
			return c, fmt.Errorf("config: %s is shorter than %d characters; use a long random value", s[0], MinSecretLen)
		}
	}
	hosts := getenv("MARKETO_HOSTS")
	if hosts == "" {
		hosts = egress.DefaultMarketoHosts
	}
	var err error
	if c.MarketoHosts, err = egress.ParseHosts(hosts); err != nil {
		return c, fmt.Errorf("config: MARKETO_HOSTS: %w", err)
	}
	if c.EgressAllow, err = egress.ParseAllow(getenv("EGRESS_ALLOW")); err != nil {
		return c, fmt.Errorf("config: EGRESS_ALLOW: %w", err)
	}
	if err := c.Limits.load(getenv); err != nil {
		return c, err
	}
	if c.PollerMinInterval, err = duration(getenv, "POLLER_MIN_INTERVAL", c.PollerMinInterval); err != nil {
		return c, err
	}
	if c.NotifyRetryBase, err = duration(getenv, "NOTIFY_RETRY_BASE", c.NotifyRetryBase); err != nil {
		return c, err
	}
	if c.WebsocketInitTimeout, err = duration(getenv, "WEBSOCKET_INIT_TIMEOUT", c.WebsocketInitTimeout); err != nil {
		return c, err
	}
	if c.WebsocketKeepAlive, err = duration(getenv, "WEBSOCKET_KEEPALIVE", c.WebsocketKeepAlive); err != nil {
		return c, err
	}
	if v := getenv("SUBSCRIPTION_BUFFER"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 1<<20 {
			return c, fmt.Errorf("config: SUBSCRIPTION_BUFFER=%q is not a number of events (1-1048576)", v)
		}
		c.SubscriptionBuffer = n
	}
	c.NATSURL, c.NATSCreds = getenv("NATS_URL"), getenv("NATS_CREDS")
	if c.NATSCreds != "" && c.NATSURL == "" {
		return c, fmt.Errorf("config: NATS_CREDS is set but NATS_URL is not")
	}
	if c.NATSURL != "" {
		for _, u := range strings.Split(c.NATSURL, ",") {
			if p, err := url.Parse(strings.TrimSpace(u)); err != nil || p.Host == "" {
				return c, fmt.Errorf("config: NATS_URL=%q is not a list of nats:// URLs", c.NATSURL)
			}
		}
	}
	if c.EventsMaxAge, err = duration(getenv, "EVENTS_MAX_AGE", c.EventsMaxAge); err != nil {
		return c, err
	}
	switch v := strings.ToLower(getenv("LOG_LEVEL")); v {
	case "", "info":
		c.LogLevel = slog.LevelInfo
	case "debug":
		c.LogLevel = slog.LevelDebug
	case "warn", "warning":
		c.LogLevel = slog.LevelWarn
	case "error":
		c.LogLevel = slog.LevelError
	default:
		return c, fmt.Errorf("config: LOG_LEVEL=%q is not one of debug, info, warn, error", v)
	}
	switch v := strings.ToLower(getenv("LOG_FORMAT")); v {
	case "", "text":
	case "json":
		c.LogJSON = true
	default:
		return c, fmt.Errorf("config: LOG_FORMAT=%q is not text or json", v)
	}
	return c, nil
}

func duration(getenv func(string) string, name string, def time.Duration) (time.Duration, error) {
	v := getenv(name)
	if v == "" {
		return def, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		return def, fmt.Errorf("config: %s=%q is not a positive duration such as 30s", name, v)
	}
	return d, nil
}

func (l *Limits) load(getenv func(string) string) error {
	ints := []struct {
		name string
		v    *int
		max  int
	}{
		{"GRAPHQL_MAX_TOKENS", &l.MaxTokens, 1 << 24},
		{"GRAPHQL_MAX_DEPTH", &l.MaxDepth, 1000},
		{"GRAPHQL_MAX_FIELDS", &l.MaxFields, 1 << 20},
		{"GRAPHQL_MAX_COMPLEXITY", &l.MaxComplexity, 1 << 30},
		{"SUBSCRIPTIONS_PER_CONNECTION", &l.SubscriptionsPerConnection, 1 << 20},
		{"WEBSOCKETS_PER_ORGANIZATION", &l.WebsocketsPerOrg, 1 << 24},
		{"SSE_PER_ORGANIZATION", &l.SSEPerOrg, 1 << 24},
		{"AUTH_FAILURES_PER_ADDRESS", &l.AuthFailures, 1 << 24},
		{"CONNECT_LINKS_PER_ORGANIZATION", &l.ConnectLinksPerOrg, 1 << 24},
	}
	for _, f := range ints {
		if err := positive(getenv, f.name, f.v, f.max); err != nil {
			return err
		}
	}
	body := int(l.MaxBodyBytes)
	if err := positive(getenv, "GRAPHQL_MAX_BODY_BYTES", &body, 1<<30); err != nil {
		return err
	}
	l.MaxBodyBytes = int64(body)
	var err error
	for _, d := range []struct {
		name string
		v    *time.Duration
	}{{"GRAPHQL_TIMEOUT", &l.OperationTimeout}, {"REQUEST_READ_TIMEOUT", &l.ReadTimeout}, {"AUTH_FAILURE_WINDOW", &l.AuthFailureWindow}} {
		if *d.v, err = duration(getenv, d.name, *d.v); err != nil {
			return err
		}
	}
	return nil
}

func positive(getenv func(string) string, name string, v *int, maxV int) error {
	s := getenv(name)
	if s == "" {
		return nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > maxV {
		return fmt.Errorf("config: %s=%q is not a whole number from 1 to %d", name, s, maxV)
	}
	*v = n
	return nil
}
