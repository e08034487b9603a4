package gorillaws

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/99designs/gqlgen/graphql/handler/transport"
	"github.com/gorilla/websocket"
)

// gqlgenOptions mirrors what transport.Websocket passes to Accept.
func gqlgenOptions() transport.WebsocketAcceptOptions {
	return transport.WebsocketAcceptOptions{
		ResponseHeader: http.Header{},
		Subprotocols:   []string{"graphql-ws", "graphql-transport-ws"},
	}
}

type pair struct {
	server transport.WebsocketConn
	client *websocket.Conn
	resp   *http.Response
}

// connect serves impl over a real TCP listener and dials it with a gorilla
// client offering protocols.
func connect(tb testing.TB, impl *Implementation, opts transport.WebsocketAcceptOptions, protocols ...string) pair {
	tb.Helper()

	accepted := make(chan transport.WebsocketConn, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := impl.Accept(w, r, opts)
		if err != nil {
			tb.Errorf("Accept: %v", err)
		}
		accepted <- c
	}))
	tb.Cleanup(srv.Close)

	dialer := websocket.Dialer{Subprotocols: protocols, HandshakeTimeout: 5 * time.Second}
	client, resp, err := dialer.Dial("ws"+strings.TrimPrefix(srv.URL, "http"), nil)
	if err != nil {
		tb.Fatalf("Dial: %v", err)
	}
	tb.Cleanup(func() { _ = client.Close() })

	var server transport.WebsocketConn
	select {
	case server = <-accepted:
	case <-time.After(5 * time.Second):
		tb.Fatal("server did not accept the connection")
	}
	if server == nil {
		tb.FailNow()
	}
	tb.Cleanup(func() { _ = server.Close() })

	return pair{server: server, client: client, resp: resp}
}

func TestNew(t *testing.T) {
	upgrader := websocket.Upgrader{ReadBufferSize: 4096, EnableCompression: true}

	tests := []struct {
		name        string
		opts        []Option
		wantTimeout time.Duration
		wantRead    int
		wantComp    bool
	}{
		{name: "defaults", wantTimeout: DefaultWriteTimeout, wantRead: DefaultBufferSize},
		{name: "write timeout", opts: []Option{WithWriteTimeout(time.Second)}, wantTimeout: time.Second, wantRead: DefaultBufferSize},
		{name: "upgrader", opts: []Option{WithUpgrader(upgrader)}, wantTimeout: DefaultWriteTimeout, wantRead: 4096, wantComp: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			impl := New(tt.opts...)
			if impl.WriteTimeout != tt.wantTimeout {
				t.Errorf("WriteTimeout = %v, want %v", impl.WriteTimeout, tt.wantTimeout)
			}
			if impl.Upgrader.ReadBufferSize != tt.wantRead {
				t.Errorf("ReadBufferSize = %d, want %d", impl.Upgrader.ReadBufferSize, tt.wantRead)
			}
			if impl.Upgrader.EnableCompression != tt.wantComp {
				t.Errorf("EnableCompression = %v, want %v", impl.Upgrader.EnableCompression, tt.wantComp)
			}
		})
	}
}

func TestZeroValueImplementation(t *testing.T) {
	p := connect(t, &Implementation{}, gqlgenOptions())

	c, ok := p.server.(*conn)
	if !ok {
		t.Fatalf("Accept returned %T, want *conn", p.server)
	}
	if c.writeTimeout != DefaultWriteTimeout {
		t.Errorf("writeTimeout = %v, want %v", c.writeTimeout, DefaultWriteTimeout)
	}
	if err := p.server.WriteJSON("hi"); err != nil {
		t.Fatalf("WriteJSON: %v", err)
	}
	if _, got, err := p.client.ReadMessage(); err != nil || string(got) != `"hi"` {
		t.Fatalf("ReadMessage = %q, %v; want %q", got, err, `"hi"`)
	}
}

