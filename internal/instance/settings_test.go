package instance

import (
	"bytes"
	"slices"
	"testing"
	"time"

	"github.com/leadstream/leadstream/internal/apperr"
	"github.com/leadstream/leadstream/internal/egress"
	"github.com/leadstream/leadstream/internal/secrets"
	"github.com/leadstream/leadstream/internal/store"
)

func TestParseInterval(t *testing.T) {
	tests := []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"5", 5 * time.Minute, true},
		{" 15 ", 15 * time.Minute, true},
		{"30s", 30 * time.Second, true},
		{"1h30m", 90 * time.Minute, true},
		{"0", 0, false},
		{"-5", 0, false},
		{"-1s", 0, false},
		{"often", 0, false},
	}
	for _, tt := range tests {
		got, err := ParseInterval(tt.in)
		if (err == nil) != tt.ok || got != tt.want {
			t.Errorf("ParseInterval(%q) = %v, %v", tt.in, got, err)
		}
	}
}

func TestParseActivityTypes(t *testing.T) {
	tests := []struct {
		in   string
		want []int
		ok   bool
	}{
		{"12,13,37", []int{12, 13, 37}, true},
		{" 1 , 2,", []int{1, 2}, true},
		{"1,2,3,4,5,6,7,8,9,10", []int{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, true},
		{"1,2,3,4,5,6,7,8,9,10,11", nil, false},
		{"a,b", nil, false},
		{"0", nil, false},
		{",", nil, false},
	}
	for _, tt := range tests {
		got, err := ParseActivityTypes(tt.in)
		if (err == nil) != tt.ok || !slices.Equal(got, tt.want) {
			t.Errorf("ParseActivityTypes(%q) = %v, %v", tt.in, got, err)
		}
	}
}

func TestSettingsOfDecryptsAndDefaults(t *testing.T) {
	box, _ := secrets.NewBox(bytes.Repeat([]byte{3}, 32))
	in := store.Instance{ID: "i1", Config: []store.ConfigEntry{
		{Key: KeyAPIKey, Value: "id"},
		{Key: KeyAPISecret, Value: box.Seal("sec"), Sealed: true},
		{Key: KeyEventsEnabled, Value: "true"},
		{Key: KeyCallbackURL, Value: "https://cb"},
	}}
	s, err := SettingsOf(in, box)
	if err != nil || s.ClientSecret != "sec" || !s.EventsEnabled || s.CallbackURL != "https://cb" ||
		s.RefreshInterval != DefaultRefreshInterval || !slices.Equal(s.ActivityTypeIDs, DefaultActivityTypes) {
		t.Fatalf("settings = %+v, %v", s, err)
	}
	other, _ := secrets.NewBox(bytes.Repeat([]byte{4}, 32))
	if _, err := SettingsOf(in, other); err == nil {
		t.Fatal("a wrong key opened the secret")
	}
}

func TestValidateReportsEverything(t *testing.T) {
	s := func(v string) *string { return &v }
	svc := &Service{urls: egress.New(egress.Policy{MarketoHosts: []string{"*.mktorest.com"}})}
	err := svc.validate(map[string]*string{
		KeyRESTURL: s("ftp://x"), KeyEventsEnabled: s("yes"), KeyCallbackURL: s("/cb"),
		KeyIdentityURL: s("https://127.0.0.1/identity"), KeyAPIKey: s(""),
	}, map[string]string{KeyAPIKey: "oauth.api.key must be a string", KeyRefreshInterval: "bad type"})
	ae, ok := apperr.As(err)
	if !ok || ae.Code != apperr.BadUserInput {
		t.Fatalf("err = %v", err)
	}
	// A key of the wrong type (badTypes) is malformed, not also missing.
	if !slices.Equal(ae.Missing, []string{KeyAPISecret}) {
		t.Fatalf("missing = %v", ae.Missing)
	}
	for _, k := range []string{KeyRESTURL, KeyEventsEnabled, KeyCallbackURL, KeyIdentityURL, KeyAPIKey, KeyRefreshInterval} {
		if ae.Invalid[k] == "" {
			t.Fatalf("%s not reported invalid: %v", k, ae.Invalid)
		}
	}
}

func TestParseConfigNormalizes(t *testing.T) {
	tests := []struct {
		name    string
		raw     string
		want    map[string]string
		invalid []string
	}{
		{"strings as they are", `{"event.notification.enabled":"true","event.poller.refresh_interval":"30s"}`,
			map[string]string{KeyEventsEnabled: "true", KeyRefreshInterval: "30s"}, nil},
		{"booleans and numbers where a key means one",
			`{"event.notification.enabled":true,"event.poller.refresh_interval":5,"event.poller.activityTypeIds":[12,13,37]}`,
			map[string]string{KeyEventsEnabled: "true", KeyRefreshInterval: "5", KeyActivityTypes: "12,13,37"}, nil},
		{"false and one id", `{"event.notification.enabled":false,"event.poller.activityTypeIds":12}`,
			map[string]string{KeyEventsEnabled: "false", KeyActivityTypes: "12"}, nil},
		{"a boolean or number where a key means none",
			`{"oauth.api.key":true,"marketo.rest.url":5,"event.notification.enabled":1,"event.poller.refresh_interval":true,"event.poller.activityTypeIds":["12"]}`,
			nil, []string{KeyActivityTypes, KeyEventsEnabled, KeyRefreshInterval, KeyRESTURL, KeyAPIKey}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, bad, err := parseConfig([]byte(tt.raw), false)
			if err != nil {
				t.Fatal(err)
			}
			if tt.invalid != nil {
				var keys []string
				for k := range bad {
					keys = append(keys, k)
				}
				slices.Sort(keys)
				want := slices.Sorted(slices.Values(tt.invalid))
				if !slices.Equal(keys, want) {
					t.Fatalf("invalid = %v, want %v", keys, want)
				}
				return
			}
			if len(bad) > 0 {
				t.Fatalf("invalid: %v", bad)
			}
			if len(got) != len(tt.want) {
				t.Fatalf("got %d keys, want %d", len(got), len(tt.want))
			}
			for k, v := range tt.want {
				if got[k] == nil || *got[k] != v {
					t.Errorf("%s = %v, want %q", k, got[k], v)
				}
			}
		})
	}
}
