package events_test

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/leadstream/leadstream/internal/events"
)

// BenchmarkIngestSerial is one caller appending events one by one.
func BenchmarkIngestSerial(b *testing.B) {
	in, _ := pipeline(b, events.NewBroker(1<<20))
	ctx := context.Background()
	b.ResetTimer()
	for i := range b.N {
		if _, err := in.Ingest(ctx, draft("i1", "")); err != nil {
			b.Fatal(err, i)
		}
	}
}

// BenchmarkIngestConcurrent is 64 callers at once, as a webhook burst:
// their appends share the connection and are acknowledged in bulk.
func BenchmarkIngestConcurrent(b *testing.B) {
	in, _ := pipeline(b, events.NewBroker(1<<20))
	ctx := context.Background()
	b.ResetTimer()
	var wg sync.WaitGroup
	work := make(chan int)
	for w := range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range work {
				if _, err := in.Ingest(ctx, draft(fmt.Sprint("i", w%4), "")); err != nil {
					b.Error(err)
				}
			}
		}()
	}
	for i := range b.N {
		work <- i
	}
	close(work)
	wg.Wait()
}

// BenchmarkPublish fans one event out to 1,000 subscribers that read.
func BenchmarkPublish(b *testing.B) {
	br := events.NewBroker(256)
	var wg sync.WaitGroup
	for range 1000 {
		s := br.Subscribe(events.Filter{OrgID: "o1", InstanceID: "i1"})
		wg.Add(1)
		go func() {
			defer wg.Done()
			for e := range s.C {
				if e == nil {
					return
				}
			}
		}()
		defer s.Close()
	}
	e := &events.Event{InstanceID: "i1", OrgID: "o1"}
	b.ResetTimer()
	for i := range b.N {
		e.Seq = int64(i)
		br.Publish(e)
	}
}

// BenchmarkIngestPage appends a poller page of 300 activities, the unit
// the poller writes (one atomic batch).
func BenchmarkIngestPage(b *testing.B) {
	in, _ := pipeline(b, events.NewBroker(1<<20))
	ctx := context.Background()
	b.ResetTimer()
	for i := range b.N {
		page := make([]events.Draft, 300)
		for j := range page {
			page[j] = draft("i1", fmt.Sprint("g", i, "-", j))
		}
		if _, err := in.IngestPage(ctx, page, events.Position{}); err != nil {
			b.Fatal(err)
		}
	}
}
