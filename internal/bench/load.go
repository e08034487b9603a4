package main

// The load phases: webhook ingest, fan-out at the maximum sustained rate,
// latency at a fixed rate, and idle subscriptions' memory.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// eventBody is a webhook body of about 220 bytes: the two markers (event
// number and send time, fixed width) and a Marketo-like change.
func eventBody(n, t int64) []byte {
	return fmt.Appendf(nil, `{"bench_n":"%0*d","bench_t":"%0*d","leadId":"%d","activityType":"Change Data Value","attribute":"Lead Score","oldValue":"42","newValue":"57","campaign":"Benchmark nurture program"}`,
		widthN, n, widthT, t, 100000+n%900000)
}

// putDigits writes v zero-padded into dst[:w].
func putDigits(dst []byte, v int64, w int) {
	for i := w - 1; i >= 0; i-- {
		dst[i] = byte('0' + v%10)
		v /= 10
	}
}

// ---- webhook ingest ----

// IngestResult is one poster count's ingest rate.
type IngestResult struct {
	Posters  int     `json:"posters"`
	Accepted int64   `json:"accepted"`
	Failed   int64   `json:"failed"`
	Seconds  float64 `json:"seconds"`
	PerSec   float64 `json:"perSec"`
	// CPUPerReqUs is this process's CPU time (server and posters alike)
	// per accepted request over the window: less sensitive than the rate
	// to other work on a shared machine.
	CPUPerReqUs float64 `json:"cpuPerRequestUs"`
	FirstErr    string  `json:"firstError,omitempty"`
}

// runIngest has c posters send webhooks back to back; the rate counts the
// 202s in the measured window after a warm-up.
func runIngest(ctx context.Context, post func(context.Context, []byte) (bool, error), c int, warmup, d time.Duration) IngestResult {
	var accepted, failed, seq atomic.Int64
	var firstErr atomic.Pointer[string]
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range c {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				n := seq.Add(1)
				if ok, err := post(ctx, eventBody(n, time.Now().UnixNano())); ok {
					accepted.Add(1)
				} else {
					failed.Add(1)
					s := err.Error()
					firstErr.CompareAndSwap(nil, &s)
				}
			}
		}()
	}
	time.Sleep(warmup)
	a0, t0, c0 := accepted.Load(), time.Now(), cpuTime()
	time.Sleep(d)
	a1, t1, c1 := accepted.Load(), time.Now(), cpuTime()
	close(stop)
	wg.Wait()
	r := IngestResult{Posters: c, Accepted: a1 - a0, Failed: failed.Load(), Seconds: t1.Sub(t0).Seconds()}
	r.PerSec = float64(r.Accepted) / r.Seconds
	if r.Accepted > 0 {
		r.CPUPerReqUs = float64(c1-c0) / float64(time.Microsecond) / float64(r.Accepted)
	}
	if p := firstErr.Load(); p != nil {
		r.FirstErr = *p
	}
	return r
}

// ---- fan-out ----

// producer makes event n: the gateway posts a webhook, the raw baseline
// broadcasts. It returns the send time it put into the event and when the
// event was accepted (202 received, or Broadcast returned).
type producer func(ctx context.Context, n int64) (sentNs, ackNs int64, err error)

func gatewayProducer(g *gateway) producer {
	return func(ctx context.Context, n int64) (int64, int64, error) {
		t := time.Now().UnixNano()
		_, err := g.post(ctx, eventBody(n, t))
		return t, time.Now().UnixNano(), err
	}
}

// rawProducer patches event n into the captured gateway message and
// broadcasts those bytes.
func rawProducer(h *rawHub, template []byte, offN, offT int) producer {
	return func(_ context.Context, n int64) (int64, int64, error) {
		b := make([]byte, len(template))
		copy(b, template)
		t := time.Now().UnixNano()
		putDigits(b[offN:], n, widthN)
		putDigits(b[offT:], t, widthT)
		h.Broadcast(b)
		return t, time.Now().UnixNano(), nil
	}
}

// FanoutMax is the maximum sustained fan-out.
type FanoutMax struct {
	Subscribers   int     `json:"subscribers"`
	Producers     int     `json:"producers"`
	Window        int     `json:"window"`
	Seconds       float64 `json:"seconds"`
	EventsPerSec  float64 `json:"eventsPerSec"`
	MsgsPerSec    float64 `json:"msgsPerSec"`
	Failed        int64   `json:"failed"`
	Ended         int64   `json:"ended"`
	Drained       bool    `json:"drained"`
	MsgBytes      float64 `json:"msgBytes"`
	FirstErr      string  `json:"firstError,omitempty"`
	EndCause      string  `json:"endCause,omitempty"`
	DeliveredFrac float64 `json:"deliveredFraction"`
}

