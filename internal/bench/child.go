package main

// The client process: every websocket client of the benchmark (gateway
// subscribers and raw-broadcast receivers alike) lives in a child process,
// the bench binary itself re-executed with childEnv set. It takes one JSON
// command per line on stdin and answers one JSON line on stdout; while a
// group is watched it also streams progress lines (slowest client's count,
// total count, ended clients) so the parent can pace its producers.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
)

// childEnv marks the process as the client process.
const childEnv = "LEADSTREAM_BENCH_CHILD"

func isChild() bool { return os.Getenv(childEnv) == "1" }

// Markers the producer writes into every event and the clients look for.
// Values are fixed-width digit strings, so every message of a phase has the
// same size and the raw baseline can patch a captured gateway message in place.
var (
	markN = []byte(`"bench_n":"`)
	markT = []byte(`"bench_t":"`)
)

const (
	widthN = 10 // digits of bench_n
	widthT = 19 // digits of bench_t (unix nanoseconds)
)

// childCmd is one request to the client process.
type childCmd struct {
	Op    string `json:"op"` // open, watch, reset, stats, close, rss, quit
	Group int    `json:"group,omitempty"`
	URL   string `json:"url,omitempty"` // ws:// URL for open
	N     int    `json:"n,omitempty"`
	// PerConn is how many subscriptions each connection of open starts
	// (ids 1, 2, …; at least one).
	PerConn int            `json:"perConn,omitempty"`
	Auth    string         `json:"auth,omitempty"`
	Query   string         `json:"query,omitempty"`
	Vars    map[string]any `json:"vars,omitempty"`
	On      bool           `json:"on,omitempty"` // watch on/off, record on/off
	// AckDelayUs[n] is (202 received − sent) of event n in µs, or < 0 when
	// event n was not accepted; stats then also reports accepted→received.
	AckDelayUs []int64 `json:"ackDelayUs,omitempty"`
}

// childReply is an answer (Ev "reply") or a progress line (Ev "progress").
type childReply struct {
	Ev       string `json:"ev"`
	Err      string `json:"err,omitempty"`
	Group    int    `json:"group,omitempty"`
	Opened   int    `json:"opened,omitempty"`
	Min      int64  `json:"min"`   // bench messages of the slowest live client
	Total    int64  `json:"total"` // bench messages over all clients
	Ended    int64  `json:"ended"` // clients whose subscription or socket ended
	Bytes    int64  `json:"bytes,omitempty"`
	Lat      *Dist  `json:"lat,omitempty"`
	AckLat   *Dist  `json:"ackLat,omitempty"`
	Sample   string `json:"sample,omitempty"`
	RSSKiB   int64  `json:"rssKiB,omitempty"`
	EndCause string `json:"endCause,omitempty"`
}

type sample struct {
	n     uint32
	latUs uint32 // received − sent
}

type wsClient struct {
	g       *group
	c       *websocket.Conn
	recv    atomic.Int64
	nbytes  atomic.Int64
	ended   atomic.Bool
	closing atomic.Bool
	done    chan struct{}

	mu      sync.Mutex
	samples []sample
}

type group struct {
	id      int
	clients []*wsClient
	record  atomic.Bool
	watch   atomic.Bool
	sample  atomic.Pointer[[]byte]
	cause   atomic.Pointer[string] // first reason a client ended
}

type child struct {
	out    *bufio.Writer
	outMu  sync.Mutex
	mu     sync.Mutex
	groups map[int]*group
	nextID int
}

