package subscribe

import (
	"bufio"
	"encoding/binary"
	"net"
	"net/http"
	"sync"
	"time"
)

// batchConn sits between gorilla and the socket so that the writer can
// send every frame it drained from the queue with one write: while held,
// writes (our text frames, gorilla's control frames: the close, the pongs
// or close answers the reader sends) collect in a pooled buffer that flush
// writes at once. Frames stay whole and in order, since each is added with
// one call under mu. Unheld, writes go straight to the socket.
type batchConn struct {
	net.Conn

	mu      sync.Mutex
	held    bool
	timeout time.Duration // for each write while held
	buf     *[]byte       // while held: borrowed from batchBufs
	err     error         // the first write that failed while held
}

// batchLimit bounds what one flush writes: a longer batch is written in
// pieces of about this size, so a burst never holds more.
const batchLimit = 64 << 10

// batchBufs lends the buffers: a connection holds one only while it writes,
// so idle connections cost none.
var batchBufs = sync.Pool{New: func() any { b := make([]byte, 0, 16<<10); return &b }}

// hold starts collecting writes; each write to the socket until flush
// may take timeout.
func (b *batchConn) hold(timeout time.Duration) {
	// Borrowed here, near the top of the writer's stack: a fresh writer
	// goroutine's small stack then does not grow for the pool's slow path.
	buf := batchBufs.Get().(*[]byte)
	b.mu.Lock()
	b.held, b.timeout = true, timeout
	if b.buf == nil {
		b.buf = buf
	} else {
		batchBufs.Put(buf)
	}
	b.mu.Unlock()
}

// flush writes what was collected and stops collecting.
func (b *batchConn) flush() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.held = false
	err := b.writeOutLocked()
	if b.buf != nil {
		if cap(*b.buf) <= batchLimit*2 {
			*b.buf = (*b.buf)[:0]
			batchBufs.Put(b.buf)
		}
		b.buf = nil
	}
	if b.err != nil {
		err, b.err = b.err, nil
	}
	return err
}

func (b *batchConn) writeOutLocked() error {
	if b.buf == nil || len(*b.buf) == 0 || b.err != nil {
		return nil
	}
	if err := b.Conn.SetWriteDeadline(time.Now().Add(b.timeout)); err != nil {
		return err
	}
	_, err := b.Conn.Write(*b.buf)
	*b.buf = (*b.buf)[:0]
	return err
}

// writeText writes one unfragmented text frame made of parts. The
// gateway's text frames are written here, not through gorilla's message
// writer: a server frame is a header and the unmasked bytes (no
// compression is negotiated), and assembling it in the batch directly
// saves a buffer, a copy and a lock per frame. Gorilla writes only control
// frames, each with one Write, so frames never interleave.
func (b *batchConn) writeText(parts ...[]byte) error {
	n := 0
	for _, p := range parts {
		n += len(p)
	}
	var hdr [10]byte
	hdr[0] = 0x80 | 1 // FIN, text
	h := 2
	switch {
	case n < 126:
		hdr[1] = byte(n)
	case n <= 0xffff:
		hdr[1] = 126
		binary.BigEndian.PutUint16(hdr[2:], uint16(n))
		h = 4
	default:
		hdr[1] = 127
		binary.BigEndian.PutUint64(hdr[2:], uint64(n))
		h = 10
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.held {
		buf := make([]byte, 0, h+n)
		buf = append(buf, hdr[:h]...)
		for _, p := range parts {
			buf = append(buf, p...)
		}
		_, err := b.Conn.Write(buf)
		return err
	}
	if b.err != nil {
		return b.err
	}
	b.makeRoomLocked(h + n)
	if b.err != nil {
		return b.err
	}
	*b.buf = append(*b.buf, hdr[:h]...)
	for _, p := range parts {
		*b.buf = append(*b.buf, p...)
	}
	return nil
}

// makeRoomLocked borrows the buffer, or writes out what it holds when n
// more bytes would pass batchLimit.
func (b *batchConn) makeRoomLocked(n int) {
	if b.buf == nil {
		b.buf = batchBufs.Get().(*[]byte)
	}
	if len(*b.buf) > 0 && len(*b.buf)+n > batchLimit {
		b.err = b.writeOutLocked()
	}
}

// Write collects p while held (gorilla sees success; a failure shows at
// flush, and the writer then closes the socket), else writes it.
func (b *batchConn) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.held {
		return b.Conn.Write(p)
	}
	if b.err == nil {
		b.makeRoomLocked(len(p))
	}
	if b.err == nil {
		*b.buf = append(*b.buf, p...)
	}
	return len(p), nil
}

// SetWriteDeadline is gorilla's per-frame deadline: while held it does not
// apply (nothing blocks until flush, which sets its own).
func (b *batchConn) SetWriteDeadline(t time.Time) error {
	b.mu.Lock()
	held := b.held
	b.mu.Unlock()
	if held {
		return nil
	}
	return b.Conn.SetWriteDeadline(t)
}

// hijacker hands gorilla's upgrader the socket wrapped in a batchConn.
type hijacker struct {
	http.ResponseWriter
	bc *batchConn
}

func (h *hijacker) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	c, brw, err := http.NewResponseController(h.ResponseWriter).Hijack()
	if err != nil {
		return nil, nil, err
	}
	h.bc = &batchConn{Conn: c}
	return h.bc, brw, nil
}
