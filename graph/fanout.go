package graph

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"slices"

	"github.com/99designs/gqlgen/graphql"
	"github.com/vektah/gqlparser/v2/ast"
	"github.com/vektah/gqlparser/v2/gqlerror"

	"github.com/leadstream/leadstream/internal/events"
)

// One event reaches every subscriber of its instance. gqlgen would execute
// the subscription's selection for each of them, and on a busy instance
// that execution is most of the gateway's work. Subscribers with the same
// query and variables get the same bytes, so the first one renders the event
// and the others reuse its answer (events.Event.Memo).
//
// SharedRendering wraps the generated schema: for a subscription it takes
// the stream the resolver opened (through a tap in ctx), and per event
// either replays the memoised answer or feeds the event to gqlgen's own
// execution once.

type tapKey struct{}

// tap carries the resolver's stream to the wrapper.
type tap struct {
	stream *events.Stream
	feed   chan *events.Event
}

// tapStream hands st to SharedRendering if it is in play, and returns the
// channel gqlgen should read instead.
func tapStream(ctx context.Context, st *events.Stream) (<-chan *events.Event, bool) {
	t, ok := ctx.Value(tapKey{}).(*tap)
	if !ok {
		return nil, false
	}
	t.stream, t.feed = st, make(chan *events.Event, 1)
	return t.feed, true
}

// SharedRendering returns es with subscription answers shared between
// subscribers of the same query.
func SharedRendering(es graphql.ExecutableSchema) graphql.ExecutableSchema {
	return sharedRendering{es}
}

type sharedRendering struct{ graphql.ExecutableSchema }

// rendered is one memoised answer.
type rendered struct {
	data   json.RawMessage
	errors gqlerror.List
}

func (s sharedRendering) Exec(ctx context.Context) graphql.ResponseHandler {
	oc := graphql.GetOperationContext(ctx)
	if oc == nil || oc.Operation == nil || oc.Operation.Operation != ast.Subscription {
		return s.ExecutableSchema.Exec(ctx)
	}
	t := &tap{}
	inner := s.ExecutableSchema.Exec(context.WithValue(ctx, tapKey{}, t))
	if t.stream == nil {
		return inner // the resolver failed or did not open a stream
	}
	key := renderKey(oc)
	return func(ctx context.Context) *graphql.Response {
		var ev *events.Event
		select {
		case e, ok := <-t.stream.C:
			if !ok {
				return nil
			}
			ev = e
		case <-ctx.Done():
			return nil
		}
		if ev == nil { // the stream ended with an error: let gqlgen present it
			t.feed <- nil
			return inner(ctx)
		}
		r := ev.Memo(key, func() any {
			t.feed <- ev
			resp := inner(ctx)
			if resp == nil {
				return (*rendered)(nil)
			}
			// gqlgen reuses the buffer behind Data for this subscriber's next event.
			return &rendered{data: bytes.Clone(resp.Data), errors: resp.Errors}
		}).(*rendered)
		if r == nil {
			// The subscriber that rendered went away mid-way; render our own.
			if ctx.Err() != nil {
				return nil
			}
			t.feed <- ev
			return inner(ctx)
		}
		// A fresh response per subscriber: gqlgen appends to its errors.
		return &graphql.Response{Data: r.data, Errors: slices.Clone(r.errors)}
	}
}

// renderKey identifies what a subscriber asked for: the document, the
// operation and the variables. Callers with equal keys get equal answers.
func renderKey(oc *graphql.OperationContext) string {
	h := sha256.New()
	h.Write([]byte(oc.RawQuery))
	h.Write([]byte{0})
	h.Write([]byte(oc.OperationName))
	h.Write([]byte{0})
	vars, _ := json.Marshal(oc.Variables) // map keys are sorted
	h.Write(vars)
	return string(h.Sum(nil))
}
