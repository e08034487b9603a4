package graph

import (
	"testing"

	"github.com/99designs/gqlgen/graphql"
)

func TestRenderKey(t *testing.T) {
	oc := func(q, op string, vars map[string]any) *graphql.OperationContext {
		return &graphql.OperationContext{RawQuery: q, OperationName: op, Variables: vars}
	}
	base := renderKey(oc("subscription { a }", "", map[string]any{"id": "1", "after": nil}))
	same := renderKey(oc("subscription { a }", "", map[string]any{"after": nil, "id": "1"}))
	if base != same {
		t.Fatal("variable order changed the key")
	}
	for _, other := range []*graphql.OperationContext{
		oc("subscription { b }", "", map[string]any{"id": "1", "after": nil}),
		oc("subscription { a }", "Op", map[string]any{"id": "1", "after": nil}),
		oc("subscription { a }", "", map[string]any{"id": "2", "after": nil}),
	} {
		if renderKey(other) == base {
			t.Fatalf("%+v shares a key with another query", other)
		}
	}
}
