// Package subscribe is the gateway's websocket transport for GraphQL
// (GET /graphql with Upgrade: websocket): the graphql-transport-ws protocol
// of graphql-ws and the legacy graphql-ws protocol of
// subscriptions-transport-ws, on gorilla/websocket. gqlgen still parses,
// validates and executes (its executor over graph.Schema); this package
// keeps connections and events cheap:
//
//   - one goroutine per connection, its reader; a live subscription is a
//     sink the broker calls, not a goroutine; one with after has a
//     goroutine while it replays from the log (events.Replay), then is a
//     sink like the others;
//   - one keep-alive timer for all connections;
//   - a bounded queue of frames per connection, written by a goroutine that
//     exists only while the queue is not empty, all frames it drained with
//     one write (batchconn.go); a subscription that finds the queue full is
//     ended with SLOW_SUBSCRIBER and its last cursor;
//   - each event rendered once per group of subscriptions that render it
//     alike (graph.Stream.Key), the same payload bytes written to each of
//     them: only the operation id differs per frame; an event that cannot
//     be rendered ends those subscriptions with an error message each,
//     and the connection goes on.
//
// Close codes: 4400 a message this protocol does not define or a malformed
// one, 4401 an operation before the connection was acknowledged or missing
// or wrong credentials, 4403 credentials refused with a code other than
// UNAUTHENTICATED (the authenticator returns none today: an Element token
// beside another organization's credentials is UNAUTHENTICATED, as over
// HTTP), 4408 no connection_init within the init timeout, 4409
// (graphql-transport-ws) an operation id already in use, 4429 a second
// connection_init (graphql-transport-ws), the organization's cap on
// connections reached (LIMIT_EXCEEDED in the reason) or a connection_init
// from an address throttled for failed authentications (RATE_LIMITED in the
// reason), 4499 the gateway shutting down or a graphql-transport-ws peer
// that stopped answering pings, 4500 an internal failure (the credentials
// could not be checked: the store failed). graphql-ws retries none of 4400,
// 4401, 4409 and 4429.
package subscribe

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/99designs/gqlgen/graphql"
	"github.com/gorilla/websocket"
	"github.com/vektah/gqlparser/v2/ast"
	"github.com/vektah/gqlparser/v2/gqlerror"

	"github.com/leadstream/leadstream/graph"
	"github.com/leadstream/leadstream/internal/apperr"
	"github.com/leadstream/leadstream/internal/auth"
	"github.com/leadstream/leadstream/internal/events"
	"github.com/leadstream/leadstream/internal/throttle"
)

// Executor parses, validates and runs operations (gqlgen's executor, shared
// with the HTTP transports).
type Executor interface {
	CreateOperationContext(ctx context.Context, params *graphql.RawParams) (*graphql.OperationContext, gqlerror.List)
	DispatchOperation(ctx context.Context, oc *graphql.OperationContext) (graphql.ResponseHandler, context.Context)
}

// Streams checks subscription operations (graph.Schema).
type Streams interface {
	Open(ctx context.Context, oc *graphql.OperationContext) (*graph.Stream, error)
}

// Authenticator checks a connection's Authorization value.
type Authenticator interface {
	Authenticate(ctx context.Context, header string) (auth.Identity, error)
}

// Throttle counts failed authentications per client address
// (throttle.Failures): an address past its threshold is refused before its
// credentials are looked at.
type Throttle interface {
	Blocked(client string) (time.Duration, bool)
	Fail(client string)
}

// Events attaches sinks to live events, after a replay from the log when
// after is set (events.Streamer).
type Events interface {
	Attach(ctx context.Context, f events.Filter, after string, sink events.Sink) (*events.Subscription, *events.Replay, error)
}

// Options configure a Server. Zero durations and sizes take the defaults.
type Options struct {
	Exec    Executor
	Streams Streams
	Auth    Authenticator
	// Throttle, when set, counts each connection_init whose credentials
	// are missing or wrong against the client's address
	// (throttle.ClientKey), and closes connection_inits from a blocked
	// address with 4429 and RATE_LIMITED.
	Throttle Throttle
	Events   Events
	Present  graphql.ErrorPresenterFunc
	Log      *slog.Logger

	InitTimeout time.Duration // connection_init must arrive within (10 s)
	KeepAlive   time.Duration // ping (ka) interval; a silent graphql-transport-ws peer is dropped after 8 (15 s)
	// WriteTimeout is how long one frame may take to write (30 s): a peer
	// that reads nothing for that long is disconnected. Until then what
	// it holds is bounded by QueueSize and the socket's buffers.
	WriteTimeout time.Duration
	// QueueSize is how many event frames a connection may have unwritten
	// (SUBSCRIPTION_BUFFER); a subscription whose event finds it full ends.
	QueueSize int
	// SubscriptionsPerConnection and ConnectionsPerOrganization are caps;
	// zero means none.
	SubscriptionsPerConnection int
	ConnectionsPerOrganization int
	ReadLimit                  int64 // largest message read (1 MiB)
	// OperationTimeout bounds a query or mutation (none when zero); its
	// context ends with TimedOut as the cause.
	OperationTimeout time.Duration
	TimedOut         error
}

