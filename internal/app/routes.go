package app

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/99designs/gqlgen/graphql"
	"github.com/99designs/gqlgen/graphql/handler"
	"github.com/99designs/gqlgen/graphql/handler/extension"
	"github.com/99designs/gqlgen/graphql/handler/lru"
	"github.com/99designs/gqlgen/graphql/handler/transport"
	"github.com/gorilla/websocket"
	"github.com/vektah/gqlparser/v2/ast"
	"github.com/vektah/gqlparser/v2/gqlerror"

	"github.com/leadstream/leadstream/graph"
	"github.com/leadstream/leadstream/internal/apperr"
	"github.com/leadstream/leadstream/internal/auth"
	"github.com/leadstream/leadstream/internal/gorillaws"
	"github.com/leadstream/leadstream/internal/playground"
	"github.com/leadstream/leadstream/internal/webhook"
)

var (
	errInstanceDeleted  = apperr.New(apperr.Ended, "the instance was deleted")
	errInstanceDisabled = apperr.New(apperr.Ended, "the instance was disabled")
	errTokenRevoked     = apperr.New(apperr.Ended, "the Element token this subscription was opened with was replaced by a new one")
)

// Handler lists every route of the gateway.
func (a *App) Handler() http.Handler {
	mux := http.NewServeMux()
	gql := a.graphqlHandler()
	mux.Handle("/graphql", a.requireAuth(gql))
	pg := playground.Handler()
	mux.Handle("GET /{$}", pg)
	mux.Handle("GET /playground/", pg)
	mux.Handle("/oauth/marketo/authorize", a.connect.Page())
	mux.Handle("/events/marketo/{id}", webhook.Handler(a.instances, a.ingester, a.log, a.metrics.Webhook))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
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
	})
	mux.Handle("GET /metrics", a.metrics.Handler())
	return a.accessLog(mux)
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

func (a *App) graphqlHandler() http.Handler {
	res := &graph.Resolver{
		Connectors: a.conns, Connect: a.connect, Instances: a.instances,
		Store: a.store, EventLog: a.evlog, Broker: a.broker, Poller: a.poller, Log: a.log,
	}
	srv := handler.New(graph.SharedRendering(graph.NewExecutableSchema(graph.Config{Resolvers: res})))
	present := graph.ErrorPresenter(a.log)
	ws := gorillaws.New(gorillaws.WithUpgrader(websocket.Upgrader{
		// Credentials travel in connection_init, never in cookies, so a
		// cross-origin page gains nothing from opening a socket.
		CheckOrigin: func(*http.Request) bool { return true },
	}))
	srv.AddTransport(transport.Websocket{
		Implementation:        ws,
		InitFunc:              a.wsInit,
		InitTimeout:           10 * time.Second,
		KeepAlivePingInterval: 15 * time.Second,
		PingPongInterval:      30 * time.Second,
	})
	srv.AddTransport(transport.Options{})
	// Comments every 15 s keep proxies from closing idle streams.
	srv.AddTransport(transport.SSE{KeepAlivePingInterval: 15 * time.Second})
	srv.AddTransport(transport.GET{})
	srv.AddTransport(transport.POST{})
	srv.SetQueryCache(lru.New[*ast.QueryDocument](1000))
	srv.Use(extension.Introspection{})
	srv.Use(extension.AutomaticPersistedQuery{Cache: lru.New[string](100)})
	srv.SetErrorPresenter(present)
	srv.AroundOperations(graph.StreamErrors(present))
	srv.SetRecoverFunc(func(ctx context.Context, p any) error {
		a.log.Error("graphql: panic", "panic", p)
		return errors.New("internal error")
	})
	return srv
}

// wsInit authenticates a websocket in connection_init (or from the upgrade
// request's header); a refusal closes it with 4401 so clients stop retrying.
func (a *App) wsInit(ctx context.Context, p transport.InitPayload) (context.Context, *transport.InitPayload, error) {
	h := p.Authorization()
	if h == "" {
		h, _ = ctx.Value(upgradeAuthKey{}).(string)
	}
	id, err := a.auth.Authenticate(ctx, h)
	if err != nil {
		if !errors.Is(err, auth.ErrUnauthenticated) {
			a.log.Error("websocket auth", "err", err)
		}
		ctx = transport.WithWebsocketCloseCode(ctx, 4401)
		ctx = transport.AppendCloseReason(ctx, "unauthenticated")
		return ctx, nil, auth.ErrUnauthenticated
	}
	return auth.WithIdentity(ctx, id), nil, nil
}