// measureMax finds the most events per second every subscriber keeps up
// with, closed loop: producers may run at most window events ahead of the
// slowest subscriber (window < the per-subscriber buffer, so nobody is ever
// dropped for lagging). The rates are taken over d after a warm-up.
func measureMax(ctx context.Context, cp *clientProc, grp, subs int, produce producer, producers, window int, warmup, d time.Duration) (FanoutMax, error) {
	r := FanoutMax{Subscribers: subs, Producers: producers, Window: window}
	if _, err := cp.call(childCmd{Op: "reset", Group: grp}); err != nil {
		return r, err
	}
	prog := cp.progressOf(grp)
	if _, err := cp.call(childCmd{Op: "watch", Group: grp, On: true}); err != nil {
		return r, err
	}
	defer cp.call(childCmd{Op: "watch", Group: grp, On: false})

	var issued, accepted, failed atomic.Int64
	var firstErr atomic.Pointer[string]
	var slotMu sync.Mutex
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range producers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				slotMu.Lock()
				var n int64
				for {
					mn, _, _, changed := prog.get()
					if issued.Load()-failed.Load()-mn < int64(window) {
						n = issued.Add(1) - 1
						break
					}
					slotMu.Unlock()
					select {
					case <-changed:
					case <-stop:
						return
					case <-time.After(100 * time.Millisecond):
					}
					slotMu.Lock()
				}
				slotMu.Unlock()
				if _, _, err := produce(ctx, n); err != nil {
					failed.Add(1)
					s := err.Error()
					firstErr.CompareAndSwap(nil, &s)
				} else {
					accepted.Add(1)
				}
				select {
				case <-stop:
					return
				default:
				}
			}
		}()
	}
	time.Sleep(warmup)
	a0, t0 := accepted.Load(), time.Now()
	_, m0, _, _ := prog.get()
	time.Sleep(d)
	a1, t1 := accepted.Load(), time.Now()
	_, m1, _, _ := prog.get()
	close(stop)
	wg.Wait()
	r.Drained = waitDrained(prog, issued.Load()-failed.Load(), 20*time.Second)
	r.Seconds = t1.Sub(t0).Seconds()
	r.EventsPerSec = float64(a1-a0) / r.Seconds
	r.MsgsPerSec = float64(m1-m0) / r.Seconds
	r.Failed = failed.Load()
	if p := firstErr.Load(); p != nil {
		r.FirstErr = *p
	}
	st, err := cp.call(childCmd{Op: "stats", Group: grp})
	if err != nil {
		return r, err
	}
	r.Ended, r.EndCause = st.Ended, st.EndCause
	if st.Total > 0 {
		r.MsgBytes = float64(st.Bytes) / float64(st.Total)
	}
	if want := (issued.Load() - failed.Load()) * int64(subs); want > 0 {
		r.DeliveredFrac = float64(st.Total) / float64(want)
	}
	if r.Ended > 0 {
		return r, fmt.Errorf("%d subscriptions ended during the max-rate phase: %s", r.Ended, r.EndCause)
	}
	return r, nil
}

// waitDrained waits until the slowest subscriber got all n events.
func waitDrained(prog *progress, n int64, timeout time.Duration) bool {
	deadline := time.After(timeout)
	for {
		mn, _, _, changed := prog.get()
		if mn >= n {
			return true
		}
		select {
		case <-changed:
		case <-deadline:
			return false
		}
	}
}

// Latency is the latency phase at a fixed rate.
type Latency struct {
	Subscribers   int     `json:"subscribers"`
	TargetPerSec  float64 `json:"targetPerSec"`
	AchievedRate  float64 `json:"achievedPerSec"`
	Events        int64   `json:"events"`
	Failed        int64   `json:"failed"`
	Ended         int64   `json:"ended"`
	Drained       bool    `json:"drained"`
	DeliveredFrac float64 `json:"deliveredFraction"`
	// SentToReceived: send timestamp in the event → the client read it.
	SentToReceived *Dist `json:"sentToReceivedUs"`
	// AcceptedToReceived: 202 (or Broadcast returning) → the client read it.
	// Negative when the event reached a client before the 202 reached the
	// poster (the gateway publishes before it writes the 202).
	AcceptedToReceived *Dist  `json:"acceptedToReceivedUs,omitempty"`
	FirstErr           string `json:"firstError,omitempty"`
	EndCause           string `json:"endCause,omitempty"`
}