// Protocols and close codes.
const (
	protoTransportWS = "graphql-transport-ws"
	protoLegacy      = "graphql-ws"

	closeBadRequest      = 4400
	closeUnauthorized    = 4401
	closeForbidden       = 4403
	closeInitTimeout     = 4408
	closeSubscriberTaken = 4409
	closeTooMany         = 4429
	closeTerminated      = 4499
	closeInternal        = 4500
)

// Server accepts websocket connections and owns their goroutines.
type Server struct {
	o        Options
	upgrader websocket.Upgrader
	ctx      context.Context // parent of every connection's
	cancel   context.CancelFunc
	wg       sync.WaitGroup // readers, writers, running operations, keep-alive

	mu     sync.Mutex
	conns  map[*conn]struct{}
	perOrg map[string]int
	groups map[string]*group
	closed bool
}

// New returns a running Server; Close stops it.
func New(o Options) *Server {
	if o.InitTimeout <= 0 {
		o.InitTimeout = 10 * time.Second
	}
	if o.KeepAlive <= 0 {
		o.KeepAlive = 15 * time.Second
	}
	if o.WriteTimeout <= 0 {
		o.WriteTimeout = 30 * time.Second
	}
	if o.QueueSize <= 0 {
		o.QueueSize = 256
	}
	if o.ReadLimit <= 0 {
		o.ReadLimit = 1 << 20
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	s := &Server{o: o, conns: map[*conn]struct{}{}, perOrg: map[string]int{}, groups: map[string]*group{}}
	s.upgrader = websocket.Upgrader{
		ReadBufferSize:  1024,
		WriteBufferSize: 1024,
		// Connections borrow a write buffer only while writing.
		WriteBufferPool: &sync.Pool{},
		Subprotocols:    []string{protoTransportWS, protoLegacy},
		// Credentials travel in connection_init, never in cookies, so a
		// cross-origin page gains nothing from opening a socket.
		CheckOrigin: func(*http.Request) bool { return true },
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.wg.Add(1)
	go s.keepAlive()
	return s
}

// Close ends every connection (close 4499) and waits for their goroutines.
func (s *Server) Close() {
	s.mu.Lock()
	s.closed = true
	conns := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		c.closeWith(closeTerminated, "the gateway is shutting down", nil)
	}
	s.cancel()
	s.wg.Wait()
}

// Count is the number of open connections.
func (s *Server) Count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

// ServeHTTP upgrades the request and returns: the connection's reader
// goroutine serves it from then on, so net/http frees the request's buffers.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := &hijacker{ResponseWriter: w}
	ws, err := s.upgrader.Upgrade(h, r, nil)
	if err != nil {
		return // the upgrader answered
	}
	proto := ws.Subprotocol()
	if proto == "" {
		// No subprotocol offered: graphql-ws's is the default of most clients.
		proto = protoTransportWS
	}
	c := &conn{s: s, ws: ws, bc: h.bc, legacy: proto == protoLegacy, header: r.Header.Get("Authorization"),
		client: throttle.ClientKey(r.RemoteAddr), ops: map[string]*op{}}
	c.ctx, c.cancel = context.WithCancel(s.ctx)
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		c.cancel()
		_ = ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(closeTerminated, "the gateway is shutting down"), time.Now().Add(time.Second))
		ws.Close()
		return
	}
	s.conns[c] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()
	go c.read()
}

// silentIntervals is how many keep-alive intervals a graphql-transport-ws
// peer may stay silent (no pong, no message) before it is dropped: generous,
// since some clients answer pings late or never while they are busy.
const silentIntervals = 8

