// Package gorillaws plugs github.com/gorilla/websocket into gqlgen's
// websocket transport, which since v0.17.98 only ships a coder/websocket
// adapter.
//
// Use it as the Implementation of a transport.Websocket:
//
//	srv.AddTransport(transport.Websocket{Implementation: gorillaws.New()})
package gorillaws

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"slices"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/99designs/gqlgen/graphql/handler/transport"
	"github.com/gorilla/websocket"
)

const (
	// DefaultWriteTimeout bounds every write when Implementation.WriteTimeout
	// is zero, so a client that stops reading cannot pin a goroutine forever.
	DefaultWriteTimeout = 10 * time.Second

	// DefaultBufferSize is used for the upgrader's read and write buffers when
	// they are left zero; gorilla's own 4 KiB default makes idle connections
	// needlessly expensive for small GraphQL messages.
	DefaultBufferSize = 1024

	// closeWriteTimeout caps how long WriteClose may wait: gqlgen calls it
	// while holding its connection lock, and the connection is torn down
	// right after anyway.
	closeWriteTimeout = time.Second

	// maxCloseReason is the largest close reason that fits in a control
	// frame (125 byte payload minus the 2 byte status code).
	maxCloseReason = 123

	// maxPooledBuffer keeps one unusually large message from pinning its
	// encode buffer in the pool for the life of the process.
	maxPooledBuffer = 64 << 10
)

// Implementation accepts websocket connections with gorilla/websocket for
// gqlgen's transport.Websocket.
//
// Use a pointer and do not copy it after first use: it owns the buffer pools
// shared by all connections it accepts. The zero value is ready to use and
// behaves like New().
type Implementation struct {
	// Upgrader is copied for each Accept. Set CheckOrigin to allow
	// cross-origin clients (gorilla rejects them by default). Zero buffer
	// sizes default to DefaultBufferSize, and a nil WriteBufferPool to a pool
	// owned by this Implementation, so idle connections hold no write buffer.
	Upgrader websocket.Upgrader

	// WriteTimeout is the deadline applied to every write so one stuck
	// client never stalls the goroutines writing to it. Zero means
	// DefaultWriteTimeout.
	WriteTimeout time.Duration

	writePool  sync.Pool // gorilla write buffers, used when Upgrader.WriteBufferPool is nil
	encodePool sync.Pool // *bytes.Buffer for JSON encoding
}

// Option customizes an Implementation built by New.
type Option func(*Implementation)

// WithUpgrader replaces the upgrader, e.g. to set CheckOrigin or enable
// compression. Zero buffer sizes and a nil WriteBufferPool still get the
// package defaults.
func WithUpgrader(u websocket.Upgrader) Option {
	return func(i *Implementation) { i.Upgrader = u }
}

// WithWriteTimeout sets the per-write deadline; zero keeps DefaultWriteTimeout.
func WithWriteTimeout(d time.Duration) Option {
	return func(i *Implementation) { i.WriteTimeout = d }
}

// New returns an Implementation with small buffers and DefaultWriteTimeout,
// then applies opts.
func New(opts ...Option) *Implementation {
	i := &Implementation{
		Upgrader: websocket.Upgrader{
			ReadBufferSize:  DefaultBufferSize,
			WriteBufferSize: DefaultBufferSize,
		},
		WriteTimeout: DefaultWriteTimeout,
	}
	for _, opt := range opts {
		opt(i)
	}
	return i
}

var _ transport.WebsocketImplementation = (*Implementation)(nil)

// Accept upgrades the request, negotiating gqlgen's subprotocols in addition
// to any configured on the Upgrader (the Upgrader's own take precedence).
// On failure the Upgrader has already written an HTTP error response.
func (i *Implementation) Accept(
	w http.ResponseWriter,
	r *http.Request,
	options transport.WebsocketAcceptOptions,
) (transport.WebsocketConn, error) {
	u := i.Upgrader
	u.Subprotocols = mergeSubprotocols(u.Subprotocols, options.Subprotocols)
	if u.ReadBufferSize == 0 {
		u.ReadBufferSize = DefaultBufferSize
	}
	if u.WriteBufferSize == 0 {
		u.WriteBufferSize = DefaultBufferSize
	}
	if u.WriteBufferPool == nil {
		u.WriteBufferPool = &i.writePool
	}

	ws, err := u.Upgrade(w, r, options.ResponseHeader)
	if err != nil {
		return nil, err
	}

	timeout := i.WriteTimeout
	if timeout <= 0 {
		timeout = DefaultWriteTimeout
	}
	return &conn{ws: ws, impl: i, writeTimeout: timeout}, nil
}

