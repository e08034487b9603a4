package graph

import (
	"context"
	"errors"
	"log/slog"
	"sort"
	"strings"

	"github.com/99designs/gqlgen/graphql"
	"github.com/vektah/gqlparser/v2/gqlerror"

	"github.com/leadstream/leadstream/internal/apperr"
	"github.com/leadstream/leadstream/internal/auth"
	"github.com/leadstream/leadstream/internal/events"
)

// ErrorPresenter is the one place errors become GraphQL errors with the
// contract's codes. Anything not known to be safe is INTERNAL with a
// generic message; its details go to the log only.
func ErrorPresenter(log *slog.Logger) graphql.ErrorPresenterFunc {
	return func(ctx context.Context, err error) *gqlerror.Error {
		gerr := graphql.DefaultErrorPresenter(ctx, err)
		if ctx.Err() != nil && errors.Is(context.Cause(ctx), ErrOperationTimeout) {
			return &gqlerror.Error{Message: errTimeLimit, Path: gerr.Path, Extensions: map[string]any{"code": apperr.LimitExceeded}}
		}
		var inner *gqlerror.Error
		if errors.As(err, &inner) && inner.Err == nil {
			if n, ok := strings.CutPrefix(inner.Message, "exceeded token limit of "); ok {
				return &gqlerror.Error{Message: "the query has more than " + n + " tokens, the limit (GRAPHQL_MAX_TOKENS)",
					Extensions: map[string]any{"code": apperr.LimitExceeded}}
			}
			if inner.Extensions["code"] != nil {
				return gerr // already presented
			}
		}
		cause := err
		if inner != nil && inner.Err != nil {
			cause = inner.Err
		} else if inner != nil {
			// A parse or validation error from gqlgen itself: safe to show.
			if gerr.Extensions == nil {
				gerr.Extensions = map[string]any{}
			}
			if _, ok := gerr.Extensions["code"]; !ok {
				gerr.Extensions["code"] = apperr.BadUserInput
			}
			return gerr
		}
		code, msg, ext := classify(cause)
		var render *RenderError
		if code == apperr.Internal && !errors.As(cause, &render) { // Render logged it
			log.Error("graphql: internal error", "path", gerr.Path.String(), "err", cause)
		}
		gerr.Message = msg
		gerr.Extensions = map[string]any{"code": code}
		for k, v := range ext {
			gerr.Extensions[k] = v
		}
		return gerr
	}
}

// classify maps an error to its code, its client-safe message and extensions.
func classify(err error) (code, msg string, ext map[string]any) {
	var slow *events.SlowError
	var expired *events.CursorExpiredError
	var render *RenderError
	switch {
	case errors.As(err, &render):
		return apperr.Internal, "an event could not be rendered, so this subscription ended; " +
			"subscribe again with after set to extensions.cursor to go on past it", map[string]any{"cursor": render.Cursor}
	case errors.As(err, &expired):
		return apperr.CursorExpired, expired.Error(), map[string]any{"oldestCursor": expired.Oldest}
	case errors.As(err, &slow):
		ext = map[string]any{}
		if slow.LastCursor != "" {
			ext["lastCursor"] = slow.LastCursor
			ext["instanceId"] = slow.InstanceID
		}
		return apperr.SlowSubscriber, slow.Error(), ext
	case errors.Is(err, auth.ErrUnauthenticated):
		return apperr.Unauthenticated, auth.UnauthenticatedMessage, nil
	case errors.Is(err, context.Canceled):
		return apperr.Internal, "request cancelled", nil
	}
	if e, ok := apperr.As(err); ok {
		ext = map[string]any{}
		if len(e.Missing) > 0 {
			ext["missing"] = e.Missing
		}
		if len(e.Invalid) > 0 {
			keys := make([]string, 0, len(e.Invalid))
			for k := range e.Invalid {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			inv := make([]map[string]string, 0, len(keys))
			for _, k := range keys {
				inv = append(inv, map[string]string{"key": k, "message": e.Invalid[k]})
			}
			ext["invalid"] = inv
		}
		for k, v := range e.Extra {
			ext[k] = v
		}
		return e.Code, e.Message, ext
	}
	return apperr.Internal, "internal error", nil
}

// caller returns the authenticated caller with the organization's
// credentials: UNAUTHENTICATED without any, FORBIDDEN with an Element token.
// Every resolver uses it except the readers of one instance, which use
// reader and then Instances.Read.
func caller(ctx context.Context) (auth.Identity, error) {
	id, err := reader(ctx)
	if err != nil {
		return id, err
	}
	return id, id.RequireFull()
}

// reader returns the authenticated caller, possibly scoped to one instance
// by an Element token; instance.Service.Read applies the scope.
func reader(ctx context.Context) (auth.Identity, error) {
	id, ok := auth.FromContext(ctx)
	if !ok {
		return id, auth.ErrUnauthenticated
	}
	return id, nil
}