// keepAlive pings every connection from one timer and drops the
// graphql-transport-ws ones that stayed silent for silentIntervals.
func (s *Server) keepAlive() {
	defer s.wg.Done()
	t := time.NewTicker(s.o.KeepAlive)
	defer t.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
		}
		s.mu.Lock()
		conns := make([]*conn, 0, len(s.conns))
		for c := range s.conns {
			conns = append(conns, c)
		}
		s.mu.Unlock()
		for _, c := range conns {
			if !c.acked.Load() {
				continue // the init timeout is the reader's deadline
			}
			if c.legacy {
				c.enqueue(frame{raw: msgKA}, false)
				continue
			}
			if c.silent.Add(1) > silentIntervals {
				c.closeWith(closeTerminated, "no answer to pings", nil)
				continue
			}
			c.enqueue(frame{raw: msgPing}, false)
		}
	}
}

var (
	msgAck  = []byte(`{"type":"connection_ack"}`)
	msgPing = []byte(`{"type":"ping"}`)
	msgPong = []byte(`{"type":"pong"}`)
	msgKA   = []byte(`{"type":"ka"}`)
)

// group is the subscriptions rendering every event alike; it renders each
// event once, while some member still has it queued.
type group struct {
	key     string
	st      *graph.Stream
	members int // under Server.mu

	mu      sync.Mutex
	pending map[*events.Event]*rendering
}

// rendering is one event's payload for one group.
type rendering struct {
	g    *group
	ev   *events.Event
	refs atomic.Int32 // queued frames holding it; 0 → 1 only under g.mu
	once sync.Once
	msg  []byte // {"data":…}
	err  error  // the event could not be rendered: each member's operation ends with it
}

func (s *Server) join(st *graph.Stream) *group {
	s.mu.Lock()
	defer s.mu.Unlock()
	g := s.groups[st.Key]
	if g == nil {
		g = &group{key: st.Key, st: st, pending: map[*events.Event]*rendering{}}
		s.groups[st.Key] = g
	}
	g.members++
	return g
}

func (s *Server) leave(g *group) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if g.members--; g.members == 0 {
		delete(s.groups, g.key)
	}
}

func (g *group) retain(ev *events.Event) *rendering {
	g.mu.Lock()
	defer g.mu.Unlock()
	r := g.pending[ev]
	if r == nil {
		r = &rendering{g: g, ev: ev}
		g.pending[ev] = r
	}
	r.refs.Add(1)
	return r
}

// release drops one hold; the last forgets the rendering. Writers of every
// member release at once, so only the last one takes the group's lock.
func (r *rendering) release() {
	if r.refs.Add(-1) > 0 {
		return
	}
	r.g.mu.Lock()
	defer r.g.mu.Unlock()
	// A retain may have taken it up again meanwhile.
	if r.refs.Load() == 0 && r.g.pending[r.ev] == r {
		delete(r.g.pending, r.ev)
	}
}

// payload renders the event the first time any member needs it.
func (r *rendering) payload() ([]byte, error) {
	r.once.Do(func() {
		data, err := r.g.st.Render(r.ev)
		if err != nil {
			r.err = err
			return
		}
		b := append(make([]byte, 0, len(data)+16), `{"data":`...)
		b = append(b, data...)
		r.msg = append(b, '}')
	})
	return r.msg, r.err
}

// conn is one websocket connection.
type conn struct {
	s      *Server
	ws     *websocket.Conn
	bc     *batchConn // under ws: lets the writer send a batch with one write
	legacy bool
	header string          // the upgrade request's Authorization
	client string          // the client's address as the throttle counts it
	ctx    context.Context // ends with the connection
	cancel context.CancelFunc
	who    context.Context // ctx with the caller's identity, once acknowledged (reader only)
	org    string          // counted in Server.perOrg once acknowledged

	acked  atomic.Bool
	silent atomic.Int32 // keep-alive ticks since the peer last said anything

	mu      sync.Mutex
	ops     map[string]*op
	subs    int // streaming operations in ops
	queue   []frame
	spare   []frame
	events  int // event frames in queue
	writing bool
	closing bool          // a close frame is queued or sent: nothing more goes out
	room    chan struct{} // closed when the writer made room, for waiting producers
	wmu     sync.Mutex    // held by the one goroutine writing
}

// op is one operation of a connection. A live subscription is its own
// events.Sink.
type op struct {
	c       *conn
	id      string
	idJSON  []byte
	head    []byte // an event frame's bytes before the payload (writer only)
	stream  bool
	g       *group
	sub     *events.Subscription
	cancel  context.CancelFunc
	stopped atomic.Bool // the client completed it, or the connection ended: queued frames are dropped
	ended   bool        // under c.mu: the gateway ended it
}