func childMain() int {
	raiseFileLimit()
	c := &child{out: bufio.NewWriterSize(os.Stdout, 64<<10), groups: map[int]*group{}, nextID: 1}
	stop := make(chan struct{})
	go c.progressLoop(stop)
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 1<<20), 256<<20)
	for in.Scan() {
		var cmd childCmd
		if err := json.Unmarshal(in.Bytes(), &cmd); err != nil {
			c.send(childReply{Ev: "reply", Err: "bad command: " + err.Error()})
			continue
		}
		if cmd.Op == "quit" {
			break
		}
		c.send(c.handle(cmd))
	}
	close(stop)
	c.mu.Lock()
	var all []*group
	for _, g := range c.groups {
		all = append(all, g)
	}
	c.mu.Unlock()
	for _, g := range all {
		closeGroup(g)
	}
	c.send(childReply{Ev: "reply"})
	return 0
}

func (c *child) send(r childReply) {
	b, _ := json.Marshal(r)
	c.outMu.Lock()
	defer c.outMu.Unlock()
	c.out.Write(b)
	c.out.WriteByte('\n')
	c.out.Flush()
}

func (c *child) group(id int) (*group, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	g := c.groups[id]
	if g == nil {
		return nil, fmt.Errorf("no group %d", id)
	}
	return g, nil
}

func (c *child) handle(cmd childCmd) childReply {
	r := childReply{Ev: "reply", Group: cmd.Group}
	if cmd.Op == "open" {
		g, opened, err := openGroup(cmd)
		c.mu.Lock()
		g.id = c.nextID
		c.nextID++
		c.groups[g.id] = g
		c.mu.Unlock()
		r.Group, r.Opened = g.id, opened
		if err != nil {
			r.Err = err.Error()
		}
		return r
	}
	if cmd.Op == "rss" {
		runtime.GC()
		debug.FreeOSMemory()
		r.RSSKiB = readRSSKiB()
		return r
	}
	g, err := c.group(cmd.Group)
	if err != nil {
		r.Err = err.Error()
		return r
	}
	switch cmd.Op {
	case "watch":
		g.watch.Store(cmd.On)
	case "reset":
		g.record.Store(false)
		for _, cl := range g.clients {
			cl.mu.Lock()
			cl.recv.Store(0)
			cl.nbytes.Store(0)
			cl.samples = cl.samples[:0]
			cl.mu.Unlock()
		}
		g.record.Store(cmd.On)
	case "stats":
		statsOf(g, cmd.AckDelayUs, &r)
	case "close":
		closeGroup(g)
		c.mu.Lock()
		delete(c.groups, g.id)
		c.mu.Unlock()
	default:
		r.Err = "unknown op " + cmd.Op
	}
	return r
}

// progressLoop reports every watched group each 2 ms when something changed.
func (c *child) progressLoop(stop chan struct{}) {
	t := time.NewTicker(2 * time.Millisecond)
	defer t.Stop()
	last := map[int][3]int64{}
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		c.mu.Lock()
		var gs []*group
		for _, g := range c.groups {
			if g.watch.Load() {
				gs = append(gs, g)
			}
		}
		c.mu.Unlock()
		for _, g := range gs {
			mn, tot, ended := counts(g)
			v := [3]int64{mn, tot, ended}
			if last[g.id] == v {
				continue
			}
			last[g.id] = v
			c.send(childReply{Ev: "progress", Group: g.id, Min: mn, Total: tot, Ended: ended})
		}
	}
}

// counts returns the slowest live client's count, the total and how many ended.
func counts(g *group) (mn, total, ended int64) {
	mn = -1
	for _, cl := range g.clients {
		n := cl.recv.Load()
		total += n
		if cl.ended.Load() {
			ended++
			continue
		}
		if mn < 0 || n < mn {
			mn = n
		}
	}
	if mn < 0 {
		mn = 0
	}
	return mn, total, ended
}