func TestAcceptSubprotocol(t *testing.T) {
	tests := []struct {
		name     string
		upgrader []string
		client   []string
		want     string
	}{
		{name: "graphql-transport-ws", client: []string{"graphql-transport-ws"}, want: "graphql-transport-ws"},
		{name: "graphql-ws", client: []string{"graphql-ws"}, want: "graphql-ws"},
		// Server order decides, and gqlgen lists graphql-ws first, like its coder adapter.
		{name: "both offered", client: []string{"graphql-transport-ws", "graphql-ws"}, want: "graphql-ws"},
		{name: "none offered", want: ""},
		{name: "unknown offered", client: []string{"mqtt"}, want: ""},
		{name: "upgrader protocol first", upgrader: []string{"custom"}, client: []string{"graphql-ws", "custom"}, want: "custom"},
		{name: "upgrader protocol kept", upgrader: []string{"custom"}, client: []string{"graphql-transport-ws"}, want: "graphql-transport-ws"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			impl := New()
			impl.Upgrader.Subprotocols = tt.upgrader
			p := connect(t, impl, gqlgenOptions(), tt.client...)

			if got := p.server.Subprotocol(); got != tt.want {
				t.Errorf("server Subprotocol() = %q, want %q", got, tt.want)
			}
			if got := p.client.Subprotocol(); got != tt.want {
				t.Errorf("client Subprotocol() = %q, want %q", got, tt.want)
			}
			if fmt.Sprint(impl.Upgrader.Subprotocols) != fmt.Sprint(tt.upgrader) {
				t.Errorf("Accept changed Upgrader.Subprotocols to %q", impl.Upgrader.Subprotocols)
			}
		})
	}
}

func TestAcceptResponseHeader(t *testing.T) {
	opts := gqlgenOptions()
	opts.ResponseHeader.Set("X-Request-Id", "abc")
	p := connect(t, New(), opts, "graphql-transport-ws")

	if got := p.resp.Header.Get("X-Request-Id"); got != "abc" {
		t.Errorf("X-Request-Id = %q, want %q", got, "abc")
	}
}

func TestAcceptError(t *testing.T) {
	upgradeHeaders := func(r *http.Request) {
		r.Header.Set("Connection", "Upgrade")
		r.Header.Set("Upgrade", "websocket")
		r.Header.Set("Sec-WebSocket-Version", "13")
		r.Header.Set("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
	}

	tests := []struct {
		name       string
		prepare    func(*http.Request)
		wantStatus int
	}{
		{name: "not a websocket request", prepare: func(*http.Request) {}, wantStatus: http.StatusBadRequest},
		{
			name: "cross origin rejected by default",
			prepare: func(r *http.Request) {
				upgradeHeaders(r)
				r.Header.Set("Origin", "https://evil.example")
			},
			wantStatus: http.StatusForbidden,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := httptest.NewRequest(http.MethodGet, "http://api.example/graphql", nil)
			tt.prepare(r)
			w := httptest.NewRecorder()

			c, err := New().Accept(w, r, gqlgenOptions())
			if err == nil {
				t.Fatalf("Accept returned %v, want error", c)
			}
			if w.Code != tt.wantStatus {
				t.Errorf("status = %d, want %d", w.Code, tt.wantStatus)
			}
		})
	}
}