// frame is one message queued for the writer.
type frame struct {
	op    *op
	r     *rendering // an event: {"id","type":"next"/"data","payload":r.payload()}
	raw   []byte     // a whole message
	err   error      // an error that ended op: presented by the writer
	close int        // a close frame with reason
	why   string
}

// enqueue queues f. An event frame (f.r set) is refused when the queue
// holds QueueSize of them; force queues any other frame regardless (errors
// ending a subscription, completions). Pongs and pings are dropped when
// a peer lets the queue grow.
func (c *conn) enqueue(f frame, force bool) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closing {
		return false
	}
	if f.r != nil {
		if c.events >= c.s.o.QueueSize {
			return false
		}
		c.events++
	} else if !force && len(c.queue) >= c.s.o.QueueSize {
		return false
	}
	c.queue = append(c.queue, f)
	c.startWriterLocked()
	return true
}

// enqueueWait queues f once fewer than room event frames are queued, if f
// is an event (replays and results of queries, which have a goroutine to
// wait on); a nil f only waits for that.
func (c *conn) enqueueWait(ctx context.Context, f *frame, room int) bool {
	for {
		c.mu.Lock()
		if c.closing || (f != nil && f.op != nil && (f.op.stopped.Load() || f.op.ended)) {
			c.mu.Unlock()
			return false
		}
		if (f != nil && f.r == nil) || c.events < room {
			if f != nil {
				if f.r != nil {
					c.events++
				}
				c.queue = append(c.queue, *f)
				c.startWriterLocked()
			}
			c.mu.Unlock()
			return true
		}
		if c.room == nil {
			c.room = make(chan struct{})
		}
		wait := c.room
		c.mu.Unlock()
		select {
		case <-wait:
		case <-ctx.Done():
			return false
		}
	}
}

func (c *conn) startWriterLocked() {
	if c.writing {
		return
	}
	c.writing = true
	c.s.wg.Add(1)
	go c.write()
}

// write drains the queue and exits when it is empty.
func (c *conn) write() {
	defer c.s.wg.Done()
	var buf bytes.Buffer
	failed := false
	for {
		c.mu.Lock()
		batch := c.queue
		if len(batch) == 0 || failed {
			c.queue = c.queue[:0]
			c.writing = false
			c.mu.Unlock()
			for _, f := range batch {
				if f.r != nil {
					f.r.release()
				}
			}
			return
		}
		c.queue, c.spare = c.spare[:0], nil
		c.mu.Unlock()

		c.wmu.Lock()
		c.bc.hold(c.s.o.WriteTimeout)
		n := 0
		for i, f := range batch {
			if f.r != nil {
				n++
			}
			if failed {
				if f.r != nil {
					f.r.release()
				}
				continue
			}
			if err := c.writeFrame(&buf, f); err != nil {
				failed = true
			}
			batch[i] = frame{}
		}
		// One write for the whole batch: a subscriber that lags gets
		// several frames per syscall instead of one.
		if err := c.bc.flush(); err != nil || failed {
			failed = true
			c.ws.Close() // the reader sees it and cleans up
		}
		c.wmu.Unlock()

		c.mu.Lock()
		c.events -= n
		if c.spare == nil {
			c.spare = batch[:0]
		}
		if c.room != nil {
			close(c.room)
			c.room = nil
		}
		c.mu.Unlock()
	}
}

func (c *conn) writeFrame(buf *bytes.Buffer, f frame) error {
	switch {
	case f.close != 0:
		msg := websocket.FormatCloseMessage(f.close, truncate(f.why))
		return c.ws.WriteControl(websocket.CloseMessage, msg, time.Now().Add(time.Second))
	case f.r != nil:
		defer f.r.release()
		if f.op.stopped.Load() {
			return nil
		}
		payload, err := f.r.payload()
		if err != nil {
			return c.renderFailed(buf, f.op, err)
		}
		return c.bc.writeText(c.header1(f.op), payload, closeBrace)
	case f.err != nil:
		// The end of a stream: a last result with the error, then complete.
		buf.Reset()
		ej, _ := json.Marshal(gqlerror.List{c.s.o.Present(c.ctx, f.err)})
		buf.Write(c.header1(f.op))
		buf.WriteString(`{"data":null,"errors":`)
		buf.Write(ej)
		buf.WriteString(`}}`)
		if err := c.bc.writeText(buf.Bytes()); err != nil {
			return err
		}
		return c.bc.writeText(c.msg(f.op, "complete", nil))
	default:
		if f.op != nil && f.op.stopped.Load() {
			return nil
		}
		return c.bc.writeText(f.raw)
	}
}