// measureLatency produces events open loop at rate for d, spread over
// workers, and collects every subscriber's latency of every event.
func measureLatency(ctx context.Context, cp *clientProc, grp, subs int, produce producer, workers int, rate float64, d time.Duration) (Latency, error) {
	r := Latency{Subscribers: subs, TargetPerSec: rate}
	if rate <= 0 {
		return r, errors.New("no rate to measure latency at")
	}
	total := max(int64(rate*d.Seconds()), 1)
	sent := make([]int64, total)
	acked := make([]int64, total)
	if _, err := cp.call(childCmd{Op: "reset", Group: grp, On: true}); err != nil {
		return r, err
	}
	prog := cp.progressOf(grp)
	if _, err := cp.call(childCmd{Op: "watch", Group: grp, On: true}); err != nil {
		return r, err
	}
	defer cp.call(childCmd{Op: "watch", Group: grp, On: false})

	var failed atomic.Int64
	var firstErr atomic.Pointer[string]
	jobs := make(chan int64, total)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := range jobs {
				s, a, err := produce(ctx, n)
				sent[n] = s
				if err != nil {
					failed.Add(1)
					acked[n] = -1
					e := err.Error()
					firstErr.CompareAndSwap(nil, &e)
					continue
				}
				acked[n] = a
			}
		}()
	}
	interval := time.Duration(float64(time.Second) / rate)
	start := time.Now()
	for n := range total {
		if wait := time.Until(start.Add(time.Duration(n) * interval)); wait > 0 {
			time.Sleep(wait)
		}
		jobs <- n
	}
	close(jobs)
	wg.Wait()
	r.AchievedRate = float64(total) / time.Since(start).Seconds()
	r.Events, r.Failed = total, failed.Load()
	r.Drained = waitDrained(prog, total-r.Failed, 20*time.Second)
	ack := make([]int64, total)
	for i := range total {
		ack[i] = -1
		if acked[i] > 0 {
			ack[i] = (acked[i] - sent[i]) / 1000
		}
	}
	st, err := cp.call(childCmd{Op: "stats", Group: grp, AckDelayUs: ack})
	if err != nil {
		return r, err
	}
	if _, err := cp.call(childCmd{Op: "reset", Group: grp}); err != nil { // free the samples
		return r, err
	}
	r.SentToReceived, r.AcceptedToReceived = st.Lat, st.AckLat
	r.Ended, r.EndCause = st.Ended, st.EndCause
	if want := (total - r.Failed) * int64(subs); want > 0 {
		r.DeliveredFrac = float64(st.Total) / float64(want)
	}
	if p := firstErr.Load(); p != nil {
		r.FirstErr = *p
	}
	if r.SentToReceived == nil {
		return r, errors.New("no event reached a subscriber")
	}
	// A subscriber ended for lagging in the open-loop phase is reported
	// (Ended, EndCause) but not an error: its deliveries until then count,
	// and the others' go on.
	return r, nil
}

// openSubs opens n subscriptions in the client process and waits until the
// server counts them all.
func openSubs(ctx context.Context, cp *clientProc, url string, vars map[string]any, n int, count func() (int, error), want int) (int, error) {
	return openConns(ctx, cp, url, vars, n, 1, count, want)
}

// openConns opens n connections with perConn subscriptions each.
func openConns(ctx context.Context, cp *clientProc, url string, vars map[string]any, n, perConn int, count func() (int, error), want int) (int, error) {
	res, err := cp.call(childCmd{Op: "open", URL: url, N: n, PerConn: perConn, Auth: benchAuth, Query: subscriptionQuery, Vars: vars})
	if err != nil {
		if res.Group != 0 {
			_, _ = cp.call(childCmd{Op: "close", Group: res.Group})
		}
		return 0, err
	}
	if err := waitCount(ctx, count, want, 30*time.Second+time.Duration(n)*5*time.Millisecond); err != nil {
		_, _ = cp.call(childCmd{Op: "close", Group: res.Group})
		return 0, err
	}
	return res.Group, nil
}

func closeSubs(ctx context.Context, cp *clientProc, grp int, count func() (int, error)) error {
	if _, err := cp.call(childCmd{Op: "close", Group: grp}); err != nil {
		return err
	}
	return waitCount(ctx, count, 0, 60*time.Second)
}