func TestWriteJSON(t *testing.T) {
	tests := []struct {
		name string
		v    any
	}{
		{name: "message", v: map[string]any{"type": "next", "id": "1", "payload": map[string]any{"data": map[string]int{"n": 1}}}},
		{name: "raw payload", v: struct {
			Type    string          `json:"type"`
			Payload json.RawMessage `json:"payload"`
		}{"data", json.RawMessage(`{"a":[1,2]}`)}},
		{name: "html escaped like json.Marshal", v: "<b>&</b>"},
		{name: "larger than buffers", v: strings.Repeat("x", 10*DefaultBufferSize)},
	}

	p := connect(t, New(), gqlgenOptions(), "graphql-transport-ws")
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			want, err := json.Marshal(tt.v)
			if err != nil {
				t.Fatal(err)
			}
			if err := p.server.WriteJSON(tt.v); err != nil {
				t.Fatalf("WriteJSON: %v", err)
			}
			mt, got, err := p.client.ReadMessage()
			if err != nil {
				t.Fatalf("ReadMessage: %v", err)
			}
			if mt != websocket.TextMessage {
				t.Errorf("message type = %d, want text", mt)
			}
			if string(got) != string(want) {
				t.Errorf("client read %q, want %q", got, want)
			}
		})
	}
}

func TestWriteJSONEncodeErrorWritesNothing(t *testing.T) {
	p := connect(t, New(), gqlgenOptions(), "graphql-transport-ws")

	if err := p.server.WriteJSON(make(chan int)); err == nil {
		t.Fatal("WriteJSON(chan) succeeded, want encoding error")
	}
	if err := p.server.WriteJSON("after"); err != nil {
		t.Fatalf("WriteJSON after encode error: %v", err)
	}
	if _, got, err := p.client.ReadMessage(); err != nil || string(got) != `"after"` {
		t.Fatalf("first message = %q, %v; want %q", got, err, `"after"`)
	}
}

func TestNextReader(t *testing.T) {
	p := connect(t, New(), gqlgenOptions(), "graphql-transport-ws")

	if err := p.client.WriteMessage(websocket.TextMessage, []byte(`{"type":"ping"}`)); err != nil {
		t.Fatal(err)
	}
	mt, r, err := p.server.NextReader()
	if err != nil {
		t.Fatalf("NextReader: %v", err)
	}
	got, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	if mt != websocket.TextMessage || string(got) != `{"type":"ping"}` {
		t.Errorf("NextReader = %d %q, want text %q", mt, got, `{"type":"ping"}`)
	}
}

func TestNextReaderClose(t *testing.T) {
	sendClose := func(code int) func(*websocket.Conn) error {
		return func(c *websocket.Conn) error {
			return c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, ""), time.Now().Add(time.Second))
		}
	}

	tests := []struct {
		name       string
		send       func(*websocket.Conn) error
		wantClosed bool // transport.ErrWebsocketClosed
		wantCode   int  // otherwise the *websocket.CloseError code
	}{
		{name: "normal closure", send: sendClose(websocket.CloseNormalClosure), wantClosed: true},
		{name: "no status", send: sendClose(websocket.CloseNoStatusReceived), wantClosed: true},
		{name: "going away", send: sendClose(websocket.CloseGoingAway), wantCode: websocket.CloseGoingAway},
		{name: "application code", send: sendClose(4000), wantCode: 4000},
		{
			name:     "connection dropped",
			send:     func(c *websocket.Conn) error { return c.NetConn().Close() },
			wantCode: websocket.CloseAbnormalClosure,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := connect(t, New(), gqlgenOptions(), "graphql-transport-ws")
			if err := tt.send(p.client); err != nil {
				t.Fatal(err)
			}

			_, r, err := p.server.NextReader()
			if r != nil {
				t.Errorf("NextReader returned a reader with error %v", err)
			}
			if got := errors.Is(err, transport.ErrWebsocketClosed); got != tt.wantClosed {
				t.Fatalf("NextReader error = %v; Is(ErrWebsocketClosed) = %v, want %v", err, got, tt.wantClosed)
			}
			if tt.wantClosed {
				return
			}
			var ce *websocket.CloseError
			if !errors.As(err, &ce) || ce.Code != tt.wantCode {
				t.Errorf("NextReader error = %v, want close code %d", err, tt.wantCode)
			}
		})
	}
}

