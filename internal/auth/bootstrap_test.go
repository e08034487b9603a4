package auth_test

import (
	"bytes"
	"context"
	"fmt"
	"regexp"
	"sync"
	"testing"

	"go.mongodb.org/mongo-driver/bson"
	"go.mongodb.org/mongo-driver/mongo"
	"go.mongodb.org/mongo-driver/mongo/options"

	"github.com/leadstream/leadstream/internal/auth"
	"github.com/leadstream/leadstream/internal/store"
)

// Replicas that start together on one store bootstrap the organization
// once: from the configured secrets, or, with none, one organization whose
// secrets exactly one replica prints.
func TestBootstrapReplicasTogether(t *testing.T) {
	uri, stop, err := store.StartEmbedded(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	client, err := mongo.Connect(context.Background(), options.Client().ApplyURI(uri).SetDirect(true))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Disconnect(context.Background())
	for _, tc := range []struct {
		name                  string
		orgSecret, userSecret string
	}{
		{"from secrets", "org_together", "usr_together"},
		{"generated", "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			db := "bootstrap_" + regexp.MustCompile(`\W`).ReplaceAllString(tc.name, "_")
			const n = 4
			auths := make([]*auth.Authenticator, n)
			outs := make([]bytes.Buffer, n)
			for i := range n {
				st, err := store.Open(context.Background(), store.Options{URI: uri, Database: db})
				if err != nil {
					t.Fatal(err)
				}
				defer st.Close(context.Background())
				auths[i] = auth.New(st)
			}
			errs := make([]error, n)
			var wg sync.WaitGroup
			start := make(chan struct{})
			for i := range n {
				wg.Go(func() {
					<-start
					errs[i] = auths[i].Bootstrap(context.Background(), tc.orgSecret, tc.userSecret, &outs[i])
				})
			}
			close(start)
			wg.Wait()
			header := fmt.Sprintf("User %s, Organization %s", tc.userSecret, tc.orgSecret)
			printed := 0
			for i := range n {
				if errs[i] != nil {
					t.Fatalf("replica %d: %v", i, errs[i])
				}
				if m := regexp.MustCompile(`Authorization: (User \S+, Organization \S+)`).FindStringSubmatch(outs[i].String()); m != nil {
					printed++
					header = m[1]
				}
			}
			if want := map[bool]int{true: 0, false: 1}[tc.orgSecret != ""]; printed != want {
				t.Fatalf("%d replicas printed secrets, want %d", printed, want)
			}
			for _, col := range []string{"organizations", "users"} {
				c, err := client.Database(db).Collection(col).CountDocuments(context.Background(), bson.D{})
				if err != nil {
					t.Fatal(err)
				}
				if c != 1 {
					t.Fatalf("%d %s after %d replicas bootstrapped, want 1", c, col, n)
				}
			}
			var first auth.Identity
			for i, a := range auths {
				id, err := a.Authenticate(context.Background(), header)
				if err != nil {
					t.Fatalf("replica %d refuses the bootstrapped secrets: %v", i, err)
				}
				if i == 0 {
					first = id
				} else if id != first {
					t.Fatalf("replica %d authenticates as %+v, replica 0 as %+v", i, id, first)
				}
			}
		})
	}
}
