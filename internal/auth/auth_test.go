package auth_test

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/leadstream/leadstream/internal/auth"
	"github.com/leadstream/leadstream/internal/secrets"
	"github.com/leadstream/leadstream/internal/store"
	"github.com/leadstream/leadstream/internal/store/storetest"
)

func TestParse(t *testing.T) {
	tests := []struct {
		header string
		want   auth.Credentials
		ok     bool
	}{
		{"User u1, Organization o1", auth.Credentials{User: "u1", Org: "o1"}, true},
		{"organization o1,user u1", auth.Credentials{User: "u1", Org: "o1"}, true},
		{"USER u1 , ORGANIZATION o1", auth.Credentials{User: "u1", Org: "o1"}, true},
		{"Element ist_x", auth.Credentials{Element: "ist_x"}, true},
		{"User u1, Organization o1, Element ist_x", auth.Credentials{User: "u1", Org: "o1", Element: "ist_x"}, true},
		{"element ist_x, user u1, organization o1", auth.Credentials{User: "u1", Org: "o1", Element: "ist_x"}, true},
		{"", auth.Credentials{}, false},
		{"User u1", auth.Credentials{}, false},
		{"User u1, Element ist_x", auth.Credentials{}, false},
		{"Element a, Element b", auth.Credentials{}, false},
		{"Element", auth.Credentials{}, false},
		{"Bearer x", auth.Credentials{}, false},
		{"User , Organization o1", auth.Credentials{}, false},
		{"User u1, Organization o1, Team t", auth.Credentials{}, false},
	}
	for _, tt := range tests {
		got, err := auth.Parse(tt.header)
		if (err == nil) != tt.ok || got != tt.want {
			t.Errorf("Parse(%q) = %+v %v", tt.header, got, err)
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

func TestElementToken(t *testing.T) {
	s := storetest.New(t)
	a := auth.New(s)
	ctx := context.Background()
	idA, err := a.CreatePair(ctx, "orgA", "userA")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.CreatePair(ctx, "orgB", "userB"); err != nil {
		t.Fatal(err)
	}
	in := store.Instance{ID: "inst-1", OrgID: idA.OrgID, Name: "x", ConnectorKey: "marketo", TokenHash: secrets.Hash("ist_good"), CreatedAt: time.Now()}
	if err := s.InsertInstance(ctx, in); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		header string
		want   auth.Identity
		ok     bool
	}{
		{"Element ist_good", auth.Identity{OrgID: idA.OrgID, InstanceID: "inst-1", TokenHash: in.TokenHash}, true},
		{"User userA, Organization orgA, Element ist_good", auth.Identity{OrgID: idA.OrgID, UserID: idA.UserID, InstanceID: "inst-1", TokenHash: in.TokenHash}, true},
		{"User userB, Organization orgB, Element ist_good", auth.Identity{}, false},
		{"User userA, Organization wrong, Element ist_good", auth.Identity{}, false},
		{"Element ist_wrong", auth.Identity{}, false},
	}
	for _, tt := range tests {
		got, err := a.Authenticate(ctx, tt.header)
		if (err == nil) != tt.ok || got != tt.want {
			t.Errorf("Authenticate(%q) = %+v, %v", tt.header, got, err)
		}
	}
	id, _ := a.Authenticate(ctx, "Element ist_good")
	if id.RequireFull() == nil || id.MayRead("inst-1") != nil || id.MayRead("inst-2") == nil ||
		id.Current(in.TokenHash) != nil || id.Current(secrets.Hash("ist_new")) == nil {
		t.Error("the scope of an Element token is not applied")
	}
	// Once the instance is gone (and the change announced), so is its token.
	if err := s.DeleteInstance(ctx, idA.OrgID, "inst-1"); err != nil {
		t.Fatal(err)
	}
	a.ForgetInstance("inst-1")
	if _, err := a.Authenticate(ctx, "Element ist_good"); !errors.Is(err, auth.ErrUnauthenticated) {
		t.Fatalf("token of a deleted instance: %v", err)
	}
}