func TestSetReadLimit(t *testing.T) {
	const limit = 16

	tests := []struct {
		name    string
		size    int
		wantErr bool
	}{
		{name: "at limit", size: limit},
		{name: "over limit", size: limit + 1, wantErr: true},
		{name: "far over limit", size: 1 << 20, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := connect(t, New(), gqlgenOptions(), "graphql-transport-ws")
			p.server.(transport.WebsocketReadLimiter).SetReadLimit(limit)

			// Write from a goroutine: a large message may not fit in the socket
			// buffers once the server stops reading.
			writeDone := make(chan error, 1)
			go func() {
				writeDone <- p.client.WriteMessage(websocket.TextMessage, []byte(strings.Repeat("a", tt.size)))
			}()

			_, r, err := p.server.NextReader()
			if !tt.wantErr {
				if err != nil {
					t.Fatalf("NextReader: %v", err)
				}
				if got, _ := io.ReadAll(r); len(got) != tt.size {
					t.Errorf("read %d bytes, want %d", len(got), tt.size)
				}
				if err := <-writeDone; err != nil {
					t.Errorf("client write: %v", err)
				}
				return
			}

			if !errors.Is(err, websocket.ErrReadLimit) {
				t.Fatalf("NextReader error = %v, want %v", err, websocket.ErrReadLimit)
			}
			// gorilla tells the peer why before giving up on the connection.
			_, _, err = p.client.ReadMessage()
			if !websocket.IsCloseError(err, websocket.CloseMessageTooBig) {
				t.Errorf("client read error = %v, want close %d", err, websocket.CloseMessageTooBig)
			}
			_ = p.server.Close()
			<-writeDone
		})
	}
}

func TestSetReadDeadline(t *testing.T) {
	tests := []struct {
		name        string
		clear       bool
		wantTimeout bool
	}{
		{name: "expires", wantTimeout: true},
		{name: "cleared", clear: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := connect(t, New(), gqlgenOptions(), "graphql-transport-ws")
			d := p.server.(transport.WebsocketReadDeadliner)

			if err := d.SetReadDeadline(time.Now().Add(50 * time.Millisecond)); err != nil {
				t.Fatal(err)
			}
			if tt.clear {
				if err := d.SetReadDeadline(time.Time{}); err != nil {
					t.Fatal(err)
				}
				time.AfterFunc(150*time.Millisecond, func() {
					_ = p.client.WriteMessage(websocket.TextMessage, []byte(`{}`))
				})
			}

			_, _, err := p.server.NextReader()
			var ne net.Error
			gotTimeout := errors.As(err, &ne) && ne.Timeout()
			if gotTimeout != tt.wantTimeout {
				t.Errorf("NextReader error = %v, timeout = %v, want %v", err, gotTimeout, tt.wantTimeout)
			}
			if !tt.wantTimeout && err != nil {
				t.Errorf("NextReader: %v", err)
			}
		})
	}
}

func TestWriteClose(t *testing.T) {
	tests := []struct {
		name     string
		code     int
		message  string
		wantText string
	}{
		{name: "unauthorized", code: 4401, message: "Unauthorized", wantText: "Unauthorized"},
		{name: "normal", code: websocket.CloseNormalClosure, message: "terminated", wantText: "terminated"},
		{
			name:     "reason truncated to fit a control frame",
			code:     websocket.CloseProtocolError,
			message:  strings.Repeat("é", 100), // 200 bytes
			wantText: strings.Repeat("é", 61),  // 122 bytes, whole runes only
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := connect(t, New(), gqlgenOptions(), "graphql-transport-ws")

			if err := p.server.WriteClose(tt.code, tt.message); err != nil {
				t.Fatalf("WriteClose: %v", err)
			}
			if err := p.server.Close(); err != nil {
				t.Fatalf("Close: %v", err)
			}

			_, _, err := p.client.ReadMessage()
			var ce *websocket.CloseError
			if !errors.As(err, &ce) {
				t.Fatalf("client read error = %v, want *websocket.CloseError", err)
			}
			if ce.Code != tt.code || ce.Text != tt.wantText {
				t.Errorf("client saw close %d %q, want %d %q", ce.Code, ce.Text, tt.code, tt.wantText)
			}
		})
	}
}