type upgradeAuthKey struct{}

// requireAuth authenticates every GraphQL request. Websocket upgrades are
// authenticated in connection_init instead. Subscriptions (websocket and
// SSE) are tied to the app's streams context so shutdown can end them.
func (a *App) requireAuth(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodOptions {
			next.ServeHTTP(w, r)
			return
		}
		isWS := strings.EqualFold(r.Header.Get("Upgrade"), "websocket")
		isStream := isWS || strings.Contains(r.Header.Get("Accept"), "text/event-stream")
		ctx := r.Context()
		if isWS {
			a.serveWebsocket(next, w, r.WithContext(context.WithValue(ctx, upgradeAuthKey{}, r.Header.Get("Authorization"))))
			return
		}
		if isStream {
			var cancel context.CancelFunc
			ctx, cancel = context.WithCancel(ctx)
			defer cancel()
			stop := context.AfterFunc(a.streams, cancel)
			defer stop()
		}
		id, err := a.auth.Authenticate(ctx, r.Header.Get("Authorization"))
		if err != nil {
			code, status := apperr.Unauthenticated, http.StatusUnauthorized
			msg := auth.ErrUnauthenticated.Error()
			if !errors.Is(err, auth.ErrUnauthenticated) {
				a.log.Error("graphql auth", "err", err)
				code, status, msg = apperr.Internal, http.StatusInternalServerError, "internal error"
			}
			w.Header().Set("WWW-Authenticate", `User realm="leadstream", Organization, Element`)
			writeJSON(w, status, graphql.Response{Errors: []*gqlerror.Error{{Message: msg, Extensions: map[string]any{"code": code}}}})
			return
		}
		next.ServeHTTP(w, r.WithContext(auth.WithIdentity(ctx, id)))
	})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// serveWebsocket runs a websocket connection on a goroutine of its own, so
// that the HTTP handler returns as soon as the connection is hijacked and
// net/http lets go of the request's buffers (about 11 KiB per idle
// subscriber). gqlgen's transport would otherwise hold the handler for the
// connection's whole life. The App owns the goroutine: shutdown ends its
// context and waits for it.
func (a *App) serveWebsocket(next http.Handler, w http.ResponseWriter, r *http.Request) {
	// The request's context ends when the handler returns; the connection's
	// must not.
	ctx, cancel := context.WithCancel(context.WithoutCancel(r.Context()))
	stop := context.AfterFunc(a.streams, cancel)
	hw := &hijackSignal{w: w, hijacked: make(chan struct{})}
	done := make(chan struct{})
	a.wsConns.Add(1)
	go func() {
		defer a.wsConns.Done()
		defer close(done)
		defer cancel()
		defer stop()
		next.ServeHTTP(hw, r.WithContext(ctx))
	}()
	select {
	case <-hw.hijacked:
	case <-done: // the upgrade failed and an HTTP answer was written
	}
}

// hijackSignal tells when the websocket upgrade took the connection over,
// and then forgets net/http's response writer.
type hijackSignal struct {
	mu       sync.Mutex
	w        http.ResponseWriter
	hijacked chan struct{}
}

func (h *hijackSignal) writer() http.ResponseWriter {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.w == nil {
		return discard{}
	}
	return h.w
}

func (h *hijackSignal) Header() http.Header         { return h.writer().Header() }
func (h *hijackSignal) Write(b []byte) (int, error) { return h.writer().Write(b) }
func (h *hijackSignal) WriteHeader(code int)        { h.writer().WriteHeader(code) }

func (h *hijackSignal) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	hj, ok := h.writer().(http.Hijacker)
	if !ok {
		return nil, nil, errors.New("app: connection cannot be taken over")
	}
	c, brw, err := hj.Hijack()
	if err == nil {
		h.mu.Lock()
		h.w = nil
		h.mu.Unlock()
		close(h.hijacked)
	}
	return c, brw, err
}

// discard stands in for the response writer once the connection is hijacked.
type discard struct{}

func (discard) Header() http.Header         { return http.Header{} }
func (discard) Write(b []byte) (int, error) { return 0, http.ErrHijacked }
func (discard) WriteHeader(int)             {}