func statsOf(g *group, ackDelay []int64, r *childReply) {
	r.Min, r.Total, r.Ended = counts(g)
	var lats, acks []int64
	for _, cl := range g.clients {
		r.Bytes += cl.nbytes.Load()
		cl.mu.Lock()
		for _, s := range cl.samples {
			lats = append(lats, int64(s.latUs))
			if int(s.n) < len(ackDelay) && ackDelay[s.n] >= 0 {
				acks = append(acks, int64(s.latUs)-ackDelay[s.n])
			}
		}
		cl.mu.Unlock()
	}
	if len(lats) > 0 {
		r.Lat = distOf(lats)
	}
	if len(acks) > 0 {
		r.AckLat = distOf(acks)
	}
	if p := g.sample.Load(); p != nil {
		r.Sample = string(*p)
	}
	if p := g.cause.Load(); p != nil {
		r.EndCause = *p
	}
}

// Dist summarises latencies, in microseconds.
type Dist struct {
	Count int64   `json:"count"`
	P50   float64 `json:"p50Us"`
	P90   float64 `json:"p90Us"`
	P99   float64 `json:"p99Us"`
	P999  float64 `json:"p999Us"`
	Max   float64 `json:"maxUs"`
	Mean  float64 `json:"meanUs"`
}

func distOf(v []int64) *Dist {
	slices.Sort(v)
	q := func(p float64) float64 {
		i := int(p*float64(len(v))+0.5) - 1
		i = max(0, min(i, len(v)-1))
		return float64(v[i])
	}
	var sum float64
	for _, x := range v {
		sum += float64(x)
	}
	return &Dist{Count: int64(len(v)), P50: q(0.50), P90: q(0.90), P99: q(0.99), P999: q(0.999),
		Max: float64(v[len(v)-1]), Mean: sum / float64(len(v))}
}

// openGroup opens n subscriptions with 32 dialers at once. A subscription
// counts as opened once connection_ack came back and subscribe was sent;
// the parent then waits until the server registered them all.
func openGroup(cmd childCmd) (*group, int, error) {
	g := &group{}
	clients := make([]*wsClient, cmd.N)
	var firstErr atomic.Pointer[error]
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(32, max(cmd.N, 1)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= cmd.N || firstErr.Load() != nil {
					return
				}
				cl, err := dialSub(g, cmd)
				if err != nil {
					err = fmt.Errorf("subscription %d: %w", i, err)
					firstErr.CompareAndSwap(nil, &err)
					return
				}
				clients[i] = cl
			}
		}()
	}
	wg.Wait()
	for _, cl := range clients {
		if cl != nil {
			g.clients = append(g.clients, cl)
		}
	}
	if p := firstErr.Load(); p != nil {
		return g, len(g.clients), *p
	}
	return g, len(g.clients), nil
}

var dialer = websocket.Dialer{
	Subprotocols:     []string{"graphql-transport-ws"},
	HandshakeTimeout: 15 * time.Second,
	ReadBufferSize:   4096,
	WriteBufferSize:  1024,
	NetDialContext:   dialFromMany,
	Proxy:            func(*http.Request) (*url.URL, error) { return nil, nil },
}

var dials atomic.Uint32

// dialFromMany spreads loopback connections over 127.0.0.1–127.0.0.200 as
// source addresses: one address has about 28,000 ephemeral ports, too few
// for tens of thousands of connections next to those still in TIME_WAIT.
func dialFromMany(ctx context.Context, network, addr string) (net.Conn, error) {
	d := &net.Dialer{Timeout: 15 * time.Second}
	if host, _, err := net.SplitHostPort(addr); err == nil && host == "127.0.0.1" {
		n := dials.Add(1)
		d.LocalAddr = &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(1+n%200))}
	}
	return d.DialContext(ctx, network, addr)
}