// renderFailed ends a subscription whose event could not be rendered (the
// writer, holding wmu): it leaves the broker (or its replay stops) and the
// client gets an error message for it, after which nothing more is sent for
// that id (frames still queued for it are dropped). The connection and its
// other operations go on.
func (c *conn) renderFailed(buf *bytes.Buffer, o *op, err error) error {
	c.mu.Lock()
	if c.ops[o.id] != o {
		c.mu.Unlock()
		return nil // completed by the client or ended meanwhile
	}
	delete(c.ops, o.id)
	c.subs--
	o.stopped.Store(true)
	c.mu.Unlock()
	o.release()
	buf.Reset()
	c.appendError(buf, o.idJSON, gqlerror.List{c.s.o.Present(c.ctx, err)})
	return c.bc.writeText(buf.Bytes())
}

var closeBrace = []byte{'}'}

// header1 is an event frame's bytes before the payload, made once per
// operation (by the writer, the only caller).
func (c *conn) header1(o *op) []byte {
	if o.head != nil {
		return o.head
	}
	typ := `,"type":"next","payload":`
	if c.legacy {
		typ = `,"type":"data","payload":`
	}
	b := make([]byte, 0, 48+len(o.idJSON))
	b = append(b, `{"id":`...)
	b = append(b, o.idJSON...)
	o.head = append(b, typ...)
	return o.head
}

func (c *conn) appendError(buf *bytes.Buffer, idJSON []byte, errs gqlerror.List) {
	ej, _ := json.Marshal(errs)
	buf.WriteString(`{"id":`)
	buf.Write(idJSON)
	buf.WriteString(`,"type":"error","payload":`)
	buf.Write(ej)
	buf.WriteByte('}')
}

func (c *conn) msg(o *op, typ string, payload []byte) []byte {
	b := make([]byte, 0, len(payload)+len(o.idJSON)+40)
	b = append(b, `{"id":`...)
	b = append(b, o.idJSON...)
	b = append(b, `,"type":"`...)
	b = append(b, typ...)
	b = append(b, '"')
	if payload != nil {
		b = append(b, `,"payload":`...)
		b = append(b, payload...)
	}
	return append(b, '}')
}

// closeWith queues final (if any) and a close frame, after which nothing
// else is sent, and gives the peer a moment to answer it before the reader
// closes the socket.
func (c *conn) closeWith(code int, why string, final []byte) {
	c.mu.Lock()
	if c.closing {
		c.mu.Unlock()
		return
	}
	if final != nil {
		c.queue = append(c.queue, frame{raw: final})
	}
	c.queue = append(c.queue, frame{close: code, why: why})
	c.closing = true
	c.startWriterLocked()
	c.mu.Unlock()
	_ = c.ws.NetConn().SetReadDeadline(time.Now().Add(closeGrace))
}

// closeGrace is how long a peer has to answer our close frame.
const closeGrace = 2 * time.Second

// waitWritten waits until the writer emptied the queue, at most d.
func (c *conn) waitWritten(d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	for {
		c.mu.Lock()
		if !c.writing {
			c.mu.Unlock()
			return
		}
		if c.room == nil {
			c.room = make(chan struct{})
		}
		room := c.room
		c.mu.Unlock()
		select {
		case <-room:
		case <-t.C:
			return
		}
	}
}

func truncate(s string) string {
	const max = 123 // a close frame's reason
	if len(s) <= max {
		return s
	}
	return s[:max]
}

// message is what a client sends.
type message struct {
	ID      *string         `json:"id"`
	Type    string          `json:"type"`
	Payload json.RawMessage `json:"payload"`
}

// read is the connection's goroutine: it reads and handles messages until
// the socket ends, then frees everything the connection held.
func (c *conn) read() {
	defer c.s.wg.Done()
	defer c.cleanup()
	c.ws.SetReadLimit(c.s.o.ReadLimit)
	_ = c.ws.SetReadDeadline(time.Now().Add(c.s.o.InitTimeout))
	for {
		_, data, err := c.ws.ReadMessage()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() && !c.acked.Load() && !c.isClosing() {
				// gorilla fails every read after this one: send the close
				// and end without waiting for the answer.
				c.closeWith(closeInitTimeout, "Connection initialisation timeout", nil)
				c.waitWritten(closeGrace)
			}
			return
		}
		c.silent.Store(0)
		if c.isClosing() {
			continue // waiting for the peer's close
		}
		var m message
		if err := json.Unmarshal(data, &m); err != nil || m.Type == "" {
			c.badRequest("invalid message: not a JSON object with a type")
			continue
		}
		c.handle(m)
	}
}

