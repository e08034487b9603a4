package e2e

import (
	"bytes"
	"encoding/json"
	"net/http"
	"testing"
)

// procAuth is the organization the gateway processes bootstrap from their
// environment.
const procAuth = "User usr_proc_secret_1, Organization org_proc_secret_1"

// gql runs one GraphQL request against the gateway at base with procAuth
// and decodes its data into out; a transport error or a GraphQL error
// fails the test, with the tail of the gateway's log.
func gql(t *testing.T, base string, log func() string, query string, vars map[string]any, out any) {
	t.Helper()
	body, _ := json.Marshal(map[string]any{"query": query, "variables": vars})
	req, _ := http.NewRequest(http.MethodPost, base+"/graphql", bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", procAuth)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var r struct {
		Data   json.RawMessage
		Errors []any
	}
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil || len(r.Errors) > 0 {
		l := log()
		t.Fatalf("graphql on %s: %v %v\n… its log:\n%s", base, err, r.Errors, l[max(0, len(l)-4000):])
	}
	if out != nil {
		_ = json.Unmarshal(r.Data, out)
	}
}

// allEvents pages through every stored event of an instance, oldest
// first, each node with the fields selected.
func allEvents(t *testing.T, base string, log func() string, id, fields string) []map[string]any {
	t.Helper()
	var all []map[string]any
	var after any
	for {
		var out struct {
			Events struct {
				Edges []struct {
					Cursor string
					Node   map[string]any
				}
				PageInfo struct{ HasNextPage bool }
			}
		}
		gql(t, base, log, `query($id: ID!, $a: String) { events(instanceId: $id, after: $a, first: 500) { edges { cursor node { `+fields+` } } pageInfo { hasNextPage } } }`,
			map[string]any{"id": id, "a": after}, &out)
		for _, e := range out.Events.Edges {
			all = append(all, e.Node)
			after = e.Cursor
		}
		if !out.Events.PageInfo.HasNextPage {
			return all
		}
	}
}