func dialSub(g *group, cmd childCmd) (*wsClient, error) {
	conn, resp, err := dialer.Dial(cmd.URL, nil)
	if err != nil {
		if resp != nil {
			return nil, fmt.Errorf("dial: %w (HTTP %d)", err, resp.StatusCode)
		}
		return nil, fmt.Errorf("dial: %w", err)
	}
	fail := func(err error) (*wsClient, error) { conn.Close(); return nil, err }
	conn.SetWriteDeadline(time.Now().Add(15 * time.Second))
	conn.SetReadDeadline(time.Now().Add(15 * time.Second))
	init := map[string]any{"type": "connection_init", "payload": map[string]any{"Authorization": cmd.Auth}}
	if err := conn.WriteJSON(init); err != nil {
		return fail(fmt.Errorf("connection_init: %w", err))
	}
	for {
		_, b, err := conn.ReadMessage()
		if err != nil {
			return fail(fmt.Errorf("waiting for connection_ack: %w", err))
		}
		t := msgType(b)
		if t == "connection_ack" {
			break
		}
		if t != "ping" && t != "pong" {
			return fail(fmt.Errorf("waiting for connection_ack, got %s", b))
		}
	}
	for i := range max(cmd.PerConn, 1) {
		sub := map[string]any{"id": fmt.Sprint(i + 1), "type": "subscribe", "payload": map[string]any{"query": cmd.Query, "variables": cmd.Vars}}
		if err := conn.WriteJSON(sub); err != nil {
			return fail(fmt.Errorf("subscribe: %w", err))
		}
	}
	conn.SetReadDeadline(time.Time{})
	conn.SetWriteDeadline(time.Time{})
	cl := &wsClient{g: g, c: conn, done: make(chan struct{})}
	go cl.read()
	return cl, nil
}

// read is the client's only reader. Per message it does the same small
// amount of work for the gateway and for the raw baseline: find the two
// markers, parse two fixed-width numbers, count, and maybe record.
func (cl *wsClient) read() {
	defer close(cl.done)
	var buf bytes.Buffer
	for {
		_, r, err := cl.c.NextReader()
		if err != nil {
			if !cl.closing.Load() {
				cl.end("socket: " + err.Error())
			}
			return
		}
		buf.Reset()
		if _, err := buf.ReadFrom(r); err != nil {
			if !cl.closing.Load() {
				cl.end("socket: " + err.Error())
			}
			return
		}
		b := buf.Bytes()
		now := time.Now().UnixNano()
		if n, t, ok := markers(b); ok {
			cl.recv.Add(1)
			cl.nbytes.Add(int64(len(b)))
			if cl.g.record.Load() {
				lat := max((now-t)/1000, 0)
				cl.mu.Lock()
				cl.samples = append(cl.samples, sample{n: uint32(n), latUs: uint32(min(lat, 1<<32-1))})
				cl.mu.Unlock()
			}
			if cl.g.sample.Load() == nil {
				cp := bytes.Clone(b)
				cl.g.sample.CompareAndSwap(nil, &cp)
			}
			continue
		}
		switch msgType(b) {
		case "ping":
			_ = cl.c.WriteMessage(websocket.TextMessage, []byte(`{"type":"pong"}`))
		case "pong", "ka":
		default: // error, complete, connection_error, or anything unexpected
			cl.end("message: " + string(b[:min(len(b), 300)]))
		}
	}
}

func (cl *wsClient) end(cause string) {
	if cl.ended.CompareAndSwap(false, true) {
		cl.g.cause.CompareAndSwap(nil, &cause)
	}
}

// markers parses bench_n and bench_t out of a message.
func markers(b []byte) (n, t int64, ok bool) {
	i := bytes.Index(b, markN)
	if i < 0 {
		return 0, 0, false
	}
	n, ok = digits(b[i+len(markN):], widthN)
	if !ok {
		return 0, 0, false
	}
	j := bytes.Index(b, markT)
	if j < 0 {
		return 0, 0, false
	}
	t, ok = digits(b[j+len(markT):], widthT)
	return n, t, ok
}

func digits(b []byte, w int) (int64, bool) {
	if len(b) < w {
		return 0, false
	}
	var v int64
	for _, c := range b[:w] {
		if c < '0' || c > '9' {
			return 0, false
		}
		v = v*10 + int64(c-'0')
	}
	return v, true
}

