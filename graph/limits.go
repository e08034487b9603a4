package graph

import (
	"context"
	"errors"
	"fmt"

	"github.com/99designs/gqlgen/graphql"
	"github.com/vektah/gqlparser/v2/ast"
	"github.com/vektah/gqlparser/v2/gqlerror"
	"github.com/vektah/gqlparser/v2/parser"

	"github.com/leadstream/leadstream/internal/apperr"
)

// Limits bounds what one operation may ask for. It is checked on a parse of
// its own before gqlgen validates the document, because validation costs
// the square of a selection's size (3,000 repeated fields: seconds).
// Fields are counted with fragments spread where they are used, so a
// fragment cannot multiply an operation unseen.
type Limits struct {
	// MaxTokens bounds the parser, as gqlgen's own parse is bounded.
	MaxTokens int
	// Parsed is gqlgen's cache of validated documents: what is in it
	// passed these checks already.
	Parsed graphql.Cache[*ast.QueryDocument]
	// MaxDepth bounds how deeply selections nest.
	MaxDepth int
	// MaxFields bounds the fields, aliases included, of one selection set.
	MaxFields int
	// MaxComplexity bounds the cost of the whole operation: a top-level
	// field (a resolver reading the store) costs RootFieldCost, any other
	// field one; so 10 aliases of a top-level field with 3 subfields
	// cost 530.
	MaxComplexity int
}

var _ interface {
	graphql.HandlerExtension
	graphql.OperationParameterMutator
} = Limits{}

// ExtensionName names the extension for gqlgen.
func (Limits) ExtensionName() string { return "Limits" }

// Validate is part of gqlgen's extension interface.
func (Limits) Validate(graphql.ExecutableSchema) error { return nil }

// MutateOperationParameters refuses an operation over a limit.
func (l Limits) MutateOperationParameters(ctx context.Context, p *graphql.RawParams) *gqlerror.Error {
	if p.Query == "" {
		return nil
	}
	if l.Parsed != nil {
		if _, ok := l.Parsed.Get(ctx, p.Query); ok {
			return nil
		}
	}
	doc, err := parser.ParseQueryWithTokenLimit(&ast.Source{Input: p.Query}, l.MaxTokens)
	if err != nil {
		return nil // gqlgen's own parse reports it
	}
	for _, op := range doc.Operations {
		if p.OperationName != "" && op.Name != p.OperationName {
			continue
		}
		w := walker{l: l, doc: doc}
		w.selections(op.SelectionSet, 1)
		if w.err != nil {
			return LimitError(w.err.Error())
		}
	}
	return nil
}

// RootFieldCost is what a top-level field adds to an operation's complexity.
const RootFieldCost = 50

// LimitError is a LIMIT_EXCEEDED error as GraphQL answers carry it.
func LimitError(msg string) *gqlerror.Error {
	return &gqlerror.Error{Message: msg, Extensions: map[string]any{"code": apperr.LimitExceeded}}
}

type walker struct {
	l     Limits
	doc   *ast.QueryDocument
	total int
	err   error
}

// selections walks one selection set at depth and stops at the first limit
// passed, so a fragment bomb costs at most MaxComplexity steps.
func (w *walker) selections(set ast.SelectionSet, depth int) {
	if len(set) == 0 || w.err != nil {
		return
	}
	if depth > w.l.MaxDepth {
		w.err = fmt.Errorf("the operation nests deeper than %d levels, the limit (GRAPHQL_MAX_DEPTH)", w.l.MaxDepth)
		return
	}
	fields := 0
	var walk func(set ast.SelectionSet, spreads int)
	walk = func(set ast.SelectionSet, spreads int) {
		for _, s := range set {
			if w.err != nil {
				return
			}
			switch s := s.(type) {
			case *ast.Field:
				fields++
				w.total++
				if depth == 1 {
					w.total += RootFieldCost - 1
				}
				switch {
				case fields > w.l.MaxFields:
					w.err = fmt.Errorf("a selection has more than %d fields (aliases included), the limit (GRAPHQL_MAX_FIELDS)", w.l.MaxFields)
				case w.total > w.l.MaxComplexity:
					w.err = fmt.Errorf("the operation costs more than %d (a top-level field %d, any other 1), the complexity limit (GRAPHQL_MAX_COMPLEXITY)", w.l.MaxComplexity, RootFieldCost)
				default:
					w.selections(s.SelectionSet, depth+1)
				}
			case *ast.InlineFragment:
				walk(s.SelectionSet, spreads)
			case *ast.FragmentSpread:
				def := w.doc.Fragments.ForName(s.Name)
				// Not validated yet: a cycle ends at the bound.
				if def != nil && spreads < w.l.MaxDepth {
					walk(def.SelectionSet, spreads+1)
				}
			}
		}
	}
	walk(set, 0)
}

// ErrOperationTimeout is the cause of an operation's context ending at
// GRAPHQL_TIMEOUT.
var ErrOperationTimeout = errors.New("graph: operation time limit reached")

// CheckCancelled is a field middleware: once the client left or the
// operation ran out of time, the remaining fields are not resolved.
func CheckCancelled(ctx context.Context, next graphql.Resolver) (any, error) {
	if ctx.Err() != nil {
		return nil, context.Cause(ctx)
	}
	return next(ctx)
}

// errTimeLimit is the answer to an operation that ran out of time.
var errTimeLimit = "the operation ran longer than its time limit (GRAPHQL_TIMEOUT)"

// TimeLimit is an operation middleware: an operation whose context ended at
// GRAPHQL_TIMEOUT before gqlgen produced an answer (gqlgen then answers
// nothing) is answered LIMIT_EXCEEDED, once: the nil after it ends the
// responses (a transport reading until nil, as the websocket one does,
// would otherwise be handed the error forever).
func TimeLimit(ctx context.Context, next graphql.OperationHandler) graphql.ResponseHandler {
	rh := next(ctx)
	answered := false
	return func(ctx context.Context) *graphql.Response {
		resp := rh(ctx)
		if resp == nil && !answered && errors.Is(context.Cause(ctx), ErrOperationTimeout) {
			resp = &graphql.Response{Errors: gqlerror.List{LimitError(errTimeLimit)}, Data: []byte("null")}
		}
		if resp != nil {
			answered = true
		}
		return resp
	}
}
