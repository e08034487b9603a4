package config

import (
	"strings"
	"testing"
	"time"
)

func TestLoad(t *testing.T) {
	tests := []struct {
		name    string
		env     map[string]string
		wantErr string // substring naming the variable
		check   func(t *testing.T, c Config)
	}{
		{name: "defaults", env: nil, check: func(t *testing.T, c Config) {
			if c.ListenAddr != ":8080" || c.PublicURL != "http://localhost:8080" || c.DataDir != "./data" ||
				c.MongoDatabase != "leadstream" || c.PollerMinInterval != 30*time.Second || c.NotifyRetryBase != 4*time.Second ||
				len(c.MarketoHosts) != 1 || c.MarketoHosts[0] != "*.mktorest.com" || len(c.EgressAllow) != 0 {
				t.Fatalf("defaults wrong: %+v", c)
			}
		}},
		{name: "port feeds listen and public url", env: map[string]string{"PORT": "9000"}, check: func(t *testing.T, c Config) {
			if c.ListenAddr != ":9000" || c.PublicURL != "http://localhost:9000" {
				t.Fatalf("got %q %q", c.ListenAddr, c.PublicURL)
			}
		}},
		{name: "listen addr wins", env: map[string]string{"PORT": "9000", "LISTEN_ADDR": "127.0.0.1:7000", "PUBLIC_URL": "https://gw.example.com/"}, check: func(t *testing.T, c Config) {
			if c.ListenAddr != "127.0.0.1:7000" || c.PublicURL != "https://gw.example.com" {
				t.Fatalf("got %q %q", c.ListenAddr, c.PublicURL)
			}
		}},
		{name: "secret key decoded", env: map[string]string{"SECRET_KEY": "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="}, check: func(t *testing.T, c Config) {
			if len(c.SecretKey) != 32 {
				t.Fatalf("key len %d", len(c.SecretKey))
			}
		}},
		{name: "bad port", env: map[string]string{"PORT": "http"}, wantErr: "PORT"},
		{name: "relative public url", env: map[string]string{"PUBLIC_URL": "/gw"}, wantErr: "PUBLIC_URL"},
		{name: "short secret key", env: map[string]string{"SECRET_KEY": "c2hvcnQ="}, wantErr: "SECRET_KEY"},
		{name: "mongo without key", env: map[string]string{"MONGODB_URI": "mongodb://db:27017"}, wantErr: "SECRET_KEY is required"},
		{name: "bad mongo uri", env: map[string]string{"MONGODB_URI": "postgres://x"}, wantErr: "MONGODB_URI"},
		{name: "half bootstrap", env: map[string]string{"USER_SECRET": "u"}, wantErr: "ORGANIZATION_SECRET"},
		{name: "bad interval", env: map[string]string{"POLLER_MIN_INTERVAL": "soon"}, wantErr: "POLLER_MIN_INTERVAL"},
		{name: "bad retry base", env: map[string]string{"NOTIFY_RETRY_BASE": "-1s"}, wantErr: "NOTIFY_RETRY_BASE"},
		{name: "bad log level", env: map[string]string{"LOG_LEVEL": "loud"}, wantErr: "LOG_LEVEL"},
		{name: "bad log format", env: map[string]string{"LOG_FORMAT": "xml"}, wantErr: "LOG_FORMAT"},
		{name: "short organization secret", env: map[string]string{"ORGANIZATION_SECRET": "org_a", "USER_SECRET": "usr_long_enough_secret"}, wantErr: "ORGANIZATION_SECRET is shorter than 16"},
		{name: "short user secret", env: map[string]string{"ORGANIZATION_SECRET": "org_long_enough_secret", "USER_SECRET": "usr_b"}, wantErr: "USER_SECRET is shorter than 16"},
		{name: "bad marketo hosts", env: map[string]string{"MARKETO_HOSTS": "https://x/y"}, wantErr: "MARKETO_HOSTS"},
		{name: "bad egress allow", env: map[string]string{"EGRESS_ALLOW": "local"}, wantErr: "EGRESS_ALLOW"},
		{name: "bad limit", env: map[string]string{"GRAPHQL_MAX_DEPTH": "0"}, wantErr: "GRAPHQL_MAX_DEPTH"},
		{name: "bad timeout", env: map[string]string{"GRAPHQL_TIMEOUT": "forever"}, wantErr: "GRAPHQL_TIMEOUT"},
		{name: "egress and limits", env: map[string]string{"MARKETO_HOSTS": "127.0.0.1, *.mktorest.com", "EGRESS_ALLOW": "127.0.0.0/8", "SSE_PER_ORGANIZATION": "7"}, check: func(t *testing.T, c Config) {
			if len(c.MarketoHosts) != 2 || len(c.EgressAllow) != 1 || c.Limits.SSEPerOrg != 7 || c.Limits.MaxBodyBytes != 1<<20 {
				t.Fatalf("got %v %v %+v", c.MarketoHosts, c.EgressAllow, c.Limits)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Load(func(k string) string { return tt.env[k] })
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want mention of %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tt.check(t, c)
		})
	}
}