// msgType extracts "type" cheaply from a small control message.
func msgType(b []byte) string {
	var m struct {
		Type string `json:"type"`
	}
	if len(b) > 4096 || json.Unmarshal(b, &m) != nil {
		return ""
	}
	return m.Type
}

func closeGroup(g *group) {
	var wg sync.WaitGroup
	work := make(chan *wsClient)
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for cl := range work {
				cl.closing.Store(true)
				_ = cl.c.WriteControl(websocket.CloseMessage,
					websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), time.Now().Add(time.Second))
				_ = cl.c.Close()
				<-cl.done
			}
		}()
	}
	for _, cl := range g.clients {
		work <- cl
	}
	close(work)
	wg.Wait()
}

// ---- parent side ----

// clientProc drives the client process.
type clientProc struct {
	cmd     *exec.Cmd
	stdin   io.WriteCloser
	callMu  sync.Mutex
	replies chan childReply
	dead    chan struct{}
	deadErr error

	progMu sync.Mutex
	prog   map[int]*progress
}

// progress is the latest progress line of one watched group.
type progress struct {
	mu      sync.Mutex
	min     int64
	total   int64
	ended   int64
	changed chan struct{} // closed and replaced on every update
}

func newProgress() *progress { return &progress{changed: make(chan struct{})} }

func (p *progress) get() (mn, total, ended int64, changed <-chan struct{}) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.min, p.total, p.ended, p.changed
}

func (p *progress) set(mn, total, ended int64) {
	p.mu.Lock()
	p.min, p.total, p.ended = mn, total, ended
	close(p.changed)
	p.changed = make(chan struct{})
	p.mu.Unlock()
}

func (cp *clientProc) progressOf(g int) *progress {
	cp.progMu.Lock()
	defer cp.progMu.Unlock()
	p := cp.prog[g]
	if p == nil {
		p = newProgress()
		cp.prog[g] = p
	}
	return p
}

func startClientProc() (*clientProc, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("client process: %w", err)
	}
	c := exec.Command(exe)
	c.Env = append(os.Environ(), childEnv+"=1")
	c.Stderr = os.Stderr
	stdin, err := c.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := c.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := c.Start(); err != nil {
		return nil, fmt.Errorf("client process: %w", err)
	}
	cp := &clientProc{cmd: c, stdin: stdin, replies: make(chan childReply, 1), dead: make(chan struct{}), prog: map[int]*progress{}}
	go func() {
		defer close(cp.dead)
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 1<<20), 64<<20)
		for sc.Scan() {
			var r childReply
			if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
				cp.deadErr = fmt.Errorf("client process said %q: %w", sc.Text(), err)
				return
			}
			if r.Ev == "progress" {
				cp.progressOf(r.Group).set(r.Min, r.Total, r.Ended)
				continue
			}
			cp.replies <- r
		}
		cp.deadErr = errors.New("client process exited")
	}()
	return cp, nil
}

func (cp *clientProc) call(cmd childCmd) (childReply, error) {
	cp.callMu.Lock()
	defer cp.callMu.Unlock()
	b, _ := json.Marshal(cmd)
	if _, err := cp.stdin.Write(append(b, '\n')); err != nil {
		return childReply{}, fmt.Errorf("client process: %w", err)
	}
	select {
	case r := <-cp.replies:
		if r.Err != "" {
			return r, fmt.Errorf("client process: %s: %s", cmd.Op, r.Err)
		}
		return r, nil
	case <-cp.dead:
		return childReply{}, cp.deadErr
	}
}

// Close stops the client process (it closes what is still open first).
func (cp *clientProc) Close() {
	_, _ = cp.call(childCmd{Op: "quit"})
	_ = cp.stdin.Close()
	done := make(chan struct{})
	go func() { _ = cp.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		_ = cp.cmd.Process.Kill()
		<-done
	}
}

func wsURL(httpURL string) string {
	return "ws" + strings.TrimPrefix(httpURL, "http")
}