func (c *conn) isClosing() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closing
}

func (c *conn) badRequest(why string) {
	var final []byte
	if c.legacy {
		final = legacyError(why, "")
	}
	c.closeWith(closeBadRequest, why, final)
}

// legacyError is a connection_error of subscriptions-transport-ws.
func legacyError(msg, code string) []byte {
	p := map[string]any{"message": msg}
	if code != "" {
		p["extensions"] = map[string]any{"code": code}
	}
	b, _ := json.Marshal(map[string]any{"type": "connection_error", "payload": p})
	return b
}

func (c *conn) handle(m message) {
	id := ""
	if m.ID != nil {
		id = *m.ID
	}
	switch {
	case m.Type == "connection_init":
		if c.acked.Load() {
			if c.legacy {
				c.enqueue(frame{raw: msgAck}, true)
				return
			}
			c.closeWith(closeTooMany, "Too many initialisation requests", nil)
			return
		}
		c.init(m.Payload)
	case m.Type == "ping" && !c.legacy:
		c.enqueue(frame{raw: msgPong}, false)
	case m.Type == "pong" && !c.legacy:
	case m.Type == "subscribe" && !c.legacy, m.Type == "start" && c.legacy:
		if !c.acked.Load() {
			c.closeWith(closeUnauthorized, "Unauthorized", nil)
			return
		}
		if id == "" {
			c.badRequest("an operation needs an id")
			return
		}
		c.mu.Lock()
		_, taken := c.ops[id]
		c.mu.Unlock()
		if taken {
			if !c.legacy {
				c.closeWith(closeSubscriberTaken, truncate("Subscriber for "+id+" already exists"), nil)
				return
			}
			c.stop(id) // the legacy protocol replaces the operation
		}
		c.start(id, m.Payload)
	case m.Type == "complete" && !c.legacy, m.Type == "stop" && c.legacy:
		c.stop(id)
	case m.Type == "connection_terminate" && c.legacy:
		c.closeWith(websocket.CloseNormalClosure, "terminated", nil)
	default:
		c.badRequest(truncate("invalid message type " + strconv.Quote(m.Type)))
	}
}

// init authenticates the connection and applies the organization's cap.
func (c *conn) init(payload json.RawMessage) {
	var p map[string]any
	if len(payload) > 0 && string(payload) != "null" {
		if err := json.Unmarshal(payload, &p); err != nil {
			c.badRequest("connection_init payload is not an object")
			return
		}
	}
	h, _ := p["Authorization"].(string)
	if h == "" {
		h, _ = p["authorization"].(string)
	}
	if h == "" {
		h = c.header
	}
	if t := c.s.o.Throttle; t != nil {
		// Also checked before the upgrade (HTTP 429); this catches sockets
		// opened before the address was blocked.
		if wait, blocked := t.Blocked(c.client); blocked {
			why := fmt.Sprintf("RATE_LIMITED: too many failed authentications from this address; retry after %d s",
				int((wait+time.Second-1)/time.Second))
			var final []byte
			if c.legacy {
				final = legacyError(why, apperr.RateLimited)
			}
			c.closeWith(closeTooMany, why, final)
			return
		}
	}
	var id auth.Identity
	err := c.off(func() (err error) { id, err = c.s.o.Auth.Authenticate(c.ctx, h); return err })
	if err != nil && errors.Is(err, auth.ErrUnauthenticated) && c.s.o.Throttle != nil {
		c.s.o.Throttle.Fail(c.client)
	}
	if err != nil {
		code, why, ext := closeUnauthorized, "Unauthorized", apperr.Unauthenticated
		if e, ok := apperr.As(err); ok && e.Code == apperr.RateLimited {
			code, why, ext = closeTooMany, e.Message, e.Code
		} else if ok && e.Code != apperr.Unauthenticated {
			code, why, ext = closeForbidden, e.Message, e.Code
		} else if !errors.Is(err, auth.ErrUnauthenticated) && !ok {
			c.s.o.Log.Error("websocket auth", "err", err)
			code, why, ext = closeInternal, "internal error", apperr.Internal
		}
		var final []byte
		if c.legacy {
			final = legacyError(why, ext)
		}
		c.closeWith(code, why, final)
		return
	}
	if max := c.s.o.ConnectionsPerOrganization; max > 0 {
		c.s.mu.Lock()
		full := c.s.perOrg[id.OrgID] >= max
		if !full {
			c.s.perOrg[id.OrgID]++
			c.org = id.OrgID
		}
		c.s.mu.Unlock()
		if full {
			why := fmt.Sprintf("LIMIT_EXCEEDED: at most %d websocket connections per organization (WEBSOCKETS_PER_ORGANIZATION)", max)
			var final []byte
			if c.legacy {
				final = legacyError(why, apperr.LimitExceeded)
			}
			c.closeWith(closeTooMany, why, final)
			return
		}
	}
	c.who = auth.WithIdentity(c.ctx, id)
	_ = c.ws.SetReadDeadline(time.Time{})
	c.acked.Store(true)
	c.enqueue(frame{raw: msgAck}, true)
	if c.legacy {
		c.enqueue(frame{raw: msgKA}, true)
	}
}

