package app

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/99designs/gqlgen/graphql"
	"github.com/99designs/gqlgen/graphql/executor"
	"github.com/99designs/gqlgen/graphql/handler/extension"
	"github.com/99designs/gqlgen/graphql/handler/lru"
	"github.com/99designs/gqlgen/graphql/handler/transport"
	"github.com/vektah/gqlparser/v2/ast"
	"github.com/vektah/gqlparser/v2/gqlerror"

	"github.com/leadstream/leadstream/graph"
	"github.com/leadstream/leadstream/internal/apperr"
	"github.com/leadstream/leadstream/internal/auth"
	"github.com/leadstream/leadstream/internal/events"
	"github.com/leadstream/leadstream/internal/playground"
	"github.com/leadstream/leadstream/internal/rest"
	"github.com/leadstream/leadstream/internal/subscribe"
	"github.com/leadstream/leadstream/internal/throttle"
	"github.com/leadstream/leadstream/internal/webhook"
)

var (
	errInstanceDeleted  = apperr.New(apperr.Ended, "the instance was deleted")
	errInstanceDisabled = apperr.New(apperr.Ended, "the instance was disabled")
	errTokenRevoked     = apperr.New(apperr.Ended, "the Element token this subscription was opened with was replaced by a new one")
)

// seedPrefix is the seed's base path: every route is served under it too,
// so URLs written for the seed's service work with only the host changed.
const seedPrefix = "/elements/api-v2"

// Handler lists every route of the gateway.
func (a *App) Handler() http.Handler {
	mux := http.NewServeMux()
	route := func(pattern string, h http.Handler) {
		mux.Handle(pattern, h)
		method, path, ok := strings.Cut(pattern, " ")
		if !ok {
			method, path = "", pattern
		}
		mux.Handle(strings.TrimSpace(method+" "+seedPrefix+path), http.StripPrefix(seedPrefix, h))
	}
	route("/graphql", a.graphqlHandler())
	pg := playground.Handler()
	route("GET /{$}", pg)
	route("GET /playground/", pg)
	route("/oauth/marketo/authorize", a.connect.Page())
	route("/events/marketo/{id}", webhook.Handler(a.instances, a.ingester, a.log, a.metrics.Webhook))

	api := rest.New(a.authenticateHTTP, a.instances, a.connect, a.conns, a.log)
	route("GET /elements/{key}/oauth/url", a.throttled(api.OAuthURL()))
	route("POST /instances", a.throttled(api.CreateInstance()))
	route("GET /instances", a.throttled(api.ListInstances()))
	route("GET /instances/{id}", a.throttled(api.GetInstance()))
	route("PATCH /instances/{id}", a.throttled(api.UpdateInstance()))
	route("DELETE /instances/{id}", a.throttled(api.DeleteInstance()))
	route("POST /instances/{id}/token", a.throttled(api.RotateToken()))

	route("GET /healthz", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	}))
	route("GET /readyz", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		if err := a.store.Ping(ctx); err != nil {
			a.log.Warn("readiness: store unreachable", "err", err)
			writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "store unreachable"})
			return
		}
		if err := a.evlog.Ping(ctx); err != nil {
			a.log.Warn("readiness: event log unreachable", "err", err)
			writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "event log unreachable"})
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
	}))
	route("GET /metrics", a.metrics.Handler())
	return a.accessLog(a.readDeadline(mux))
}

// readDeadline gives every request ReadTimeout to deliver its body, so a
// client trickling bytes cannot hold a connection (headers are bounded by
// the server's ReadHeaderTimeout). The deadline is lifted once the body is
// read, so streams (SSE) and long answers are not cut; websocket upgrades
// carry no body and get none, which would outlive the hijack.
func (a *App) readDeadline(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Body == nil || r.Body == http.NoBody || isWebsocket(r) {
			next.ServeHTTP(w, r)
			return
		}
		rc := http.NewResponseController(w)
		if err := rc.SetReadDeadline(time.Now().Add(a.cfg.Limits.ReadTimeout)); err == nil {
			r.Body = &liftOnEOF{ReadCloser: r.Body, lift: func() { _ = rc.SetReadDeadline(time.Time{}) }}
		}
		next.ServeHTTP(w, r)
	})
}

// liftOnEOF lifts the read deadline once the whole body has arrived.
type liftOnEOF struct {
	io.ReadCloser
	lift func()
	done bool
}

func (l *liftOnEOF) Read(p []byte) (int, error) {
	n, err := l.ReadCloser.Read(p)
	if err == io.EOF && !l.done {
		l.done = true
		l.lift()
	}
	return n, err
}

func isWebsocket(r *http.Request) bool {
	return strings.EqualFold(r.Header.Get("Upgrade"), "websocket")
}

