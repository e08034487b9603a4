// Package instance provisions and manages Marketo instances: validation of
// their configuration, credential checks, secrets sealed at rest, and the
// settings the poller, webhook receiver and notifier read from them.
package instance

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/leadstream/leadstream/internal/apperr"
	"github.com/leadstream/leadstream/internal/secrets"
	"github.com/leadstream/leadstream/internal/store"
)

// Configuration keys, exactly as in the Marketo instance JSON.
const (
	KeyAPIKey          = "oauth.api.key"
	KeyAPISecret       = "oauth.api.secret"
	KeyIdentityURL     = "marketo.identity.url"
	KeyRESTURL         = "marketo.rest.url"
	KeyOAuthCallback   = "oauth.callback.url"
	KeyEventsEnabled   = "event.notification.enabled"
	KeyCallbackURL     = "event.notification.callback.url"
	KeySignatureKey    = "event.notification.signature.key"
	KeyRefreshInterval = "event.poller.refresh_interval"
	KeyActivityTypes   = "event.poller.activityTypeIds"
)

// RequiredKeys must be present unless a connect code supplies them.
var RequiredKeys = []string{KeyAPIKey, KeyAPISecret, KeyIdentityURL, KeyRESTURL}

// secretKeys are sealed at rest and redacted in answers.
var secretKeys = map[string]bool{KeyAPISecret: true, KeySignatureKey: true}

// knownKeys are every key the gateway understands.
var knownKeys = map[string]bool{
	KeyAPIKey: true, KeyAPISecret: true, KeyIdentityURL: true, KeyRESTURL: true, KeyOAuthCallback: true,
	KeyEventsEnabled: true, KeyCallbackURL: true, KeySignatureKey: true, KeyRefreshInterval: true, KeyActivityTypes: true,
}

// IsSecret reports whether a key's value is a secret.
func IsSecret(key string) bool { return secretKeys[key] }

// Redacted is what answers show instead of a secret.
const Redacted = "********"

// DefaultActivityTypes are polled when the configuration names none:
// New Lead, Change Data Value, Delete Lead.
var DefaultActivityTypes = []int{12, 13, 37}

// DefaultRefreshInterval applies when the configuration names none.
const DefaultRefreshInterval = 5 * time.Minute

// kinds says which keys mean a boolean or a number, so a client may send
// them as JSON booleans and numbers (as the seed's instance JSON does);
// they are stored and shown as strings.
var kinds = map[string]string{
	KeyEventsEnabled:   "boolean",
	KeyRefreshInterval: "number",
	KeyActivityTypes:   "numbers",
}

// parseConfig reads a configuration object. Values are strings, or for
// the keys in kinds JSON booleans, numbers (and for activity types a list
// of numbers), normalized to the string form. With allowNull, null values
// mean "remove this key". Values of the wrong type are left out and
// returned as invalid (key → why), for validate to report with the rest.
func parseConfig(raw json.RawMessage, allowNull bool) (map[string]*string, map[string]string, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return map[string]*string{}, nil, nil
	}
	var obj map[string]any
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber() // "5" stays "5", not "5e+00"
	if err := dec.Decode(&obj); err != nil || obj == nil {
		return nil, nil, &apperr.Error{Code: apperr.BadUserInput, Message: "configuration must be an object of string values", Invalid: map[string]string{"configuration": "must be an object"}}
	}
	out := map[string]*string{}
	invalid := map[string]string{}
	for k, v := range obj {
		if v == nil {
			if allowNull {
				out[k] = nil
			}
			continue
		}
		if s, ok := normalize(kinds[k], v); ok {
			out[k] = &s
			continue
		}
		switch kinds[k] {
		case "boolean":
			invalid[k] = k + " must be true or false"
		case "number":
			invalid[k] = k + " must be a number of minutes or a duration string"
		case "numbers":
			invalid[k] = k + " must be comma-separated activity type ids or a list of numbers"
		default:
			invalid[k] = k + " must be a string"
		}
	}
	return out, invalid, nil
}