// off runs fn on a goroutine of its own and waits: parsing, validation and
// store lookups grow a stack, and the reader's should stay small while it
// waits for the next message.
func (c *conn) off(fn func() error) error {
	done := make(chan error, 1)
	go func() { done <- fn() }()
	return <-done
}

// start runs a subscribe (start) message's operation.
func (c *conn) start(id string, payload json.RawMessage) {
	var p struct {
		Query         string         `json:"query"`
		OperationName string         `json:"operationName"`
		Variables     map[string]any `json:"variables"`
		Extensions    map[string]any `json:"extensions"`
	}
	if err := json.Unmarshal(payload, &p); err != nil {
		c.badRequest("invalid subscribe payload")
		return
	}
	idJSON, _ := json.Marshal(id)
	o := &op{c: c, id: id, idJSON: idJSON}
	now := graphql.Now()
	params := &graphql.RawParams{Query: p.Query, OperationName: p.OperationName, Variables: p.Variables,
		Extensions: p.Extensions, ReadTime: graphql.TraceTiming{Start: now, End: now}}
	ctx := graphql.StartOperationTrace(c.who)
	var oc *graphql.OperationContext
	var st *graph.Stream
	var refused gqlerror.List // before execution: an error message
	var failed error          // opening the stream: a result with the error, then complete
	_ = c.off(func() error {
		var raw gqlerror.List
		if oc, raw = c.s.o.Exec.CreateOperationContext(ctx, params); raw != nil {
			for _, e := range raw {
				refused = append(refused, c.s.o.Present(ctx, e))
			}
			return nil
		}
		if oc.Operation.Operation != ast.Subscription {
			return nil
		}
		if max := c.s.o.SubscriptionsPerConnection; max > 0 && c.countSubs() >= max {
			refused = gqlerror.List{c.s.o.Present(ctx, apperr.New(apperr.LimitExceeded,
				"at most %d subscriptions per connection (SUBSCRIPTIONS_PER_CONNECTION); complete one first", max))}
			return nil
		}
		st, failed = c.s.o.Streams.Open(ctx, oc)
		return nil
	})
	if refused != nil {
		var buf bytes.Buffer
		c.appendError(&buf, idJSON, refused)
		c.enqueue(frame{raw: buf.Bytes()}, true)
		return
	}
	if failed != nil {
		// As graphql-ws's own server does when a source stream cannot be
		// created: one result carrying the error, then complete.
		c.enqueue(frame{op: o, err: failed}, true)
		return
	}
	if st == nil {
		c.runOnce(ctx, o, oc)
		return
	}
	o.stream, o.g = true, c.s.join(st)
	c.mu.Lock()
	c.ops[id] = o
	c.subs++
	c.mu.Unlock()
	rctx, cancel := context.WithCancel(c.who)
	// Set before any of its frames exist: the writer may release the op.
	o.cancel = cancel
	sub, rp, err := c.s.o.Events.Attach(rctx, st.Filter, st.After, o)
	if err != nil {
		cancel()
		o.End(err)
		return
	}
	// The writer may have stopped the op already (an event it could not
	// render), before the subscription was known to it.
	c.mu.Lock()
	o.sub = sub
	stopped := o.stopped.Load()
	c.mu.Unlock()
	if stopped {
		sub.Close()
		return
	}
	if rp == nil {
		cancel() // live: nothing waits on rctx
		return
	}
	c.s.wg.Add(1)
	go c.replay(rctx, o, rp)
}

func (c *conn) countSubs() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.subs
}

