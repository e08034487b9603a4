package control_test

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/leadstream/leadstream/internal/control"
	"github.com/leadstream/leadstream/internal/eventlog/eventlogtest"
)

// replica is one process's bus, on a connection of its own to the NATS
// server at url.
func replica(t *testing.T, url, name string) *control.Bus {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	b, err := control.Open(context.Background(), js, control.Options{Replica: name})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// run consumes b's messages into a channel until the test ends.
func run(t *testing.T, b *control.Bus) <-chan control.Message {
	t.Helper()
	ch := make(chan control.Message, 1000)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx, func(m control.Message) { ch <- m }) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	return ch
}

// Every other replica receives each message once, in order, within a
// second, messages sent between Open and Run included; the sender does not
// receive its own.
func TestBroadcast(t *testing.T) {
	url := eventlogtest.StartServer(t)
	a, b, c := replica(t, url, "a"), replica(t, url, "b"), replica(t, url, "c")
	ctx := context.Background()
	// Sent before b and c run: still theirs.
	if err := a.Publish(ctx, control.Message{Kind: control.InstanceUpdated, InstanceID: "early"}); err != nil {
		t.Fatal(err)
	}
	ca, cb, cc := run(t, a), run(t, b), run(t, c)

	kinds := []control.Kind{control.InstanceUpdated, control.InstanceDisabled, control.InstanceDeleted, control.PollNow}
	var want []control.Message
	want = append(want, control.Message{Kind: control.InstanceUpdated, InstanceID: "early", From: "a"})
	for i := range 60 {
		m := control.Message{Kind: kinds[i%len(kinds)], InstanceID: fmt.Sprintf("in-%d", i)}
		sent := time.Now()
		if err := a.Publish(ctx, m); err != nil {
			t.Fatal(err)
		}
		m.From = "a"
		want = append(want, m)
		if i == 0 {
			// Latency of one message to a running replica.
			for _, ch := range []<-chan control.Message{cb, cc} {
				got := recv(t, ch)
				if got != want[0] {
					t.Fatalf("first message %+v, want %+v", got, want[0])
				}
				if got := recv(t, ch); got != m {
					t.Fatalf("got %+v, want %+v", got, m)
				}
			}
			if d := time.Since(sent); d > time.Second {
				t.Fatalf("a message took %v to reach both replicas, more than 1 s", d)
			}
		}
	}
	for name, ch := range map[string]<-chan control.Message{"b": cb, "c": cc} {
		for _, w := range want[2:] {
			if got := recv(t, ch); got != w {
				t.Fatalf("%s got %+v, want %+v", name, got, w)
			}
		}
	}
	// b answers; a receives that one only, never its own.
	if err := b.Publish(ctx, control.Message{Kind: control.PollNow, InstanceID: "x"}); err != nil {
		t.Fatal(err)
	}
	if got := recv(t, ca); got != (control.Message{Kind: control.PollNow, InstanceID: "x", From: "b"}) {
		t.Fatalf("a got %+v", got)
	}
	select {
	case m := <-ca:
		t.Fatalf("a got a second message %+v", m)
	default:
	}
	if got := recv(t, cc); got.From != "b" {
		t.Fatalf("c got %+v", got)
	}
}

func recv(t *testing.T, ch <-chan control.Message) control.Message {
	t.Helper()
	select {
	case m := <-ch:
		return m
	case <-time.After(5 * time.Second):
		t.Fatal("no control message within 5 s")
		return control.Message{}
	}
}

// Poll requests are kept per instance, any id, until done, and seen by
// every replica of the cluster.
func TestRequests(t *testing.T) {
	url := eventlogtest.StartServer(t)
	ctx := context.Background()
	open := func() *control.Requests {
		nc, err := nats.Connect(url)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		js, _ := jetstream.New(nc)
		r, err := control.OpenRequests(ctx, js, control.RequestsOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	a, b := open(), open()
	if ids, err := b.Pending(ctx); len(ids) != 0 || err != nil {
		t.Fatalf("pending before any request: %v %v", ids, err)
	}
	for _, id := range []string{"in-1", "in 2/with:odd.chars", "in-1"} {
		if err := a.Add(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	ids, err := b.Pending(ctx)
	slices.Sort(ids)
	if fmt.Sprint(ids) != "[in 2/with:odd.chars in-1]" || err != nil {
		t.Fatalf("pending: %q %v", ids, err)
	}
	if err := b.Done(ctx, "in-1"); err != nil {
		t.Fatal(err)
	}
	if err := b.Done(ctx, "never asked"); err != nil {
		t.Fatal(err)
	}
	if ids, err := a.Pending(ctx); fmt.Sprint(ids) != "[in 2/with:odd.chars]" || err != nil {
		t.Fatalf("pending after one is done: %q %v", ids, err)
	}
}
