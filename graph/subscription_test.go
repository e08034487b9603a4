package graph

import (
	"testing"

	"github.com/99designs/gqlgen/graphql"
)

func TestRenderKey(t *testing.T) {
	oc := func(q, op string, vars map[string]any) *graphql.OperationContext {
		return &graphql.OperationContext{RawQuery: q, OperationName: op, Variables: vars}
	}
	base := renderKey(oc("subscription { a }", "", map[string]any{"id": "1", "after": nil}), "org")
	same := renderKey(oc("subscription { a }", "", map[string]any{"after": nil, "id": "1"}), "org")
	if base != same {
		t.Fatal("variable order changed the key")
	}
	for _, tt := range []struct {
		oc  *graphql.OperationContext
		org string
	}{
		{oc("subscription { b }", "", map[string]any{"id": "1", "after": nil}), "org"},
		{oc("subscription { a }", "Op", map[string]any{"id": "1", "after": nil}), "org"},
		{oc("subscription { a }", "", map[string]any{"id": "2", "after": nil}), "org"},
		{oc("subscription { a }", "", map[string]any{"id": "1", "after": nil}), "other org"},
	} {
		if renderKey(tt.oc, tt.org) == base {
			t.Fatalf("%+v of %s shares a key with another query", tt.oc, tt.org)
		}
	}
}