// normalize turns a decoded JSON value of a key of the given kind into its
// stored string form.
func normalize(kind string, v any) (string, bool) {
	switch v := v.(type) {
	case string:
		return v, true
	case bool:
		return strconv.FormatBool(v), kind == "boolean"
	case json.Number:
		return v.String(), kind == "number" || kind == "numbers"
	case []any:
		if kind != "numbers" || len(v) == 0 {
			return "", false
		}
		parts := make([]string, len(v))
		for i, e := range v {
			n, ok := e.(json.Number)
			if !ok {
				return "", false
			}
			parts[i] = n.String()
		}
		return strings.Join(parts, ","), true
	}
	return "", false
}

// EventsEnabled reports whether an instance's events are polled.
func EventsEnabled(in store.Instance) bool {
	e, ok := in.Get(KeyEventsEnabled)
	return ok && e.Value == "true"
}

// Settings is an instance's configuration, decrypted and parsed.
type Settings struct {
	ClientID, ClientSecret string
	IdentityURL, RESTURL   string
	EventsEnabled          bool
	CallbackURL            string
	SignatureKey           string
	RefreshInterval        time.Duration
	ActivityTypeIDs        []int
}

// SettingsOf decrypts and parses an instance's stored configuration.
func SettingsOf(in store.Instance, box *secrets.Box) (Settings, error) {
	m := map[string]string{}
	for _, e := range in.Config {
		v := e.Value
		if e.Sealed {
			var err error
			if v, err = box.Open(v); err != nil {
				return Settings{}, fmt.Errorf("instance %s: %s: %w", in.ID, e.Key, err)
			}
		}
		m[e.Key] = v
	}
	s := Settings{
		ClientID: m[KeyAPIKey], ClientSecret: m[KeyAPISecret],
		IdentityURL: m[KeyIdentityURL], RESTURL: m[KeyRESTURL],
		EventsEnabled: EventsEnabled(in),
		CallbackURL:   m[KeyCallbackURL], SignatureKey: m[KeySignatureKey],
		RefreshInterval: DefaultRefreshInterval, ActivityTypeIDs: DefaultActivityTypes,
	}
	if v := m[KeyRefreshInterval]; v != "" {
		d, err := ParseInterval(v)
		if err != nil {
			return s, err
		}
		s.RefreshInterval = d
	}
	if v := m[KeyActivityTypes]; v != "" {
		ids, err := ParseActivityTypes(v)
		if err != nil {
			return s, err
		}
		s.ActivityTypeIDs = ids
	}
	return s, nil
}

// ParseInterval reads a poll interval: whole minutes ("5") or a Go duration ("30s").
func ParseInterval(v string) (time.Duration, error) {
	v = strings.TrimSpace(v)
	if n, err := strconv.Atoi(v); err == nil {
		if n <= 0 {
			return 0, fmt.Errorf("%s must be positive", KeyRefreshInterval)
		}
		return time.Duration(n) * time.Minute, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("%s must be minutes (\"5\") or a duration (\"30s\"), got %q", KeyRefreshInterval, v)
	}
	return d, nil
}

// ParseActivityTypes reads a comma-separated list of at most 10 activity type ids.
func ParseActivityTypes(v string) ([]int, error) {
	var ids []int
	for _, p := range strings.Split(v, ",") {
		p = strings.TrimSpace(p)
		if p == "" {
			continue
		}
		n, err := strconv.Atoi(p)
		if err != nil || n <= 0 {
			return nil, fmt.Errorf("%s must be comma-separated positive integers, got %q", KeyActivityTypes, p)
		}
		ids = append(ids, n)
	}
	if len(ids) == 0 {
		return nil, fmt.Errorf("%s names no activity type", KeyActivityTypes)
	}
	if len(ids) > 10 {
		return nil, fmt.Errorf("%s has %d ids; Marketo takes at most 10", KeyActivityTypes, len(ids))
	}
	return ids, nil
}

// checkURL reports why v is not an absolute http(s) URL, or "".
func checkURL(key, v string) string {
	u, err := url.Parse(v)
	if err != nil || !u.IsAbs() || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
		return fmt.Sprintf("%s must be an absolute http(s) URL", key)
	}
	return ""
}
