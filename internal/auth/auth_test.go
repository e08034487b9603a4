package auth_test

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/leadstream/leadstream/internal/auth"
	"github.com/leadstream/leadstream/internal/store/storetest"
)

func TestParse(t *testing.T) {
	tests := []struct {
		header, user, org string
		ok                bool
	}{
		{"User u1, Organization o1", "u1", "o1", true},
		{"organization o1,user u1", "u1", "o1", true},
		{"USER u1 , ORGANIZATION o1", "u1", "o1", true},
		{"", "", "", false},
		{"User u1", "", "", false},
		{"Bearer x", "", "", false},
		{"User , Organization o1", "", "", false},
		{"User u1, Organization o1, Team t", "", "", false},
	}
	for _, tt := range tests {
		u, o, err := auth.Parse(tt.header)
		if (err == nil) != tt.ok || u != tt.user || o != tt.org {
			t.Errorf("Parse(%q) = %q %q %v", tt.header, u, o, err)
		}
	}
}

func TestBootstrapAndAuthenticate(t *testing.T) {
	s := storetest.New(t)
	a := auth.New(s)
	ctx := context.Background()
	var out bytes.Buffer
	if err := a.Bootstrap(ctx, "", "", &out); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "ORGANIZATION_SECRET=org_") {
		t.Fatalf("first start printed %q", out.String())
	}
	out.Reset()
	if err := a.Bootstrap(ctx, "", "", &out); err != nil || out.Len() != 0 {
		t.Fatalf("second start printed %q, %v", out.String(), err)
	}
	// Given secrets are idempotent.
	for range 2 {
		if err := a.Bootstrap(ctx, "orgsecret", "usersecret", &out); err != nil {
			t.Fatal(err)
		}
	}
	id, err := a.Authenticate(ctx, "User usersecret, Organization orgsecret")
	if err != nil || id.OrgID == "" {
		t.Fatalf("authenticate: %+v %v", id, err)
	}
	other, err := a.CreatePair(ctx, "org2", "user2")
	if err != nil || other.OrgID == id.OrgID {
		t.Fatalf("second pair: %+v %v", other, err)
	}
	for _, h := range []string{"User usersecret, Organization org2", "User wrong, Organization orgsecret", "User usersecret"} {
		if _, err := a.Authenticate(ctx, h); !errors.Is(err, auth.ErrUnauthenticated) {
			t.Errorf("Authenticate(%q) err = %v", h, err)
		}
	}
}