func TestWriteJSONStuckClient(t *testing.T) {
	const timeout = 200 * time.Millisecond
	// Generous for -race and loaded CI machines, yet far below "forever".
	const maxCall = timeout + 2*time.Second

	p := connect(t, New(WithWriteTimeout(timeout)), gqlgenOptions(), "graphql-transport-ws")
	// The client never reads, so socket buffers fill and writes block.

	big := strings.Repeat("x", 1<<20)
	var err error
	for n := 0; err == nil; n++ {
		if n == 1024 {
			t.Fatal("1 GiB written to a client that never reads")
		}
		start := time.Now()
		err = p.server.WriteJSON(big)
		if d := time.Since(start); d > maxCall {
			t.Fatalf("WriteJSON #%d took %v, want at most about %v", n, d, timeout)
		}
	}
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Errorf("WriteJSON error = %v, want a timeout", err)
	}

	start := time.Now()
	_ = p.server.WriteClose(websocket.CloseGoingAway, "too slow")
	if d := time.Since(start); d > maxCall {
		t.Errorf("WriteClose on a stuck connection took %v", d)
	}
	if err := p.server.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
}

// gqlgen serializes its writes, but WriteClose and Close can come from other
// goroutines; every frame must still arrive intact.
func TestConcurrentWritesAndClose(t *testing.T) {
	const writers, perWriter = 8, 50

	p := connect(t, New(), gqlgenOptions(), "graphql-transport-ws")

	type msg struct {
		Writer int    `json:"writer"`
		Seq    int    `json:"seq"`
		Pad    string `json:"pad"`
	}

	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for i := range perWriter {
				err := p.server.WriteJSON(msg{Writer: w, Seq: i, Pad: strings.Repeat("p", 100*i)})
				if err != nil && !errors.Is(err, websocket.ErrCloseSent) {
					t.Errorf("WriteJSON: %v", err)
					return
				}
			}
		})
	}
	wg.Go(func() {
		time.Sleep(5 * time.Millisecond)
		if err := p.server.WriteClose(4400, "bye"); err != nil {
			t.Errorf("WriteClose: %v", err)
		}
	})

	for {
		_, data, err := p.client.ReadMessage()
		if err != nil {
			if !websocket.IsCloseError(err, 4400) {
				t.Errorf("client read error = %v, want close 4400", err)
			}
			break
		}
		var m msg
		if err := json.Unmarshal(data, &m); err != nil || len(m.Pad) != 100*m.Seq {
			t.Fatalf("corrupt message %.80q: %v", data, err)
		}
	}
	wg.Wait()
}

func TestMergeSubprotocols(t *testing.T) {
	tests := []struct {
		name        string
		base, extra []string
		want        []string
	}{
		{name: "nil base", extra: []string{"graphql-ws", "graphql-transport-ws"}, want: []string{"graphql-ws", "graphql-transport-ws"}},
		{name: "base first", base: []string{"custom"}, extra: []string{"graphql-ws"}, want: []string{"custom", "graphql-ws"}},
		{name: "no duplicates", base: []string{"graphql-transport-ws"}, extra: []string{"graphql-ws", "graphql-transport-ws"}, want: []string{"graphql-transport-ws", "graphql-ws"}},
		{name: "nothing to merge", want: nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := mergeSubprotocols(tt.base, tt.extra)
			if fmt.Sprintf("%q", got) != fmt.Sprintf("%q", tt.want) {
				t.Errorf("mergeSubprotocols = %q, want %q", got, tt.want)
			}
		})
	}

	t.Run("does not write into base", func(t *testing.T) {
		base := make([]string, 1, 4)
		base[0] = "custom"
		mergeSubprotocols(base, []string{"graphql-ws"})
		if spare := base[:2][1]; spare != "" {
			t.Errorf("base backing array modified: %q", spare)
		}
	})
}

