package main

// History and replay on a large log: the gateway's events query and a
// replaying subscription, timed with few and with many events stored. The
// log is seeded directly (atomic pages of 1,000, as the poller appends),
// which takes seconds where a million webhooks would take minutes; the
// reads go through the gateway's GraphQL over real HTTP.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"

	"github.com/leadstream/leadstream/internal/events"
)

// HistoryResult is the history and replay phase.
type HistoryResult struct {
	SmallStored int `json:"smallStored"` // events in the log at the small measurement
	LargeStored int `json:"largeStored"`
	// Median milliseconds of events(instanceId, first: 50), from the
	// start and with after near the end, at each size.
	FirstSmallMs float64 `json:"firstSmallMs"`
	FirstLargeMs float64 `json:"firstLargeMs"`
	AfterSmallMs float64 `json:"afterSmallMs"`
	AfterLargeMs float64 `json:"afterLargeMs"`
	SeedPerSec   float64 `json:"seedPerSec"`
	ReplayEvents int     `json:"replayEvents"`
	ReplayMs     float64 `json:"replayMs"`
}

const historyRuns = 15

func measureHistory(ctx context.Context, g *gateway, large int, logf func(string, ...any)) (HistoryResult, error) {
	var r HistoryResult
	l := g.app.EventLog()
	inst, hook, err := g.createInstance(ctx, "history")
	if err != nil {
		return r, err
	}
	// The organization's id, from the log: the bench knows only secrets.
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, hook, strings.NewReader(`{"seed":true}`))
	req.Header.Set("Content-Type", "application/json")
	resp, err := g.http.Do(req)
	if err != nil {
		return r, err
	}
	var ack struct{ Cursor string }
	_ = json.NewDecoder(resp.Body).Decode(&ack)
	resp.Body.Close()
	seq, err := events.ParseCursor(ack.Cursor)
	if err != nil || seq == 0 {
		return r, fmt.Errorf("history: webhook answered cursor %q", ack.Cursor)
	}
	first, err := l.Event(ctx, uint64(seq))
	if err != nil || first == nil {
		return r, fmt.Errorf("history: reading the seed event back: %v", err)
	}
	org := first.OrgID

	// Half of the pages go to the measured instance, half to another one,
	// so the reads select by subject rather than take the whole log.
	var cursors []int64 // the measured instance's, in order
	var seeded time.Duration
	pages := 0
	seed := func(total int) error {
		start := time.Now()
		// A few pages in flight at once, as several pollers would append.
		const inFlight = 4
		type job struct {
			target string
			page   []*events.Event
		}
		jobs := make(chan job)
		errc := make(chan error, inFlight)
		var mine [][]*events.Event
		var wg sync.WaitGroup
		for range inFlight {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for j := range jobs {
					if err := l.AppendPage(ctx, j.page, events.Position{}); err != nil {
						select {
						case errc <- fmt.Errorf("history: seed: %w", err):
						default:
						}
					}
				}
			}()
		}
		for stored := int(seq) + pages*1000; stored < total; stored += 1000 {
			target := inst
			if pages%2 == 1 {
				target = "history-neighbour"
			}
			now := time.Now().UTC().Truncate(time.Millisecond)
			page := make([]*events.Event, 1000)
			for i := range page {
				page[i] = &events.Event{ID: uuid.NewString(), OrgID: org, InstanceID: target, Source: events.SourcePoller,
					ObjectType: "activities", EventType: "Visit Web Page", OccurredAt: now, ReceivedAt: now,
					Payload: eventBody(int64(stored+i), now.UnixNano())}
			}
			if target == inst {
				mine = append(mine, page)
			}
			jobs <- job{target, page}
			pages++
		}
		close(jobs)
		wg.Wait()
		seeded += time.Since(start)
		select {
		case err := <-errc:
			return err
		default:
		}
		for _, page := range mine {
			for _, e := range page {
				cursors = append(cursors, e.Seq)
			}
		}
		slices.Sort(cursors)
		return nil
	}
	measure := func(stored int) (firstMs, afterMs float64, err error) {
		if len(cursors) < 100 {
			return 0, 0, fmt.Errorf("history: only %d events seeded", len(cursors))
		}
		if err := g.tailCaughtUp(ctx); err != nil {
			return 0, 0, fmt.Errorf("history: waiting for the live tail: %w", err)
		}
		after := events.FormatCursor(cursors[len(cursors)-60])
		if firstMs, err = g.timeEvents(ctx, inst, ""); err != nil {
			return 0, 0, err
		}
		afterMs, err = g.timeEvents(ctx, inst, after)
		logf("  %d events stored: events(first: 50) %.2f ms, with after near the end %.2f ms", stored, firstMs, afterMs)
		return firstMs, afterMs, err
	}
	r.SmallStored = 1000
	if err := seed(r.SmallStored); err != nil {
		return r, err
	}
	if r.FirstSmallMs, r.AfterSmallMs, err = measure(r.SmallStored); err != nil {
		return r, err
	}
	logf("  seeding the log to %d events", large)
	r.LargeStored = large
	if err := seed(large); err != nil {
		return r, err
	}
	r.SeedPerSec = float64(pages*1000) / seeded.Seconds()
	if r.FirstLargeMs, r.AfterLargeMs, err = measure(r.LargeStored); err != nil {
		return r, err
	}

	if err := g.tailCaughtUp(ctx); err != nil {
		return r, fmt.Errorf("history: waiting for the live tail: %w", err)
	}
	r.ReplayEvents = min(10000, len(cursors)-1)
	from := events.FormatCursor(cursors[len(cursors)-1-r.ReplayEvents])
	d, err := g.timeReplay(ctx, inst, from, r.ReplayEvents)
	if err != nil {
		return r, err
	}
	r.ReplayMs = float64(d.Microseconds()) / 1000
	logf("  replay of %d events from a cursor: %.0f ms", r.ReplayEvents, r.ReplayMs)
	return r, nil
}

