package graph

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/leadstream/leadstream/graph/model"
	"github.com/leadstream/leadstream/internal/connector"
	"github.com/leadstream/leadstream/internal/events"
	"github.com/leadstream/leadstream/internal/instance"
	"github.com/leadstream/leadstream/internal/store"
)

func (r *Resolver) instanceModel(in store.Instance, webhookSecret string) *model.Instance {
	cfg, _ := json.Marshal(r.Instances.Redacted(in))
	c, _ := r.Connectors.Get(in.ConnectorKey)
	m := &model.Instance{
		ID: in.ID, Name: in.Name, Connector: connectorModel(c), Configuration: events.JSON(cfg),
		Tags: in.Tags, Valid: in.Valid, Disabled: in.Disabled,
		WebhookURL: r.Instances.WebhookURL(in.ID, webhookSecret),
		CreatedAt:  in.CreatedAt, UpdatedAt: in.UpdatedAt,
	}
	if m.Tags == nil {
		m.Tags = []string{}
	}
	m.EventsEnabled = instance.EventsEnabled(in)
	if in.InvalidReason != "" {
		m.InvalidReason = &in.InvalidReason
	}
	if m.EventsEnabled {
		m.PollInterval, m.PollIntervalNotice = r.pollInterval(in)
	}
	return m
}

// pollInterval is the interval the poller uses for an instance, and a
// notice when the configured one is below the gateway's floor.
func (r *Resolver) pollInterval(in store.Instance) (*string, *string) {
	configured := instance.DefaultRefreshInterval
	e, ok := in.Get(instance.KeyRefreshInterval)
	if ok && e.Value != "" {
		d, err := instance.ParseInterval(e.Value)
		if err != nil {
			return nil, nil // validated on input; nothing sensible to say
		}
		configured = d
	}
	eff := r.Poller.EffectiveInterval(configured)
	iv := shortDuration(eff)
	if eff == configured {
		return &iv, nil
	}
	note := fmt.Sprintf("%s %q is below this gateway's floor (POLLER_MIN_INTERVAL=%s): polling every %s",
		instance.KeyRefreshInterval, e.Value, iv, iv)
	return &iv, &note
}

// shortDuration writes 5m rather than 5m0s.
func shortDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

func connectorModel(c connector.Connector) *model.Connector {
	return &model.Connector{
		ID: c.ID, Key: c.Key, Name: c.Name, Description: c.Description, Image: c.Image,
		Active: c.Active, TypeOauth: c.TypeOauth, ProvisionType: c.ProvisionType,
	}
}

func pollerStatus(ps store.PollState) *model.PollerStatus {
	m := &model.PollerStatus{LastPollAt: ps.LastPollAt, LastSuccessAt: ps.LastSuccessAt, EventsIngested: int(ps.EventsIngested)}
	if ps.LastError != "" {
		m.LastError = &ps.LastError
	}
	return m
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// now is the time at the store's precision.
func now() time.Time { return time.Now().UTC().Truncate(time.Millisecond) }