func TestTruncateReason(t *testing.T) {
	tests := []struct {
		name, in, want string
	}{
		{name: "short", in: "bye", want: "bye"},
		{name: "exact fit", in: strings.Repeat("a", maxCloseReason), want: strings.Repeat("a", maxCloseReason)},
		{name: "ascii overflow", in: strings.Repeat("a", maxCloseReason+1), want: strings.Repeat("a", maxCloseReason)},
		{name: "two byte runes", in: strings.Repeat("é", 100), want: strings.Repeat("é", 61)},
		{name: "four byte runes", in: strings.Repeat("🙂", 40), want: strings.Repeat("🙂", 30)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := truncateReason(tt.in)
			if got != tt.want || !utf8.ValidString(got) || len(got) > maxCloseReason {
				t.Errorf("truncateReason = %q (%d bytes), want %q", got, len(got), tt.want)
			}
		})
	}
}

func BenchmarkWriteJSON(b *testing.B) {
	type message struct {
		Type    string          `json:"type"`
		ID      string          `json:"id"`
		Payload json.RawMessage `json:"payload"`
	}
	payload := func(n int) json.RawMessage {
		return json.RawMessage(fmt.Sprintf(`{"data":{"lead":{"id":"42","notes":%q}}}`, strings.Repeat("n", n)))
	}

	benchmarks := []struct {
		name string
		msg  message
	}{
		{name: "small", msg: message{Type: "next", ID: "1", Payload: payload(64)}},
		{name: "16KiB", msg: message{Type: "next", ID: "1", Payload: payload(16 << 10)}},
	}
	for _, bm := range benchmarks {
		b.Run(bm.name, func(b *testing.B) {
			p := connect(b, New(), gqlgenOptions(), "graphql-transport-ws")

			readerDone := make(chan struct{})
			go func() {
				defer close(readerDone)
				for {
					_, r, err := p.client.NextReader()
					if err != nil {
						return
					}
					if _, err := io.Copy(io.Discard, r); err != nil {
						return
					}
				}
			}()

			b.ReportAllocs()
			for b.Loop() {
				if err := p.server.WriteJSON(bm.msg); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()

			_ = p.server.WriteClose(websocket.CloseNormalClosure, "")
			<-readerDone
		})
	}
}

// The hand-written envelope is byte-for-byte what encoding/json writes.
func TestEnvelopeMatchesEncodingJSON(t *testing.T) {
	type msg struct {
		Payload json.RawMessage `json:"payload,omitempty"`
		ID      string          `json:"id,omitempty"`
		Type    string          `json:"type"`
		noOp    bool
	}
	// gqlgen's payloads come from json.Marshal, as this one does.
	payload, _ := json.Marshal(map[string]any{"data": map[string]any{"x": "<b>&é\u2028", "n": 1.5}})
	for _, m := range []*msg{
		{Payload: payload, ID: "1", Type: "next"},
		{Type: "connection_ack"},
		{ID: "op \"7\"<", Type: "complete"},
		{Payload: json.RawMessage(`[{"message":"m"}]`), Type: "error", noOp: true},
	} {
		want, _ := json.Marshal(m)
		got, ok := appendEnvelope(nil, m)
		if !ok || string(got) != string(want) {
			t.Errorf("envelope %s, want %s (ok %v)", got, want, ok)
		}
	}
	type other struct{ A int }
	if _, ok := appendEnvelope(nil, &other{1}); ok {
		t.Error("a struct of another shape was taken for an envelope")
	}
	if _, ok := appendEnvelope(nil, map[string]any{"type": "x"}); ok {
		t.Error("a map was taken for an envelope")
	}
}