// readBody takes a GraphQL POST body whole, up to MaxBodyBytes, and checks
// that it is JSON: gqlgen would echo a malformed body back (and log it for
// SSE). It reports false when it has answered.
func (a *App) readBody(w http.ResponseWriter, r *http.Request) bool {
	if r.Method != http.MethodPost || r.Body == nil {
		return true
	}
	max := a.cfg.Limits.MaxBodyBytes
	body, err := io.ReadAll(io.LimitReader(r.Body, max+1))
	switch {
	case err != nil:
		writeGraphQLError(w, http.StatusBadRequest, apperr.BadUserInput, "the request body could not be read in time")
		return false
	case int64(len(body)) > max:
		w.Header().Set("Connection", "close")
		writeGraphQLError(w, http.StatusRequestEntityTooLarge, apperr.LimitExceeded,
			fmt.Sprintf("the request body is over %d bytes, the limit (GRAPHQL_MAX_BODY_BYTES)", max))
		return false
	}
	if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt == "application/json" && !json.Valid(body) {
		writeGraphQLError(w, http.StatusBadRequest, apperr.BadUserInput, "the request body is not valid JSON")
		return false
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	return true
}

func writeGraphQLError(w http.ResponseWriter, status int, code, msg string) {
	writeJSON(w, status, graphql.Response{Errors: []*gqlerror.Error{{Message: msg, Extensions: map[string]any{"code": code}}}})
}

// accessLog logs each request at debug level, and server errors at warn.
// Only the path is logged: webhook URLs carry their secret in the query.
func (a *App) accessLog(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !a.log.Enabled(r.Context(), slog.LevelDebug) {
			next.ServeHTTP(w, r)
			return
		}
		start := time.Now()
		rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
		next.ServeHTTP(rec, r)
		level := slog.LevelDebug
		if rec.status >= 500 {
			level = slog.LevelWarn
		}
		a.log.Log(r.Context(), level, "http", "method", r.Method, "path", r.URL.Path, "status", rec.status, "duration", time.Since(start))
	})
}

// statusRecorder remembers the status a handler wrote; Unwrap keeps
// http.ResponseController (flush, hijack, deadlines) working through it.
type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (s *statusRecorder) WriteHeader(code int) {
	s.status = code
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusRecorder) Unwrap() http.ResponseWriter { return s.ResponseWriter }

// Flush and Hijack are asserted directly by gqlgen's SSE transport and by
// gorilla's upgrader, which do not unwrap.
func (s *statusRecorder) Flush() {
	if f, ok := s.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (s *statusRecorder) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	s.status = http.StatusSwitchingProtocols
	return http.NewResponseController(s.ResponseWriter).Hijack()
}

// graphqlHandler serves /graphql: websocket upgrades through our
// transport (internal/subscribe), everything else through gqlgen's HTTP
// transports (POST, GET, SSE). Both run one executor, with one query cache,
// one set of extensions and limits, and one error presenter.
func (a *App) graphqlHandler() http.Handler {
	res := &graph.Resolver{
		Connectors: a.conns, Connect: a.connect, Instances: a.instances,
		Store: a.store, EventLog: a.evlog, Broker: a.broker, Poller: replicaPoller{a}, Log: a.log,
	}
	present := graph.ErrorPresenter(a.log)
	recoverFn := func(ctx context.Context, p any) error {
		// Bounded: a panic's value can quote a whole response, payloads included.
		a.log.Error("graphql: panic", "panic", fmt.Sprintf("%.200v", p))
		return errors.New("internal error")
	}
	schema := graph.NewSchema(res, present, recoverFn)
	exec := executor.New(schema)
	parsed := lru.New[*ast.QueryDocument](1000)
	exec.SetQueryCache(parsed)
	exec.SetParserTokenLimit(a.cfg.Limits.MaxTokens)
	exec.AroundFields(graph.CheckCancelled)
	exec.Use(extension.Introspection{})
	exec.Use(extension.AutomaticPersistedQuery{Cache: lru.New[string](100)})
	// After the persisted-query extension, which fills in the query.
	exec.Use(graph.Limits{MaxTokens: a.cfg.Limits.MaxTokens, Parsed: parsed, MaxDepth: a.cfg.Limits.MaxDepth,
		MaxFields: a.cfg.Limits.MaxFields, MaxComplexity: a.cfg.Limits.MaxComplexity})
	exec.SetErrorPresenter(present)
	exec.AroundOperations(graph.TimeLimit)
	exec.SetRecoverFunc(recoverFn)
	a.ws = subscribe.New(subscribe.Options{
		Exec: exec, Streams: schema, Auth: a.auth, Throttle: a.failures,
		Events:  events.Streamer{Broker: a.broker, History: a.evlog},
		Present: present, Log: a.log,
		InitTimeout:                a.cfg.WebsocketInitTimeout,
		KeepAlive:                  a.cfg.WebsocketKeepAlive,
		QueueSize:                  a.cfg.SubscriptionBuffer,
		SubscriptionsPerConnection: a.cfg.Limits.SubscriptionsPerConnection,
		ConnectionsPerOrganization: a.cfg.Limits.WebsocketsPerOrg,
		OperationTimeout:           a.cfg.Limits.OperationTimeout,
		TimedOut:                   graph.ErrOperationTimeout,
	})
	h := httpGraphQL{exec: exec, transports: []graphql.Transport{
		transport.Options{},
		// Comments every 15 s keep proxies from closing idle streams.
		transport.SSE{KeepAlivePingInterval: 15 * time.Second},
		transport.GET{},
		transport.POST{},
	}}
	return a.requireAuth(h)
}

