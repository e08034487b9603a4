// Package eventlogtest opens a real event log (an embedded NATS server with
// JetStream) in a test's temporary directory.
package eventlogtest

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/leadstream/leadstream/internal/eventlog"
)

// New opens an embedded event log under t.TempDir(), closed when the test ends.
func New(t testing.TB) *eventlog.Log {
	t.Helper()
	return Open(t, eventlog.Options{DataDir: t.TempDir()})
}

// Open opens a log with o, closed when the test ends.
func Open(t testing.TB, o eventlog.Options) *eventlog.Log {
	t.Helper()
	l, err := eventlog.Open(context.Background(), o)
	if err != nil {
		t.Fatalf("eventlog: %v", err)
	}
	t.Cleanup(l.Close)
	return l
}

// StartServer runs a NATS server with JetStream, listening on a free local
// port, as an external cluster of one would; it returns its URL. The
// server stops when the test ends.
func StartServer(t testing.TB) string {
	t.Helper()
	ns, err := server.NewServer(&server.Options{
		Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(), NoSigs: true, NoLog: true,
		MaxPayload: 2 << 20,
	})
	if err != nil {
		t.Fatalf("nats-server: %v", err)
	}
	ns.Start()
	if !ns.ReadyForConnections(30 * time.Second) {
		ns.Shutdown()
		t.Fatal("nats-server did not start")
	}
	t.Cleanup(func() {
		ns.Shutdown()
		ns.WaitForShutdown()
	})
	return ns.ClientURL()
}