// mergeSubprotocols appends the extra protocols missing from base without
// writing into base's backing array, which belongs to the caller's Upgrader.
func mergeSubprotocols(base, extra []string) []string {
	merged := slices.Clip(base)
	for _, p := range extra {
		if !slices.Contains(merged, p) {
			merged = append(merged, p)
		}
	}
	return merged
}

func (i *Implementation) getBuffer() *bytes.Buffer {
	if b, ok := i.encodePool.Get().(*bytes.Buffer); ok {
		return b
	}
	return new(bytes.Buffer)
}

func (i *Implementation) putBuffer(b *bytes.Buffer) {
	if b.Cap() > maxPooledBuffer {
		return
	}
	b.Reset()
	i.encodePool.Put(b)
}

// conn adapts a gorilla connection to transport.WebsocketConn.
type conn struct {
	ws           *websocket.Conn
	impl         *Implementation
	writeTimeout time.Duration

	// writeMu serializes data writes: gorilla allows one concurrent writer,
	// and the deadline must be set and used by the same write. Control
	// frames (WriteClose) are safe concurrently in gorilla and skip it so
	// they never queue behind a stuck write.
	writeMu sync.Mutex
}

var (
	_ transport.WebsocketConn          = (*conn)(nil)
	_ transport.WebsocketReadLimiter   = (*conn)(nil)
	_ transport.WebsocketReadDeadliner = (*conn)(nil)
)

// NextReader reports a normal or status-less close as
// transport.ErrWebsocketClosed so gqlgen does not log it as a failure.
func (c *conn) NextReader() (int, io.Reader, error) {
	mt, r, err := c.ws.NextReader()
	if err != nil {
		if websocket.IsCloseError(err, websocket.CloseNormalClosure, websocket.CloseNoStatusReceived) {
			return mt, nil, transport.ErrWebsocketClosed
		}
		return mt, nil, err
	}
	return mt, r, nil
}

// WriteJSON encodes v fully before writing, so an encoding error never leaves
// a partial frame on the wire, and then sends it as one text message.
func (c *conn) WriteJSON(v any) error {
	buf := c.impl.getBuffer()
	defer c.impl.putBuffer(buf)

	var data []byte
	if b, ok := appendEnvelope(buf.AvailableBuffer(), v); ok {
		data = b
		buf.Write(b) // keep the grown buffer for the pool
	} else {
		if err := json.NewEncoder(buf).Encode(v); err != nil {
			return err
		}
		data = buf.Bytes()
		data = data[:len(data)-1] // drop Encode's trailing newline to match json.Marshal
	}

	c.writeMu.Lock()
	defer c.writeMu.Unlock()
	if err := c.ws.SetWriteDeadline(time.Now().Add(c.writeTimeout)); err != nil {
		return err
	}
	return c.ws.WriteMessage(websocket.TextMessage, data)
}

// WriteClose sends a close frame but waits at most min(WriteTimeout, 1s),
// because gqlgen holds its connection lock while calling it. Reasons longer
// than a control frame allows are truncated on a UTF-8 boundary.
func (c *conn) WriteClose(closeCode int, message string) error {
	timeout := min(c.writeTimeout, closeWriteTimeout)
	payload := websocket.FormatCloseMessage(closeCode, truncateReason(message))
	return c.ws.WriteControl(websocket.CloseMessage, payload, time.Now().Add(timeout))
}

// Close closes the underlying network connection without a close handshake;
// gqlgen sends its close frame through WriteClose first.
func (c *conn) Close() error {
	return c.ws.Close()
}

// Subprotocol reports the negotiated subprotocol, which selects gqlgen's
// message exchanger.
func (c *conn) Subprotocol() string {
	return c.ws.Subprotocol()
}

// SetReadLimit lets gqlgen's PayloadReadLimit take effect. gqlgen calls it
// before it starts reading, as gorilla requires.
func (c *conn) SetReadLimit(limit int64) {
	c.ws.SetReadLimit(limit)
}

// SetReadDeadline lets gqlgen enforce its ping/pong timeout. gqlgen calls it
// from its ping goroutine while NextReader blocks; that is safe because gorilla
// only forwards it to the net.Conn.
func (c *conn) SetReadDeadline(t time.Time) error {
	return c.ws.SetReadDeadline(t)
}

// truncateReason shortens s to fit a close frame without splitting a rune.
func truncateReason(s string) string {
	if len(s) <= maxCloseReason {
		return s
	}
	n := maxCloseReason
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}