func waitCount(ctx context.Context, count func() (int, error), want int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	last := -1
	for {
		n, err := count()
		if err == nil && n == want {
			return nil
		}
		if err == nil {
			last = n
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("server counts %d subscriptions, want %d (last error: %v)", last, want, err)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// ---- memory ----

// IdleSet is one idle measurement: Conns connections with PerConn
// subscriptions each.
type IdleSet struct {
	Conns   int `json:"connections"`
	PerConn int `json:"perConnection"`
}

// Subs is the number of subscriptions of the set.
func (s IdleSet) Subs() int { return s.Conns * s.PerConn }

func (s IdleSet) String() string {
	if s.PerConn == 1 {
		return fmt.Sprint(s.Conns)
	}
	return fmt.Sprintf("%dx%d", s.Conns, s.PerConn)
}

// MemResult is the cost of n idle subscriptions on the server side.
type MemResult struct {
	Set            IdleSet `json:"set"`
	Subs           int     `json:"subscriptions"`
	RSSBeforeKiB   int64   `json:"rssBeforeKiB"`
	RSSAfterKiB    int64   `json:"rssAfterKiB"`
	RSSPerSubKiB   float64 `json:"rssPerSubKiB"`
	HeapPerSubKiB  float64 `json:"heapPerSubKiB"`  // Go heap in use
	StackPerSubKiB float64 `json:"stackPerSubKiB"` // goroutine stacks in use
	GoroutinesPer  float64 `json:"goroutinesPerSub"`
	RSSPerConnKiB  float64 `json:"rssPerConnKiB"`
	GoroutinesConn float64 `json:"goroutinesPerConn"`
	// ExtraGoroutines names what started the goroutines beyond one per
	// connection, by creating function.
	ExtraGoroutines string  `json:"extraGoroutines,omitempty"`
	ClientRSSPerKiB float64 `json:"clientRssPerConnKiB"` // the client process, for reference
	OpenSeconds     float64 `json:"openSeconds"`
	Skipped         string  `json:"skipped,omitempty"`
}

type memSnap struct {
	rss        int64
	heap       uint64
	stack      uint64
	goroutines int
	by         map[string]int
}

// snapshot settles the process first: goroutines that are ending end, no
// websocket writer is writing (the shared keep-alive tick queues a ping on
// every connection at once, and each connection's writer exists until its
// ping is written: counted then, those would be writers of a moment, not of
// an idle subscription), a full GC runs and freed memory goes back to the
// OS, so RSS is what is live.
func snapshot() memSnap {
	prev, stable := -1, 0
	for range 250 {
		n := runtime.NumGoroutine()
		if n == prev && writersInFlight() == 0 {
			stable++
			if stable >= 3 {
				break
			}
		} else {
			stable = 0
		}
		prev = n
		time.Sleep(20 * time.Millisecond)
	}
	runtime.GC()
	debug.FreeOSMemory()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return memSnap{rss: readRSSKiB(), heap: ms.HeapInuse, stack: ms.StackInuse, goroutines: runtime.NumGoroutine(), by: goroutinesByCreator()}
}

// measureIdle opens an idle set and reports this process's growth. count
// is what the server counts: subscriptions, or connections (the raw hub).
func measureIdle(ctx context.Context, cp *clientProc, url string, vars map[string]any, set IdleSet, count func() (int, error), want int, heapProfile string) (MemResult, error) {
	n := set.Subs()
	r := MemResult{Set: set, Subs: n}
	c0, err := cp.call(childCmd{Op: "rss"})
	if err != nil {
		return r, err
	}
	before := snapshot()
	t := time.Now()
	grp, err := openConns(ctx, cp, url, vars, set.Conns, set.PerConn, count, want)
	if err != nil {
		return r, err
	}
	r.OpenSeconds = time.Since(t).Seconds()
	time.Sleep(300 * time.Millisecond)
	after := snapshot()
	if heapProfile != "" {
		if f, err := os.Create(heapProfile); err == nil {
			_ = pprof.Lookup("heap").WriteTo(f, 0)
			f.Close()
		}
	}
	c1, err := cp.call(childCmd{Op: "rss"})
	if err != nil {
		return r, err
	}
	if err := closeSubs(ctx, cp, grp, count); err != nil {
		return r, err
	}
	fn := float64(n)
	r.RSSBeforeKiB, r.RSSAfterKiB = before.rss, after.rss
	r.RSSPerSubKiB = float64(after.rss-before.rss) / fn
	r.HeapPerSubKiB = (float64(after.heap) - float64(before.heap)) / 1024 / fn
	r.StackPerSubKiB = (float64(after.stack) - float64(before.stack)) / 1024 / fn
	r.GoroutinesPer = float64(after.goroutines-before.goroutines) / fn
	cn := float64(set.Conns)
	r.RSSPerConnKiB = float64(after.rss-before.rss) / cn
	r.GoroutinesConn = float64(after.goroutines-before.goroutines) / cn
	r.ExtraGoroutines = creatorDiff(before.by, after.by, 4)
	r.ClientRSSPerKiB = float64(c1.RSSKiB-c0.RSSKiB) / float64(set.Conns)
	return r, nil
}

// cpuTime is this process's user and system CPU time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// readRSSKiB is VmRSS from /proc/self/status.
func readRSSKiB() int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(rest)
			if len(f) > 0 {
				v, _ := strconv.ParseInt(f[0], 10, 64)
				return v
			}
		}
	}
	return 0
}
