package graph

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"

	"github.com/99designs/gqlgen/graphql"
	"github.com/vektah/gqlparser/v2/ast"
	"github.com/vektah/gqlparser/v2/gqlerror"

	"github.com/leadstream/leadstream/internal/apperr"
	"github.com/leadstream/leadstream/internal/events"
)

// Subscriptions are opened and rendered here for every transport, not
// through gqlgen's channel loop. Open checks the operation once and returns
// a Stream saying what to listen to; Render executes the operation's
// selection on one event through the generated code. A transport renders
// each event once per Stream.Key and writes the same bytes to every
// subscriber sharing that key; that is the websocket transport's job
// (internal/subscribe). Exec below is the SSE path: gqlgen's transport
// reads a channel.

// Schema is the generated executable schema with subscriptions served by
// Open and Render.
type Schema struct {
	*executableSchema
	resolver *Resolver
	present  graphql.ErrorPresenterFunc
	recover  graphql.RecoverFunc
	log      *slog.Logger
}

// NewSchema returns the schema over r. Errors that end streams go through
// present; panics through recover; events that cannot be rendered are
// logged to r.Log.
func NewSchema(r *Resolver, present graphql.ErrorPresenterFunc, recover graphql.RecoverFunc) *Schema {
	es := NewExecutableSchema(Config{Resolvers: r}).(*executableSchema)
	log := r.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Schema{executableSchema: es, resolver: r, present: present, recover: recover, log: log}
}

// Stream is one checked marketoEvents subscription, not yet listening.
type Stream struct {
	Filter events.Filter
	After  string
	// Key is equal for streams whose events render to the same bytes: the
	// same document, operation, variables and organization.
	Key string

	s     *Schema
	oc    *graphql.OperationContext
	field graphql.CollectedField
	fc    *graphql.FieldContext
	ctx   context.Context // the subscriber's, detached from its end
}

// Open resolves a subscription operation for the caller in ctx: its one
// root field, arguments, instance and cursor. The error is unpresented.
func (s *Schema) Open(ctx context.Context, oc *graphql.OperationContext) (*Stream, error) {
	ctx = graphql.WithOperationContext(ctx, oc)
	// Argument errors are added to a response context by generated code.
	ctx = graphql.WithResponseContext(ctx, s.present, s.recover)
	fields := graphql.CollectFields(oc, oc.Operation.SelectionSet, subscriptionImplementors)
	if len(fields) != 1 {
		return nil, gqlerror.Errorf("must subscribe to exactly one stream")
	}
	field := fields[0]
	if field.Name != "marketoEvents" {
		return nil, gqlerror.Errorf("%s is not a subscription of this API", field.Name)
	}
	ec := newExecutionContext(oc, s.executableSchema, nil)
	root := graphql.WithFieldContext(ctx, &graphql.FieldContext{Object: "Subscription"})
	fc, err := ec.fieldContext_Subscription_marketoEvents(root, field)
	if err != nil {
		if errs := graphql.GetErrors(ctx); len(errs) > 0 {
			return nil, errs[0]
		}
		return nil, err
	}
	instanceID, _ := fc.Args["instanceId"].(*string)
	after, _ := fc.Args["after"].(*string)
	f, err := s.resolver.eventFilter(ctx, instanceID, after)
	if err != nil {
		return nil, err
	}
	f.EventTypes, _ = fc.Args["eventTypes"].([]string)
	f.ObjectTypes, _ = fc.Args["objectTypes"].([]string)
	f.Sources, _ = fc.Args["sources"].([]events.Source)
	return &Stream{
		Filter: f, After: deref(after), Key: renderKey(oc, f.OrgID),
		s: s, oc: oc, field: field, fc: fc, ctx: context.WithoutCancel(root),
	}, nil
}

// eventFilter checks marketoEvents' arguments for the caller.
func (r *Resolver) eventFilter(ctx context.Context, instanceID, after *string) (events.Filter, error) {
	who, err := reader(ctx)
	if err != nil {
		return events.Filter{}, err
	}
	f := events.Filter{OrgID: who.OrgID, InstanceID: deref(instanceID)}
	if who.Scoped() {
		// An Element token's subscription without an id is its instance's,
		// and ends when the token is replaced. (A rotation between the read
		// below and the subscription's start is not seen by it.)
		if f.InstanceID == "" {
			f.InstanceID = who.InstanceID
		}
		f.TokenHash = who.TokenHash
	}
	if f.InstanceID != "" {
		in, err := r.Instances.Read(ctx, who, f.InstanceID)
		if err != nil {
			return f, err
		}
		if in.Disabled {
			return f, apperr.New(apperr.Ended, "the instance is disabled")
		}
	}
	if _, err := events.ParseCursor(deref(after)); err != nil {
		return f, apperr.Wrap(apperr.BadUserInput, err, "after is not a cursor of this API")
	}
	return f, nil
}

