package graph

import (
	"context"
	"sync"

	"github.com/99designs/gqlgen/graphql"
	"github.com/vektah/gqlparser/v2/ast"
	"github.com/vektah/gqlparser/v2/gqlerror"
)

// A subscription that must end with an error (slow subscriber, instance
// deleted) sends a nil event; the wrapper below then replaces that
// response's "null" complaint with the real error, on every transport.
// gqlgen gives a subscription resolver no other way to reach a response.

type streamEndKey struct{}

type streamEnd struct {
	mu  sync.Mutex
	err func() error
}

func setStreamEnd(ctx context.Context, err func() error) {
	if h, ok := ctx.Value(streamEndKey{}).(*streamEnd); ok {
		h.mu.Lock()
		h.err = err
		h.mu.Unlock()
	}
}

// StreamErrors is an operation middleware that lets subscriptions end with
// a presented error.
func StreamErrors(present graphql.ErrorPresenterFunc) graphql.OperationMiddleware {
	return func(ctx context.Context, next graphql.OperationHandler) graphql.ResponseHandler {
		oc := graphql.GetOperationContext(ctx)
		if oc == nil || oc.Operation == nil || oc.Operation.Operation != ast.Subscription {
			return next(ctx)
		}
		h := &streamEnd{}
		rh := next(context.WithValue(ctx, streamEndKey{}, h))
		return func(ctx context.Context) *graphql.Response {
			resp := rh(ctx)
			if resp == nil {
				return nil
			}
			h.mu.Lock()
			errFn := h.err
			h.mu.Unlock()
			if errFn != nil && len(resp.Errors) > 0 {
				if err := errFn(); err != nil {
					resp.Errors = []*gqlerror.Error{present(ctx, err)}
					resp.Data = []byte("null")
				}
			}
			return resp
		}
	}
}