// timeEvents is the median time of events(instanceId, after, first: 50)
// over historyRuns calls.
func (g *gateway) timeEvents(ctx context.Context, inst, after string) (float64, error) {
	var times []float64
	for i := range 2 * historyRuns {
		var out struct {
			Events struct {
				Edges []struct{ Cursor string } `json:"edges"`
			} `json:"events"`
		}
		vars := map[string]any{"id": inst}
		if after != "" {
			vars["after"] = after
		}
		start := time.Now()
		if err := g.graphql(ctx, `query($id: ID!, $after: String){ events(instanceId: $id, after: $after, first: 50){ edges { cursor node { id eventType payload } } } }`, vars, &out); err != nil {
			return 0, err
		}
		if i >= historyRuns { // the first ones warm up
			times = append(times, float64(time.Since(start).Microseconds())/1000)
		}
		if len(out.Events.Edges) != 50 {
			return 0, fmt.Errorf("history: events answered %d edges, want 50", len(out.Events.Edges))
		}
	}
	slices.Sort(times)
	return times[len(times)/2], nil
}

// timeReplay subscribes over Server-Sent Events with after and times until
// n events arrived.
func (g *gateway) timeReplay(ctx context.Context, inst, after string, n int) (time.Duration, error) {
	body, _ := json.Marshal(map[string]any{
		"query":     `subscription($id: ID, $after: String){ marketoEvents(instanceId: $id, after: $after){ cursor payload } }`,
		"variables": map[string]any{"id": inst, "after": after},
	})
	rctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	req, _ := http.NewRequestWithContext(rctx, http.MethodPost, g.URL+"/graphql", bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "text/event-stream")
	req.Header.Set("Authorization", benchAuth)
	start := time.Now()
	resp, err := g.http.Do(req)
	if err != nil {
		return 0, fmt.Errorf("replay: %w", err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	got := 0
	for got < n && sc.Scan() {
		if line := sc.Text(); strings.HasPrefix(line, "event: next") {
			got++
		} else if strings.Contains(line, `"errors"`) {
			return 0, fmt.Errorf("replay: %s", line)
		}
	}
	if got < n {
		return 0, fmt.Errorf("replay: %d of %d events arrived (%v)", got, n, sc.Err())
	}
	return time.Since(start), nil
}
