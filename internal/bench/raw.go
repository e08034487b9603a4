package main

// The raw broadcast baseline: a plain gorilla/websocket hub in the style of
// gorilla's chat example. The HTTP handler upgrades, answers the client's
// connection_init and subscribe (so the very same client code works against
// it), starts a reader and a writer goroutine and returns; the writer drains
// a bounded channel. Broadcast hands one []byte to every connection without
// blocking; a connection whose buffer is full is dropped, the same policy as
// the gateway's broker, with the same buffer size. Buffers and the write
// buffer pool are set as the gateway's transport (internal/subscribe) sets them.

import (
	"context"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/gorilla/websocket"
)

type rawHub struct {
	mu       sync.Mutex
	conns    map[*rawConn]struct{}
	bufSize  int
	upgrader websocket.Upgrader
	srv      *http.Server
	url      string
	dropped  int64
}

type rawConn struct {
	ws *websocket.Conn
	ch chan []byte
}

func startRawHub(bufSize int) (*rawHub, error) {
	h := &rawHub{conns: map[*rawConn]struct{}{}, bufSize: bufSize}
	h.upgrader = websocket.Upgrader{
		ReadBufferSize:  1024,
		WriteBufferSize: 1024,
		WriteBufferPool: &sync.Pool{},
		Subprotocols:    []string{"graphql-transport-ws"},
		CheckOrigin:     func(*http.Request) bool { return true },
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	h.srv = &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	h.url = "http://" + ln.Addr().String()
	go func() { _ = h.srv.Serve(ln) }()
	return h, nil
}

func (h *rawHub) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	ws, err := h.upgrader.Upgrade(w, r, nil)
	if err != nil {
		return
	}
	keep := false
	defer func() {
		if !keep {
			ws.Close()
		}
	}()
	// connection_init → connection_ack; then subscribe registers the client.
	if _, _, err := ws.ReadMessage(); err != nil {
		return
	}
	ws.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if err := ws.WriteMessage(websocket.TextMessage, []byte(`{"type":"connection_ack"}`)); err != nil {
		return
	}
	if _, _, err := ws.ReadMessage(); err != nil {
		return
	}
	c := &rawConn{ws: ws, ch: make(chan []byte, h.bufSize)}
	h.mu.Lock()
	h.conns[c] = struct{}{}
	h.mu.Unlock()
	// As in gorilla's chat example, the handler returns and two goroutines
	// own the connection, so net/http releases its request buffers.
	keep = true
	go c.writer()
	go func() {
		defer ws.Close()
		for {
			if _, _, err := ws.ReadMessage(); err != nil {
				break
			}
		}
		h.remove(c)
	}()
}

func (h *rawHub) remove(c *rawConn) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, ok := h.conns[c]; ok {
		delete(h.conns, c)
		close(c.ch)
	}
}

func (c *rawConn) writer() {
	for b := range c.ch {
		c.ws.SetWriteDeadline(time.Now().Add(10 * time.Second))
		if err := c.ws.WriteMessage(websocket.TextMessage, b); err != nil {
			c.ws.Close()
			for range c.ch {
			}
			return
		}
	}
}

// Broadcast offers b to every connection without blocking.
func (h *rawHub) Broadcast(b []byte) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for c := range h.conns {
		select {
		case c.ch <- b:
		default:
			h.dropped++
			delete(h.conns, c)
			close(c.ch)
			c.ws.Close()
		}
	}
}

// Count is the number of registered connections.
func (h *rawHub) Count() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.conns)
}

func (h *rawHub) Close() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = h.srv.Shutdown(ctx)
	h.mu.Lock()
	for c := range h.conns {
		delete(h.conns, c)
		close(c.ch)
		c.ws.Close()
	}
	h.mu.Unlock()
}