// RenderError is an event a subscription could not render: a stored field
// broke the schema (a null where it allows none), a field resolver failed
// or panicked. It ends the subscription; Errs are for the log, presented
// it is INTERNAL with the event's cursor, so a client can resume past it.
type RenderError struct {
	EventID, InstanceID, Cursor string
	Errs                        gqlerror.List
}

func (e *RenderError) Error() string {
	return fmt.Sprintf("graph: event %s of instance %s could not be rendered: %v", e.EventID, e.InstanceID, e.Errs)
}

// Render executes the stream's selection on ev and returns the response's
// data. Any field error, or a panic, is a *RenderError, logged here once at
// ERROR (ids and errors, never the payload): a result with holes would be
// a broken event to the client, so the subscription must end instead.
func (st *Stream) Render(ev *events.Event) (data []byte, err error) {
	// Errors stay raw here: they go to the log, not to the client.
	ctx := graphql.WithResponseContext(st.ctx, graphql.DefaultErrorPresenter, st.s.recover)
	fc := *st.fc // children point at their parent; each rendering has its own
	ctx = graphql.WithFieldContext(ctx, &fc)
	defer func() {
		errs := graphql.GetErrors(ctx)
		if p := recover(); p != nil {
			errs = append(errs, graphql.DefaultErrorPresenter(ctx, st.s.recover(ctx, p)))
		}
		if len(errs) == 0 {
			return
		}
		re := &RenderError{EventID: ev.ID, InstanceID: ev.InstanceID, Cursor: ev.Cursor(), Errs: errs}
		st.s.log.Error("graph: an event could not be rendered; its subscriptions end",
			"event", ev.ID, "instance", ev.InstanceID, "err", errs.Error())
		data, err = nil, re
	}()
	ec := newExecutionContext(st.oc, st.s.executableSchema, nil)
	var buf bytes.Buffer
	buf.WriteByte('{')
	graphql.MarshalString(st.field.Alias).MarshalGQL(&buf)
	buf.WriteByte(':')
	ec.marshalNMarketoEvent2ᚖgithubᚗcomᚋleadstreamᚋleadstreamᚋinternalᚋeventsᚐEvent(ctx, st.field.Selections, ev).MarshalGQL(&buf)
	buf.WriteByte('}')
	return buf.Bytes(), nil
}

// renderKey identifies what a subscriber asked for: the document, the
// operation, the variables and the organization.
func renderKey(oc *graphql.OperationContext, orgID string) string {
	h := sha256.New()
	for _, s := range []string{oc.RawQuery, oc.OperationName, orgID} {
		h.Write([]byte(s))
		h.Write([]byte{0})
	}
	vars, _ := json.Marshal(oc.Variables) // map keys are sorted
	h.Write(vars)
	return string(h.Sum(nil))
}

// Exec runs queries and mutations as generated. A subscription (over SSE:
// the websocket transport calls Open itself) reads the stream and
// renders each event; an error that ends the stream is its last response.
func (s *Schema) Exec(ctx context.Context) graphql.ResponseHandler {
	oc := graphql.GetOperationContext(ctx)
	if oc.Operation.Operation != ast.Subscription {
		return s.executableSchema.Exec(ctx)
	}
	st, err := s.Open(ctx, oc)
	if err != nil {
		graphql.AddError(ctx, err)
		return graphql.OneShot(&graphql.Response{})
	}
	es, err := events.Streamer{Broker: s.resolver.Broker, History: s.resolver.EventLog}.Open(ctx, st.Filter, st.After)
	if err != nil {
		graphql.AddError(ctx, err)
		return graphql.OneShot(&graphql.Response{})
	}
	ended := false
	return func(ctx context.Context) *graphql.Response {
		if ended {
			return nil // complete; the stream closes with the request's ctx
		}
		ev, err := es.Next(ctx)
		if err != nil {
			return &graphql.Response{Errors: gqlerror.List{s.present(ctx, err)}}
		}
		if ev == nil {
			return nil
		}
		data, err := st.Render(ev)
		if err != nil {
			ended = true
			return &graphql.Response{Errors: gqlerror.List{s.present(ctx, err)}}
		}
		return &graphql.Response{Data: data}
	}
}

// errServedByOpen answers gqlgen's own subscription path, which Schema
// replaces.
var errServedByOpen = errors.New("graph: subscriptions are served by Schema.Open")