// runOnce runs a query or mutation on a goroutine of its own.
func (c *conn) runOnce(ctx context.Context, o *op, oc *graphql.OperationContext) {
	if d := c.s.o.OperationTimeout; d > 0 {
		ctx, o.cancel = context.WithTimeoutCause(ctx, d, c.s.o.TimedOut)
	} else {
		ctx, o.cancel = context.WithCancel(ctx)
	}
	c.mu.Lock()
	c.ops[o.id] = o
	c.mu.Unlock()
	c.s.wg.Add(1)
	go func() {
		defer c.s.wg.Done()
		defer o.cancel()
		h, ctx := c.s.o.Exec.DispatchOperation(ctx, oc)
		for {
			resp := h(ctx)
			if resp == nil {
				break
			}
			b, err := json.Marshal(resp)
			if err != nil {
				c.s.o.Log.Error("websocket: encode a response", "err", err)
				break
			}
			if !c.enqueueWait(ctx, &frame{op: o, raw: c.msg(o, c.nextType(), b)}, c.s.o.QueueSize) {
				return
			}
		}
		c.mu.Lock()
		if c.ops[o.id] == o {
			delete(c.ops, o.id)
		}
		c.mu.Unlock()
		c.enqueue(frame{op: o, raw: c.msg(o, "complete", nil)}, true)
	}()
}

func (c *conn) nextType() string {
	if c.legacy {
		return "data"
	}
	return "next"
}

// replay moves the logged events of a subscription with after into the
// queue, waiting for room, and returns once the subscription is live: from
// then on it is a sink like any other, with no goroutine of its own.
func (c *conn) replay(ctx context.Context, o *op, rp *events.Replay) {
	defer c.s.wg.Done()
	for {
		if ev := rp.Next(ctx); ev != nil {
			r := o.g.retain(ev)
			if !c.enqueueWait(ctx, &frame{op: o, r: r}, c.s.o.QueueSize) {
				r.release()
				return
			}
			continue
		}
		if ctx.Err() != nil {
			return
		}
		// Caught up. Live events are refused when the queue is full: go
		// live with room for them, not straight after filling it.
		if !c.enqueueWait(ctx, nil, c.s.o.QueueSize/2+1) {
			return
		}
		if rp.Live() {
			return
		}
	}
}

// Offer queues one live event for the writer (events.Sink; under the
// broker's lock).
func (o *op) Offer(ev *events.Event) bool {
	if o.stopped.Load() {
		return true // being closed; nothing more is sent
	}
	r := o.g.retain(ev)
	if !o.c.enqueue(frame{op: o, r: r}, false) {
		r.release()
		return false
	}
	return true
}

// End ends the operation with err after what is queued (events.Sink; nil
// when we closed it ourselves).
func (o *op) End(err error) {
	if err == nil {
		return
	}
	c := o.c
	c.mu.Lock()
	if o.ended || c.ops[o.id] != o {
		c.mu.Unlock()
		return
	}
	o.ended = true
	delete(c.ops, o.id)
	c.subs--
	if !c.closing {
		c.queue = append(c.queue, frame{op: o, err: err})
		c.startWriterLocked()
	}
	c.mu.Unlock()
	c.s.leave(o.g)
}

// stop ends an operation the client completed; frames still queued for it
// are dropped.
func (c *conn) stop(id string) {
	c.mu.Lock()
	o := c.ops[id]
	if o == nil {
		c.mu.Unlock()
		return
	}
	delete(c.ops, id)
	if o.stream {
		c.subs--
	}
	o.stopped.Store(true)
	c.mu.Unlock()
	o.release()
}

// release lets go of what a stopped operation holds.
func (o *op) release() {
	o.c.mu.Lock()
	sub := o.sub
	o.c.mu.Unlock()
	if sub != nil {
		sub.Close()
	}
	if o.cancel != nil {
		o.cancel()
	}
	if o.g != nil {
		o.c.s.leave(o.g)
	}
}

// cleanup runs when the reader ends: every operation stops, the socket
// closes, the connection is forgotten.
func (c *conn) cleanup() {
	c.mu.Lock()
	c.closing = true
	ops := c.ops
	c.ops = map[string]*op{}
	c.mu.Unlock()
	for _, o := range ops {
		o.stopped.Store(true)
		o.release()
	}
	c.ws.Close()
	c.cancel()
	// The writer, if running, fails on the closed socket and frees the rest.
	c.wmu.Lock()
	c.mu.Lock()
	if !c.writing {
		for _, f := range c.queue {
			if f.r != nil {
				f.r.release()
			}
		}
		c.queue = nil
	}
	c.mu.Unlock()
	c.wmu.Unlock()
	c.s.mu.Lock()
	delete(c.s.conns, c)
	if c.org != "" {
		if c.s.perOrg[c.org]--; c.s.perOrg[c.org] <= 0 {
			delete(c.s.perOrg, c.org)
		}
	}
	c.s.mu.Unlock()
}