// httpGraphQL is gqlgen's handler.Server without its websocket part: it
// picks the first transport that supports the request.
type httpGraphQL struct {
	exec       *executor.Executor
	transports []graphql.Transport
}

func (h httpGraphQL) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	defer func() {
		if p := recover(); p != nil {
			err := h.exec.PresentRecoveredError(r.Context(), p)
			var gerr *gqlerror.Error
			errors.As(err, &gerr)
			writeJSON(w, http.StatusInternalServerError, graphql.Response{Errors: gqlerror.List{gerr}})
		}
	}()
	r = r.WithContext(graphql.StartOperationTrace(r.Context()))
	for _, t := range h.transports {
		if t.Supports(r) {
			t.Do(w, r, h.exec)
			return
		}
	}
	writeGraphQLError(w, http.StatusBadRequest, apperr.BadUserInput, "transport not supported")
}

var errRateLimited = apperr.New(apperr.RateLimited, "too many failed authentications from this address")

// throttled counts a REST route's 401 answers as failed authentications of
// the client's address and answers a blocked address 429 before anything
// else, as requireAuth does for GraphQL.
func (a *App) throttled(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		client := throttle.ClientKey(r.RemoteAddr)
		if wait, blocked := a.failures.Blocked(client); blocked {
			w.Header().Set("Retry-After", strconv.Itoa(retrySeconds(wait)))
			writeJSON(w, http.StatusTooManyRequests, map[string]string{
				"message": fmt.Sprintf("too many failed authentications from this address; retry after %d s", retrySeconds(wait))})
			return
		}
		rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
		next.ServeHTTP(rec, r)
		if rec.status == http.StatusUnauthorized {
			a.failures.Fail(client)
		}
	})
}

// retrySeconds rounds a wait up to whole seconds for Retry-After.
func retrySeconds(d time.Duration) int {
	return int((d + time.Second - 1) / time.Second)
}

// authenticateHTTP checks the credentials of a GraphQL or REST request:
// the one place for HTTP, where what applies to every such check (such as
// throttling failures per client) belongs.
func (a *App) authenticateHTTP(r *http.Request) (auth.Identity, error) {
	return a.auth.Authenticate(r.Context(), r.Header.Get("Authorization"))
}

// requireAuth authenticates every GraphQL request over HTTP; websocket
// upgrades go to the subscription transport, which authenticates in
// connection_init. SSE streams are tied to the app's streams context so
// shutdown can end them.
func (a *App) requireAuth(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodOptions {
			next.ServeHTTP(w, r)
			return
		}
		client := throttle.ClientKey(r.RemoteAddr)
		if wait, blocked := a.failures.Blocked(client); blocked {
			w.Header().Set("Retry-After", strconv.Itoa(retrySeconds(wait)))
			writeGraphQLError(w, http.StatusTooManyRequests, apperr.RateLimited,
				fmt.Sprintf("too many failed authentications from this address; retry after %d s", retrySeconds(wait)))
			return
		}
		if isWebsocket(r) {
			// Checked before the upgrade: a throttled address gets 429
			// and never a socket.
			a.ws.ServeHTTP(w, r)
			return
		}
		isStream := strings.Contains(r.Header.Get("Accept"), "text/event-stream")
		ctx := r.Context()
		if isStream {
			var cancel context.CancelFunc
			ctx, cancel = context.WithCancel(ctx)
			defer cancel()
			stop := context.AfterFunc(a.streams, cancel)
			defer stop()
		}
		id, err := a.authenticateHTTP(r)
		if err != nil {
			code, status := apperr.Unauthenticated, http.StatusUnauthorized
			msg := auth.UnauthenticatedMessage
			if !errors.Is(err, auth.ErrUnauthenticated) {
				a.log.Error("graphql auth", "err", err)
				code, status, msg = apperr.Internal, http.StatusInternalServerError, "internal error"
			} else {
				a.failures.Fail(client)
			}
			w.Header().Set("WWW-Authenticate", `User realm="leadstream", Organization, Element`)
			writeGraphQLError(w, status, code, msg)
			return
		}
		if isStream {
			release, ok := a.sse.Acquire(id.OrgID)
			if !ok {
				writeGraphQLError(w, http.StatusTooManyRequests, apperr.LimitExceeded, fmt.Sprintf(
					"this organization has %d SSE streams open, the limit (SSE_PER_ORGANIZATION)", a.sse.Max()))
				return
			}
			defer release()
		}
		if !a.readBody(w, r) {
			return
		}
		if !isStream {
			// The client leaving cancels ctx too (net/http does).
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeoutCause(ctx, a.cfg.Limits.OperationTimeout, graph.ErrOperationTimeout)
			defer cancel()
		}
		next.ServeHTTP(w, r.WithContext(auth.WithIdentity(ctx, id)))
	})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
