package subscribe

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// TestBatchConnFrames writes text frames of every header size, batched and
// not, with a control frame in between, and reads them with gorilla's
// client: each arrives whole, in order, byte for byte.
func TestBatchConnFrames(t *testing.T) {
	sizes := []int{0, 1, 125, 126, 127, 65535, 65536, batchLimit - 3, batchLimit + 1, 300_000}
	msg := func(n int) []byte {
		b := bytes.Repeat([]byte("0123456789abcdef"), n/16+1)[:n]
		if n > 0 {
			b[0] = byte('A' + n%26)
		}
		return b
	}
	done := make(chan error, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := &hijacker{ResponseWriter: w}
		up := websocket.Upgrader{ReadBufferSize: 1024, WriteBufferSize: 1024}
		ws, err := up.Upgrade(h, r, nil)
		if err != nil {
			done <- err
			return
		}
		defer ws.Close()
		for _, held := range []bool{false, true} {
			if held {
				h.bc.hold(5 * time.Second)
			}
			for i, n := range sizes {
				p := msg(n)
				// Split in parts, as an event frame is.
				if err := h.bc.writeText(p[:n/2], p[n/2:]); err != nil {
					done <- err
					return
				}
				if i == 3 {
					if err := ws.WriteControl(websocket.PingMessage, []byte("p"), time.Now().Add(time.Second)); err != nil {
						done <- err
						return
					}
				}
			}
			if held {
				if err := h.bc.flush(); err != nil {
					done <- err
					return
				}
			}
		}
		done <- nil
		_, _, _ = ws.ReadMessage() // until the client closes
	}))
	defer srv.Close()
	c, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(srv.URL, "http"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	pings := 0
	c.SetPingHandler(func(string) error { pings++; return nil })
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	for round := range 2 {
		for _, n := range sizes {
			typ, got, err := c.ReadMessage()
			if err != nil {
				t.Fatalf("round %d, %d bytes: %v", round, n, err)
			}
			if typ != websocket.TextMessage || !bytes.Equal(got, msg(n)) {
				t.Fatalf("round %d: want %d bytes, got type %d, %d bytes", round, n, typ, len(got))
			}
		}
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if pings != 2 {
		t.Errorf("pings seen: %d, want 2", pings)
	}
}
